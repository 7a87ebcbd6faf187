"""`hexnode evaluate`: the committed models, end to end, on fresh cases, with bootstrap CIs."""

from __future__ import annotations

import argparse
import csv
import json
import logging
import multiprocessing as mp
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from hexnode.runtime import route_warnings, setup_logging
from hexnode.train import metrics as M

log = logging.getLogger(__name__)

DEFAULT_MODELS = Path(__file__).resolve().parents[2] / "models"
VOLUME_BINS = (("< 3 ml", 0.0, 3.0), ("3-30 ml", 3.0, 30.0), ("> 30 ml", 30.0, float("inf")))


@dataclass
class CaseResult:
    case_id: str
    label: int
    he_probability: float | None  # ground truth (synthetic only)
    probability: float  # fused, calibrated
    radiomics_raw: float
    cnn_logit: float
    volume_true: float
    volume_pred: float
    iou: float
    dice: float
    slice_ious: list[float]
    hard: bool = False
    seconds: float = 0.0
    snapshot: tuple[NDArray[np.int16], NDArray[np.uint8], NDArray[np.uint8]] | None = field(default=None, repr=False)
    marker_logit: float = float("nan")  # the logistic marker score alone (NaN: model set without one)


def _snapshot(hu: NDArray[Any], gt: NDArray[Any], pred: NDArray[Any], half: int = 60) -> tuple[Any, Any, Any]:
    """The slice of largest truth (or predicted) area, cropped around it, for contour figures."""
    ref = gt if gt.any() else pred
    if not ref.any():
        k, cy, cx = hu.shape[0] // 2, hu.shape[1] // 2, hu.shape[2] // 2
    else:
        k = int(np.argmax(ref.reshape(ref.shape[0], -1).sum(1)))
        yy, xx = np.nonzero(ref[k])
        cy, cx = int(yy.mean()), int(xx.mean())
    y0, x0 = max(cy - half, 0), max(cx - half, 0)
    sl = (k, slice(y0, y0 + 2 * half), slice(x0, x0 + 2 * half))
    return hu[sl].astype(np.int16), gt[sl].astype(np.uint8), pred[sl].astype(np.uint8)


# Per-worker-process models, loaded once by the pool initializer (never used in the parent).
_W: dict[str, Any] = {}


def _init(models_dir: str, threads: int) -> None:
    from hexnode.models.analyser import Models

    route_warnings()
    _W["models"] = Models.load(models_dir, threads=threads)


def evaluate_case(models: Any, case_id: str, hu: NDArray[Any], gt: NDArray[Any], spacing: tuple[float, float, float],
                  label: int, he_probability: float | None, hard: bool = False) -> CaseResult:
    from hexnode.models.segment import volume_ml

    t = time.perf_counter()
    huf = np.asarray(hu, np.float32)
    pred = models.segment(huf, spacing)
    timings: dict[str, float] = {}
    if pred.any():
        s = models.scores(models.features(huf, pred, spacing, timings))
        prob, rad, cnn, mark = s.probability, s.radiomics_raw, s.cnn_logit, s.marker_logit
    else:  # "no hemorrhage detected": the lowest score for every model
        prob, rad, cnn, mark = 0.0, -1e9, -1e9, -1e9
    return CaseResult(
        case_id=case_id, label=int(label), he_probability=he_probability, probability=prob, radiomics_raw=rad,
        cnn_logit=cnn, volume_true=volume_ml(gt, spacing), volume_pred=volume_ml(pred, spacing),
        iou=M.iou(gt, pred), dice=M.dice(gt, pred), slice_ious=M.slice_ious(gt, pred), hard=hard,
        seconds=time.perf_counter() - t, snapshot=_snapshot(np.asarray(hu), np.asarray(gt), pred), marker_logit=mark,
    )


def _synth_job(job: tuple[int, int, bool]) -> CaseResult:
    from hexnode.train.data import synth_case

    seed, i, hard = job
    c = synth_case(seed, i, hard=hard)
    return evaluate_case(_W["models"], c.case_id, c.hu, c.mask, c.spacing, c.label, c.he_probability, hard)


def _site_job(job: tuple[str, str, int]) -> CaseResult:
    from hexnode.train.data import site_case

    root, cid, lab = job
    c = site_case(Path(root), cid, lab)
    return evaluate_case(_W["models"], cid, c.hu, c.mask, c.spacing, c.label, c.he_probability)


def summarise(results: list[CaseResult], *, threshold: float, reps: int = 1000) -> dict[str, Any]:
    """All figures with 95 % bootstrap CIs (cases resampled; slice IoU resampled by case)."""
    n = len(results)
    y = np.array([r.label for r in results])
    p = np.array([r.probability for r in results])
    rad = np.array([r.radiomics_raw for r in results])
    cnn = np.array([r.cnn_logit for r in results])
    vol = np.array([r.volume_pred for r in results])
    ious = np.array([r.iou for r in results])
    dices = np.array([r.dice for r in results])
    vt = np.array([r.volume_true for r in results])
    err = vol - vt

    def slice_stat(idx: NDArray[np.int64]) -> float:
        vals = [v for i in idx for v in results[i].slice_ious]
        return float(np.mean(vals)) if vals else float("nan")

    def est(fn: Any) -> M.Estimate:
        return M.bootstrap(fn, n, reps=reps)

    out: dict[str, Any] = {"n": n, "prevalence": float(y.mean()) if n else float("nan"), "threshold": threshold}
    out["iou_slice"] = est(slice_stat)
    out["iou_patient"] = est(lambda i: float(ious[i].mean()))
    out["dice"] = est(lambda i: float(dices[i].mean()))
    out["volume_error_ml"] = est(lambda i: float(np.abs(err[i]).mean()))
    rel = np.abs(err) / np.maximum(vt, 1e-6)
    out["volume_error_pct"] = est(lambda i: float(100 * rel[i][vt[i] > 0].mean()) if (vt[i] > 0).any() else float("nan"))
    bins = {}
    for name, lo, hi in VOLUME_BINS:
        sel = np.nonzero((vt >= lo) & (vt < hi))[0]
        if sel.size:
            bins[name] = {"n": int(sel.size), "iou_patient": M.mean_ci(ious[sel].tolist(), reps=reps),
                          "iou_slice": M.mean_ci([v for i in sel for v in results[i].slice_ious], reps=reps)}
    out["by_volume"] = bins
    out["auc"] = est(lambda i: M.auc(y[i], p[i]))
    out["auc_radiomics"] = est(lambda i: M.auc(y[i], rad[i]))
    out["auc_cnn"] = est(lambda i: M.auc(y[i], cnn[i]))
    out["auc_volume"] = est(lambda i: M.auc(y[i], vol[i]))
    mark = np.array([r.marker_logit for r in results])
    if n and np.isfinite(mark).all():
        out["auc_markers"] = est(lambda i: M.auc(y[i], mark[i]))
    if n and all(r.he_probability is not None for r in results):
        tp = np.array([r.he_probability for r in results], float)
        out["bayes_auc"] = est(lambda i: M.auc(y[i], tp[i]))
        # the true probability is calibrated by construction, so its ECE on the same cases is the
        # part of the fused model's ECE that finite bins and Bernoulli labels alone produce
        out["bayes_ece"] = est(lambda i: M.ece(y[i], tp[i]))
    out["ece"] = est(lambda i: M.ece(y[i], p[i]))
    for key in ("sensitivity", "specificity", "ppv", "npv"):
        out[key] = est(lambda i, k=key: getattr(M.binary_stats(y[i], p[i], threshold), k))
    return out


def _fmt(v: Any) -> str:
    return v.fmt() if isinstance(v, M.Estimate) else (f"{v:.3f}" if isinstance(v, float) else str(v))


def report_lines(s: dict[str, Any], title: str) -> list[str]:
    lines = [title, f"cases {s['n']}, HE prevalence {s['prevalence']:.3f}, threshold {s['threshold']:.3f}", ""]
    lines.append("segmentation (value [95% CI])")
    for k in ("iou_slice", "iou_patient", "dice", "volume_error_ml", "volume_error_pct"):
        lines.append(f"  {k:18s} {_fmt(s[k])}")
    for name, b in s["by_volume"].items():
        lines.append(f"  {name:8s} n={b['n']:4d}  IoU patient {b['iou_patient'].fmt()}  slice {b['iou_slice'].fmt()}")
    lines += ["", "hematoma expansion"]
    for k in ("auc", "bayes_auc", "auc_radiomics", "auc_cnn", "auc_volume", "auc_markers", "ece", "bayes_ece", "sensitivity",
              "specificity", "ppv", "npv"):
        if k in s:
            lines.append(f"  {k:18s} {_fmt(s[k])}")
    if "bayes_auc" in s and s["bayes_auc"].value > 0:
        lines.append(f"  auc / bayes_auc    {s['auc'].value / s['bayes_auc'].value:.3f}")
    return lines


def json_line(s: dict[str, Any]) -> str:
    keys = ("iou_slice", "iou_patient", "dice", "auc", "bayes_auc", "ece", "auc_radiomics", "auc_cnn", "auc_volume",
            "sensitivity", "specificity", "bayes_ece", "auc_markers")
    obj: dict[str, Any] = {}
    for k in keys:
        v = s.get(k)
        obj[k] = None if v is None else round(float(v.value if isinstance(v, M.Estimate) else v), 4)
    obj["ci95"] = {k: [round(s[k].lo, 4), round(s[k].hi, 4)] for k in keys if isinstance(s.get(k), M.Estimate)}
    obj["n"] = s["n"]
    return json.dumps(obj)


CASE_COLUMNS = ("case_id", "label", "he_probability", "probability", "radiomics_raw", "cnn_logit", "marker_logit",
                "volume_true", "volume_pred", "iou", "dice", "slice_ious", "hard", "seconds")


def write_cases(results: list[CaseResult], path: Path) -> None:
    """One CSV row per case, so a site can see which cases failed and figures can be recomputed
    on any subset (`read_cases` + `summarise`) without running the models again."""
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(CASE_COLUMNS)
        for r in results:
            w.writerow([r.case_id, r.label, "" if r.he_probability is None else repr(r.he_probability),
                        repr(r.probability), repr(r.radiomics_raw), repr(r.cnn_logit), repr(r.marker_logit),
                        repr(r.volume_true), repr(r.volume_pred), repr(r.iou), repr(r.dice),
                        " ".join(repr(v) for v in r.slice_ious), int(r.hard), f"{r.seconds:.3f}"])


def read_cases(path: Path) -> list[CaseResult]:
    out = []
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            # by keyword: a column added to CaseResult must not shift every later one silently
            out.append(CaseResult(
                case_id=row["case_id"], label=int(row["label"]),
                he_probability=float(row["he_probability"]) if row["he_probability"] else None,
                probability=float(row["probability"]), radiomics_raw=float(row["radiomics_raw"]),
                cnn_logit=float(row["cnn_logit"]), volume_true=float(row["volume_true"]),
                volume_pred=float(row["volume_pred"]), iou=float(row["iou"]), dice=float(row["dice"]),
                slice_ious=[float(v) for v in row["slice_ious"].split()], hard=bool(int(row["hard"])),
                seconds=float(row["seconds"]), marker_logit=float(row["marker_logit"])))
    return out


def write_plots(results: list[CaseResult], s: dict[str, Any], outdir: Path, tag: str = "") -> None:
    from hexnode.train import plots

    outdir.mkdir(parents=True, exist_ok=True)
    y = np.array([r.label for r in results])
    curves: list[tuple[str, Any]] = [
        ("fused", np.array([r.probability for r in results])),
        ("radiomics only", np.array([r.radiomics_raw for r in results])),
        ("CNN only", np.array([r.cnn_logit for r in results])),
        ("volume only", np.array([r.volume_pred for r in results])),
    ]
    if "auc_markers" in s:
        curves.append(("marker score only", np.array([r.marker_logit for r in results])))
    if "bayes_auc" in s:
        curves.append(("Bayes (true p)", np.array([r.he_probability for r in results], float)))
    plots.roc_png(outdir / f"roc{tag}.png", y, curves, f"HE ROC, n={len(results)}")
    plots.reliability_png(outdir / f"reliability{tag}.png", y, curves[0][1], f"Reliability, n={len(results)}")
    worst = sorted(results, key=lambda r: r.iou)[:6]
    panels = [(f"{r.case_id} IoU {r.iou:.2f} {r.volume_true:.1f} ml", *r.snapshot) for r in worst if r.snapshot]
    plots.contour_png(outdir / f"worst_cases{tag}.png", panels)


def run_evaluate(args: argparse.Namespace) -> int:
    setup_logging(logging.WARNING)
    from hexnode.models.registry import load_manifest

    models_dir = Path(args.models) if args.models else DEFAULT_MODELS
    manifest = load_manifest(models_dir)
    workers = max(1, int(getattr(args, "workers", 2) or 1))
    threads = 1 if workers > 1 else 0
    t0 = time.monotonic()
    ctx = mp.get_context("spawn")  # never fork: a caller with ONNX Runtime or torch threads can deadlock its children
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if args.data:
        from hexnode.train.data import read_labels

        site_jobs = [(str(args.data), cid, lab) for cid, lab in sorted(read_labels(Path(args.data)).items())]
        with ctx.Pool(workers, initializer=_init, initargs=(str(models_dir), threads)) as pool:
            results = list(pool.imap(_site_job, site_jobs))
        title = f"hexnode evaluate --data {args.data} (models {manifest.version})"
    else:
        n = args.synth or 20
        synth_jobs = [(int(args.seed), i, bool(args.hard)) for i in range(n)]
        with ctx.Pool(workers, initializer=_init, initargs=(str(models_dir), threads)) as pool:
            results = list(pool.imap(_synth_job, synth_jobs))
        title = f"hexnode evaluate --synth {n} --seed {args.seed}{' --hard' if args.hard else ''} (models {manifest.version})"
    s = summarise(results, threshold=manifest.threshold)
    for line in report_lines(s, title):
        print(line)
    print(f"\n{len(results)} cases in {time.monotonic() - t0:.0f} s "
          f"(pipeline {np.mean([r.seconds for r in results]):.2f} s/case per worker, {workers} workers)")
    if args.plots:
        write_plots(results, s, Path(args.plots), "_hard" if args.hard else "")
        print(f"plots written to {args.plots}")
    if getattr(args, "cases", None):
        write_cases(results, Path(args.cases))
        print(f"per-case results written to {args.cases}")
    if args.json:
        print(json_line(s))
    return 0
