"""`hexnode train`: cases → split by patient → U-Net → CNN → features → LightGBM → calibration → manifest.

Splits (by a hash of the case id, so a patient never crosses splits):
- `segcnn`: trains the segmentation U-Net and the HE CNN (ground-truth masks);
- `fusion`: trains LightGBM on radiomics + CNN embedding + context features, measured on the
  U-Net's predicted masks exactly as at inference (the first models were fitted on ground-truth
  masks like the seeds' traced ROIs, and lost most of their AUC to that train/test shift); neither
  network saw these cases;
- `val`: the full pipeline (predicted masks): early stopping, Platt calibration, thresholds;
- `test`: the full pipeline, touched once for the manifest's figures.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import multiprocessing as mp
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hexnode.models import features as F
from hexnode.models.brain import intracranial
from hexnode.models.segment import MIN_LESION_ML, PostProcessing, postprocess, predict_probability
from hexnode.runtime import setup_logging
from hexnode.train import metrics as M
from hexnode.train.data import NORMAL_INDEX_OFFSET, TrainCase, read_labels, site_case, synth_case

log = logging.getLogger("hexnode.train")

SPLITS = {"segcnn": 0.35, "fusion": 0.38, "val": 0.16, "test": 0.11}
POST = PostProcessing(min_lesion_ml=MIN_LESION_ML)
# U-Net emphasis on hypodense blood (the blend-sign cap the models missed: recall 0.23 with 3x / 30 %).
# Pilot, 150 training cases, 6 min each, 80 fresh cases: 3x / 30 % -> 8x / 45 % raised the recall of
# blend caps 0.27 -> 0.33 and of swirl foci 0.63 -> 0.70, dense blood 0.97 both, IoU 0.808 / 0.806.
HYPO_WEIGHT = 8.0
HYPO_SHARE = 0.45
# --quick trains by steps, not seconds, so its models (and the tests on them) do not depend on how
# loaded the machine is: with 40 s the step count varied with the load, and some runs left too few
# cases with a predicted mask to fit the fusion ("no usable feature", issue 17).
QUICK_SEG_STEPS = 160
QUICK_CNN_STEPS = 60
#: U-Net peak learning rate from scratch, and for a run that continues a campaign (a restart at the
#: full rate would first undo much of what the earlier runs learnt)
SEG_LR = 3e-3
SEG_LR_CONTINUED = 1e-3
#: how often the U-Net and CNN loops write their checkpoint (seconds of training)
CHECKPOINT_SECONDS = 300.0
#: the arguments a resumed run takes from the first one (`--resume WORKDIR` reads WORKDIR/args.json)
RESUMED_ARGS = ("data", "synth", "normal", "seed", "out", "quick", "seg_seconds", "cnn_seconds", "workers", "init_from")


@dataclass
class Plan:
    quick: bool
    seg_seconds: float
    cnn_seconds: float
    width: int
    seg_hypo_weight: float  # BCE weight of hypodense blood (< 47 HU) in the U-Net's loss
    seg_hypo_share: float  # share of training crops centred on hypodense blood
    k_features: int
    workers: int
    seg_steps: int = 0  # > 0: a step budget instead of seconds (--quick: the same model on any machine)
    cnn_steps: int = 0


@dataclass
class Record:
    case_id: str
    split: str
    label: int
    he_probability: float | None
    volume_ml: float
    crop: np.ndarray | None = None  # CNN input from the mask used for features
    feats: dict[str, float] = field(default_factory=dict)
    slices: tuple[list[np.ndarray], list[np.ndarray]] | None = None
    seg: dict[str, Any] = field(default_factory=dict)


# ---- worker-side functions (module level so multiprocessing can pickle them) -----------------
# Per-worker-process resources (extractor, ONNX sessions), set once by the pool initializer so
# that each task does not rebuild them; never used in the parent process.
_G: dict[str, Any] = {}


def _init_worker(params_yaml: str, cache: str, seg_path: str | None, cnn_path: str | None) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    _G["extractor"] = F.RadiomicsExtractor(Path(params_yaml))
    _G["cache"] = Path(cache)
    if seg_path:
        from hexnode.models.registry import make_session

        _G["seg"] = make_session(Path(seg_path), ["CPUExecutionProvider"], threads=1)
        _G["cnn"] = make_session(Path(cnn_path), ["CPUExecutionProvider"], threads=1) if cnn_path else None


def _stage1(job: tuple[str, str, Callable[[], TrainCase]]) -> Record:
    """A `segcnn` case: its slices for the U-Net and its crop for the CNN (ground-truth mask)."""
    split, case_id, loader = job
    c = loader()
    rec = Record(case_id, split, c.label, c.he_probability, float(c.mask.sum()) * float(np.prod(c.spacing)) / 1000.0)
    # a stable seed (str hash() changes with every interpreter): a resumed run draws the same slices
    rng = np.random.default_rng(int(hashlib.sha256(case_id.encode()).hexdigest()[:8], 16))
    from hexnode.train.seg_train import SliceBank

    bank = SliceBank()
    bank.add_case(c.hu, c.mask, rng)
    rec.slices = (bank.hu, bank.mask)
    if c.mask.any():
        rec.crop = F.cnn_input(c.hu, c.mask, c.spacing)
    return rec


def _stage2(job: tuple[str, str, Callable[[], TrainCase]]) -> Record:
    """A fusion/val/test case through the full pipeline (predicted mask, then features from it),
    cached per case: a resumed run (`--resume`) does not compute a case twice."""
    import pickle

    split, case_id, loader = job
    cached = _G["cache"] / f"{case_id}.pkl"
    if cached.exists():
        with open(cached, "rb") as fh:
            rec: Record = pickle.load(fh)
        return rec
    c = loader()
    hu, gt, spacing = c.hu.astype(np.float32), c.mask, c.spacing
    rec = Record(case_id, split, c.label, c.he_probability, float(gt.sum()) * float(np.prod(spacing)) / 1000.0)
    if split == "fusion" and not gt.any():
        rec.split = "skip"  # nothing to learn HE from
    else:
        pred = postprocess(predict_probability(_G["seg"], hu), spacing, POST, intracranial(hu, spacing))
        rec.seg = {
            "iou": M.iou(gt, pred), "dice": M.dice(gt, pred), "slice_ious": M.slice_ious(gt, pred),
            "vol_true": rec.volume_ml, "vol_pred": float(pred.sum()) * float(np.prod(spacing)) / 1000.0,
        }
        if pred.any():
            rec.feats = dict(_G["extractor"].extract(hu, pred, spacing))
            rec.feats.update(F.context_features(hu, pred, spacing))
            x = F.cnn_input(hu, pred, spacing)
            emb, logit = _G["cnn"].run(["embedding", "logit"], {"crop": x})
            rec.feats.update({f"cnn_{i:02d}": float(v) for i, v in enumerate(np.asarray(emb)[0])})
            rec.feats["cnn_logit"] = float(np.asarray(logit).ravel()[0])
        else:
            rec.feats = {"volume_ml": 0.0}
    tmp = cached.with_suffix(".tmp")
    with open(tmp, "wb") as fh:
        pickle.dump(rec, fh)
    os.replace(tmp, cached)
    return rec


# ---- orchestration -----------------------------------------------------------------------------
def _jobs(args: argparse.Namespace, n_quick: int) -> tuple[list[tuple[str, str, Callable[[], TrainCase]]], dict[str, Any]]:
    from functools import partial

    ids: list[tuple[str, Callable[[], TrainCase]]] = []
    if args.data:
        root = Path(args.data)
        for cid, lab in sorted(read_labels(root).items()):
            ids.append((cid, partial(site_case, root, cid, lab)))
        desc = {"synthetic": False, "source": f"site data folder ({len(ids)} cases)"}
    else:
        n = args.synth or n_quick
        for i in range(n):
            hard = i % 10 == 9  # a tenth are the generator's hard cases (< 3 ml, motion, streaks)
            ids.append((f"synth-{args.seed}-{i}{'-hard' if hard else ''}", partial(synth_case, args.seed, i, hard=hard)))
        n_normal = int(getattr(args, "normal", 0) or 0)
        desc = {
            "synthetic": True,
            "source": f"hexnode synthetic generator (hexnode.synth.phantom), seed {args.seed}, {n} cases, every 10th --hard"
                      + (f", plus {n_normal} heads without blood for the U-Net" if n_normal else ""),
        }
    # rank by a hash of the id, then cut by the split fractions: deterministic per patient, and
    # even a handful of cases (--quick) fills every split
    order = sorted(ids, key=lambda t: hashlib.sha256(t[0].encode()).hexdigest())
    jobs = []
    cum = np.cumsum(list(SPLITS.values())) * len(order)
    for r, (cid, loader) in enumerate(order):
        split = list(SPLITS)[int(np.searchsorted(cum, r, side="right"))]
        jobs.append((split, cid, loader))
    if not args.data:
        # normal heads teach the U-Net only (no blood: nothing for HE); they never enter a held-out split
        for i in range(n_normal):
            jobs.append(("segcnn", f"synth-{args.seed}-{NORMAL_INDEX_OFFSET + i}-normal", partial(synth_case, args.seed, i, normal=True)))
    jobs.sort(key=lambda j: list(SPLITS).index(j[0]))  # segcnn first
    return jobs, desc


def _pool(workers: int, init_args: tuple[Any, ...]) -> Any:
    ctx = mp.get_context("fork")
    return ctx.Pool(workers, initializer=_init_worker, initargs=init_args, maxtasksperchild=50)


def _matrix(recs: list[Record], names: list[str]) -> np.ndarray:
    return np.array([[r.feats.get(n, np.nan) for n in names] for r in recs], np.float64)


def run_train(args: argparse.Namespace) -> int:
    setup_logging(logging.INFO)
    import torch

    from hexnode.train import checkpoint as ckpt
    from hexnode.train import cnn_train, seg_train

    if getattr(args, "refit", None):
        import pickle

        with open(Path(args.refit) / "features.pkl", "rb") as fh:
            finish(Path(args.out), pickle.load(fh))
        return 0
    if getattr(args, "resume", None):
        # the same run, continued: its own arguments, its own work dir
        saved = json.loads((Path(args.resume) / "args.json").read_text())
        for key in RESUMED_ARGS:
            setattr(args, key, saved.get(key))
        args.workdir = args.resume
        log.info("resuming the run in %s", args.resume)
    quick = bool(args.quick)
    plan = Plan(
        quick=quick,
        seg_seconds=float(getattr(args, "seg_seconds", 0) or (40 if quick else 900)),
        cnn_seconds=float(getattr(args, "cnn_seconds", 0) or (8 if quick else 150)),
        seg_steps=QUICK_SEG_STEPS if quick and not getattr(args, "seg_seconds", 0) else 0,
        cnn_steps=QUICK_CNN_STEPS if quick and not getattr(args, "cnn_seconds", 0) else 0,
        width=8,  # 12 segments marginally better but costs 2.6x at inference on CPU (bench/models.py)
        seg_hypo_weight=HYPO_WEIGHT,
        seg_hypo_share=HYPO_SHARE,
        k_features=30 if quick else 60,
        workers=int(getattr(args, "workers", 0) or 2),
    )
    torch.set_num_threads(2)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="hexnode-train-"))
    work.mkdir(parents=True, exist_ok=True)
    (work / "args.json").write_text(json.dumps({k: getattr(args, k, None) for k in RESUMED_ARGS}, indent=1) + "\n")
    t_start = time.monotonic()
    params = out / "radiomics.yaml"
    params.write_text(F.RADIOMICS_YAML_QUICK if quick else F.RADIOMICS_YAML)

    jobs, desc = _jobs(args, n_quick=20)
    log.info("%d cases: %s", len(jobs), {s: sum(j[0] == s for j in jobs) for s in SPLITS})
    with _pool(plan.workers, (str(params), str(work), None, None)) as pool:
        recs = list(pool.imap(_stage1, [j for j in jobs if j[0] == "segcnn"], chunksize=1))
    t_data = time.monotonic() - t_start
    log.info("stage 1 (U-Net and CNN data) %.0f s", t_data)
    init = Path(args.init_from) if getattr(args, "init_from", None) else None
    every = ckpt.Every(seconds=CHECKPOINT_SECONDS)

    # --- segmentation -----------------------------------------------------------------------
    bank = seg_train.SliceBank()
    for r in recs:
        if r.slices:
            bank.hu.extend(r.slices[0])
            bank.mask.extend(r.slices[1])
            r.slices = None
    log.info("segmentation: %d slices", len(bank))
    seg_init, frozen_bn = _seg_init(init, plan.width)
    seg, seg_steps = seg_train.train_seg(
        bank, seconds=plan.seg_seconds, steps=plan.seg_steps, width=plan.width, seed=args.seed,
        hypo_weight=plan.seg_hypo_weight, hypo_share=plan.seg_hypo_share, checkpoint=work / "seg.ckpt", every=every,
        init=seg_init, frozen_bn=frozen_bn, lr=SEG_LR if seg_init is None else SEG_LR_CONTINUED)
    sample = np.stack([bank.hu[i] for i in range(min(4, len(bank)))])
    seg_diff = seg_train.export_seg(seg, out / "seg.onnx", sample)
    print(f"seg.onnx max |onnxruntime - torch| = {seg_diff:.3g}", flush=True)
    del bank

    # --- CNN ------------------------------------------------------------------------------------
    cnn_recs = [r for r in recs if r.crop is not None]
    xc = np.concatenate([r.crop for r in cnn_recs])
    yc = np.array([r.label for r in cnn_recs])
    cnn, cnn_steps = cnn_train.train_cnn(
        xc, yc, seconds=plan.cnn_seconds, steps=plan.cnn_steps, seed=args.seed, checkpoint=work / "cnn.ckpt",
        every=every, init=torch.load(init / "cnn.pt", weights_only=True) if init and (init / "cnn.pt").exists() else None)
    cnn_diff = cnn_train.export_cnn(cnn, out / "cnn.onnx", xc[:8])
    print(f"cnn.onnx max |onnxruntime - torch| = {cnn_diff:.3g}", flush=True)
    # --- full pipeline (predicted masks) on fusion, val and test -----------------------------------
    from hexnode.models.registry import sha256_file

    # the cache is valid for these two networks only
    cache = work / f"stage2-{sha256_file(out / 'seg.onnx')[:12]}-{sha256_file(out / 'cnn.onnx')[:12]}"
    cache.mkdir(exist_ok=True)
    t = time.monotonic()
    with _pool(plan.workers, (str(params), str(cache), str(out / "seg.onnx"), str(out / "cnn.onnx"))) as pool:
        held_all = list(pool.imap(_stage2, [j for j in jobs if j[0] != "segcnn"], chunksize=1))
    held = [r for r in held_all if r.split != "skip"]
    log.info("fusion/val/test full pipeline on %d cases: %.0f s", len(held), time.monotonic() - t)
    fus = [r for r in held if r.split == "fusion"]
    val = [r for r in held if r.split == "val"]
    test = [r for r in held if r.split == "test"]

    state = {"fus": fus, "val": val, "test": test, "desc": desc, "plan": plan, "seed": args.seed,
             "seg_diff": seg_diff, "cnn_diff": cnn_diff, "t_start_offset": time.monotonic() - t_start,
             "splits": {s: sum(r.split == s for r in recs + held_all) for s in SPLITS},
             "campaign": campaign_entry(args, init, seg_steps, cnn_steps, seg.state_dict(), cnn.state_dict(), work,
                                        frozen_bn=frozen_bn)}
    for r in fus + val + test:
        r.crop = None
    import pickle

    # kept so that the fusion stage can be refitted (`--refit WORKDIR`) without new images
    with open(work / "features.pkl", "wb") as fh:
        pickle.dump(state, fh)
    finish(out, state)
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def finish(out: Path, state: dict[str, Any]) -> None:
    """Fusion, calibration, thresholds, test figures and the manifest, from extracted features."""
    from hexnode.models.registry import sha256_file
    from hexnode.train import fusion_train

    t_fit = time.monotonic()
    fus, val, test, plan = state["fus"], state["val"], state["test"], state["plan"]
    desc, seg_diff, cnn_diff = state["desc"], state["seg_diff"], state["cnn_diff"]
    quick = plan.quick
    # --- marker score (its out-of-fold logit on the fusion split is one of the booster's inputs) --
    y_tr = np.array([r.label for r in fus])
    y_va = np.array([r.label for r in val])
    marker_names = [n for n in fusion_train.MARKER_FEATURES if any(n in r.feats for r in fus)]
    markers, oof = fusion_train.fit_marker_score(_matrix(fus, marker_names), y_tr, marker_names, seed=state["seed"])
    (out / "markers.json").write_text(markers.to_json())
    for r, v in zip(fus, oof, strict=True):
        r.feats["marker_logit"] = float(v)
    for r in val + test:
        if r.feats.get("volume_ml", 0.0) > 0:  # as at inference: no mask, no features
            r.feats["marker_logit"] = markers.logit(r.feats)
    # --- fusion -------------------------------------------------------------------------------
    names = sorted({k for r in fus for k in r.feats})
    radiomics_names = [n for n in names if n.startswith(("original_", "log-", "wavelet-"))]
    if not radiomics_names:  # e.g. every fusion mask failed extraction: keep the booster buildable
        radiomics_names = [n for n in names if n.startswith("inside_")]
    cnn_names = [n for n in names if n.startswith("cnn_") and n != "cnn_logit"]
    context_names = [n for n in names if n not in radiomics_names and not n.startswith("cnn_")]
    x_all = _matrix(fus, radiomics_names)
    sel_rad = fusion_train.select_features(x_all, y_tr, radiomics_names, plan.k_features, always=[])
    fused_names = context_names + cnn_names + sel_rad
    fb = fusion_train.fit_booster(_matrix(fus, fused_names), y_tr, _matrix(val, fused_names), y_va, fused_names, out / "lgbm.txt", seed=state["seed"])
    rb = fusion_train.fit_booster(_matrix(fus, sel_rad), y_tr, _matrix(val, sel_rad), y_va, sel_rad, out / "lgbm_radiomics.txt", seed=state["seed"])

    from hexnode.models.predict import Booster, Calibration

    fused = Booster(out / "lgbm.txt")
    raw_va = fused.raw([r.feats for r in val])
    # Platt on the validation split plus out-of-fold scores of the fusion split: 128 validation
    # cases alone left the calibration noisy (ECE 0.061 on 400 held-out cases, 0.041 expected of a
    # calibrated model); on 12 resplits of 600 cached cases, test ECE 0.085 -> 0.073 (floor 0.060)
    raw_oof = fusion_train.out_of_fold_raw(_matrix(fus, fused_names), y_tr, fused_names, fb.best_iteration,
                                           seed=state["seed"])
    if raw_oof is None:
        a, b = fusion_train.fit_platt(raw_va, y_va)
        cal_on = f"val split ({len(val)} cases, predicted masks)"
    else:
        a, b = fusion_train.fit_platt(np.concatenate([raw_oof, raw_va]), np.concatenate([y_tr, y_va]))
        cal_on = (f"val split ({len(val)} cases) + out-of-fold scores of the fusion split ({len(fus)} cases, "
                  "5 folds), predicted masks")
    cal = Calibration(a, b)
    p_va = cal.apply(raw_va)
    one_class = len(set(y_va.tolist())) < 2
    thr_youden = 0.5 if one_class else M.youden_threshold(y_va, p_va)
    thr_sens = 0.5 if one_class else M.sensitivity_threshold(y_va, p_va, 0.90)

    # --- test: touched once, for the manifest -----------------------------------------------------
    rad_only = Booster(out / "lgbm_radiomics.txt")
    test_metrics = summarise(test, fused, rad_only, cal, thr_youden)
    val_metrics = {"auc": M.auc(y_va, p_va), "n": len(val), "ece": M.ece(y_va, p_va)}
    train_seconds = state["t_start_offset"] + time.monotonic() - t_fit

    files = {
        "seg.onnx": {"role": "seg", "inputs": {"image": ["batch", 3, 512, 512]}, "outputs": {"logits": ["batch", 1, 512, 512]},
                     "opset": 17, "max_abs_diff_vs_torch": seg_diff},
        "cnn.onnx": {"role": "cnn", "inputs": {"crop": ["batch", 4, F.CNN_SIZE, F.CNN_SIZE]},
                     "outputs": {"embedding": ["batch", len(cnn_names)], "logit": ["batch", 1]}, "opset": 17,
                     "max_abs_diff_vs_torch": cnn_diff},
        "radiomics.yaml": {"role": "radiomics", "features_total": len(radiomics_names)},
        "markers.json": {"role": "markers", "features": len(marker_names),
                         "purpose": "logistic marker score; its logit is the booster's feature marker_logit"},
        "lgbm.txt": {"role": "lgbm", "features": len(fused_names), "best_iteration": fb.best_iteration},
        "lgbm_radiomics.txt": {"role": "lgbm_radiomics", "features": len(sel_rad), "best_iteration": rb.best_iteration,
                               "purpose": "ablation (radiomics-only AUC in hexnode evaluate)"},
    }
    for name, entry in files.items():
        entry["sha256"] = sha256_file(out / name)
        entry["bytes"] = (out / name).stat().st_size
    from hexnode.models.segment import WINDOWS

    manifest = {
        "name": "hexnode-he",
        # the result objects' UIDs derive from this string, so two trainings must never share it
        # (two runs on the same day and seed did): the files' hashes make it unique
        "version": f"{'quick-' if quick else ''}synth-{time.strftime('%Y%m%d')}-s{state['seed']}-{_files_tag(files)}",
        "quick": quick,
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "files": files,
        "preprocessing": {
            "seg_input": "axial slices padded (air, -1000 HU) to >= 512x512 and a multiple of 8; channels = HU windows scaled to [0, 1]",
            "windows_hu": [list(w) for w in WINDOWS],
            "postprocessing": {"threshold": POST.threshold, "min_component_ml": POST.min_component_ml,
                               "fill_holes": POST.fill_holes, "connectivity": 26,
                               "remote_min_ml": POST.remote_min_ml, "remote_reach_mm": POST.remote_reach_mm,
                               "min_lesion_ml": POST.min_lesion_ml},
            "radiomics": "pyradiomics 3.0.1 on the CT cropped to the mask bbox + 12 mm; see radiomics.yaml",
            "cnn_input": "slice of largest mask area and its neighbours (0-100 HU) + mask, square 1.6x extent + 10 mm, 64x64",
            "features": {"context": context_names, "cnn": cnn_names, "radiomics_selected": sel_rad,
                         "marker_score": marker_names},
        },
        "calibration": {"method": "platt", "a": a, "b": b, "fitted_on": cal_on
                        + (" -- one class only: identity (a=1, b=0)" if one_class else "")},
        "threshold": {"value": thr_youden, "method": "Youden on validation", "sensitivity_0_90": thr_sens},
        "training_data": dict(desc, splits=state["splits"]),
        "training": {"seconds": round(train_seconds, 1), "seg_seconds": plan.seg_seconds, "cnn_seconds": plan.cnn_seconds,
                     "cpu_threads": 2, "seg_width": plan.width,
                     "seg_hypo_weight": getattr(plan, "seg_hypo_weight", 3.0),
                     "seg_hypo_share": getattr(plan, "seg_hypo_share", 0.3)},
        "metrics": {"validation": val_metrics, "test": test_metrics},
        "campaign": write_campaign(out, state["campaign"], train_seconds, test_metrics) if state.get("campaign") else None,
        "intended_use": "synthetic-trained demonstration models, not for clinical use; retrain on site data with `hexnode train --data`",
    }
    (out / "manifest.json").write_text(json.dumps(_finite(manifest), indent=2) + "\n")
    from hexnode.train.card import render

    # the card is not in the manifest's file list: `hexnode evaluate` figures are added to it later
    (out / "model_card.md").write_text(render(_finite(manifest)))
    print(json.dumps({"train_seconds": round(train_seconds, 1), "test": test_metrics}, default=float), flush=True)


def _seg_init(init: Path | None, width: int) -> tuple[dict[str, Any] | None, bool]:
    """Where the U-Net starts: a campaign's torch weights (`DIR/seg.pt`), or a model set's ONNX file
    (`DIR/seg.onnx`: BatchNorm fused, so its statistics stay frozen from then on), or scratch."""
    import torch

    if init is None:
        return None, False
    if (init / "seg.pt").exists():
        runs = json.loads((init / "campaign.json").read_text())["runs"] if (init / "campaign.json").exists() else []
        return torch.load(init / "seg.pt", weights_only=True), any(r.get("frozen_bn") for r in runs)
    from hexnode.train.onnx_import import seg_from_onnx

    return seg_from_onnx(init / "seg.onnx", width), True


def campaign_entry(args: argparse.Namespace, init: Path | None, seg_steps: int, cnn_steps: int,
                   seg_weights: dict[str, Any], cnn_weights: dict[str, Any], work: Path, *,
                   frozen_bn: bool = False) -> dict[str, Any]:
    """This run as one step of a campaign: the runs before it (from `--init-from DIR/campaign.json`),
    its own steps and budgets, and the weights the next run starts from."""
    before: list[dict[str, Any]] = []
    if init is not None and (init / "campaign.json").exists():
        before = json.loads((init / "campaign.json").read_text())["runs"]
    run = {
        "date": time.strftime("%Y-%m-%d"), "seed": args.seed, "synth": args.synth, "normal": getattr(args, "normal", 0),
        "quick": bool(args.quick), "init_from": str(init) if init else None,
        "seg_steps": seg_steps, "cnn_steps": cnn_steps,
        "seg_seconds": float(args.seg_seconds or 0), "cnn_seconds": float(args.cnn_seconds or 0),
        "resumed": bool(getattr(args, "resume", None)), "frozen_bn": frozen_bn,
    }
    return {"runs_before": before, "run": run, "seg_weights": seg_weights, "cnn_weights": cnn_weights}


def write_campaign(out: Path, campaign: dict[str, Any], wall_seconds: float, test: dict[str, Any]) -> dict[str, Any]:
    """`out/campaign/`: the torch weights (BatchNorm not fused, unlike the ONNX files) that the next
    run continues from (`--init-from out/campaign`), and every run so far with its held-out figures:
    the campaign's learning curve."""
    import torch

    folder = out / "campaign"
    folder.mkdir(exist_ok=True)
    torch.save(campaign["seg_weights"], folder / "seg.pt")
    torch.save(campaign["cnn_weights"], folder / "cnn.pt")

    def value(v: Any) -> Any:
        return v.get("value") if isinstance(v, dict) else v

    run = dict(campaign["run"], wall_seconds=round(wall_seconds, 1),
               test={k: value(test.get(k)) for k in ("n", "auc", "bayes_auc", "ece", "iou_slice", "iou_patient")})
    runs = [*campaign["runs_before"], run]
    # a run may lack a figure (run 0 kept no CNN step count, run 1 no wall time): it counts as 0
    totals = {"runs": len(runs), "seg_steps": sum(r.get("seg_steps") or 0 for r in runs),
              "cnn_steps": sum(r.get("cnn_steps") or 0 for r in runs),
              "wall_hours": round(sum(r.get("wall_seconds") or 0.0 for r in runs) / 3600, 2)}
    (folder / "campaign.json").write_text(json.dumps(_finite({"totals": totals, "runs": runs}), indent=1) + "\n")
    return totals


def _files_tag(files: dict[str, dict[str, Any]]) -> str:
    """8 hex digits identifying the model files (their sha256s together)."""
    joined = "".join(f"{name}:{files[name]['sha256']}" for name in sorted(files))
    return hashlib.sha256(joined.encode()).hexdigest()[:8]


def _finite(obj: Any) -> Any:
    """JSON without NaN/Infinity (not valid JSON): undefined figures become null."""
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    if isinstance(obj, float | np.floating):
        return float(obj) if np.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def summarise(test: list[Record], fused: Any, rad_only: Any, cal: Any, threshold: float) -> dict[str, Any]:
    if not test:
        return {"n": 0}
    y = np.array([r.label for r in test])
    p = cal.apply(fused.raw([r.feats for r in test]))
    stats = M.binary_stats(y, p, threshold)
    slice_iou = [v for r in test for v in r.seg.get("slice_ious", [])]
    out: dict[str, Any] = {
        "n": len(test),
        "auc": M.bootstrap(lambda i: M.auc(y[i], p[i]), len(y)).__dict__,
        "ece": M.ece(y, p),
        "sensitivity": stats.sensitivity,
        "specificity": stats.specificity,
        "auc_radiomics": M.auc(y, rad_only.raw([r.feats for r in test])),
        "auc_cnn": M.auc(y, np.array([r.feats.get("cnn_logit", -1e9) for r in test])),
        "auc_volume": M.auc(y, np.array([r.feats.get("volume_ml", 0.0) for r in test])),
        "auc_markers": M.auc(y, np.array([r.feats.get("marker_logit", -1e9) for r in test])),
        "iou_patient": M.mean_ci([r.seg["iou"] for r in test]).__dict__,
        "iou_slice": float(np.mean(slice_iou)) if slice_iou else float("nan"),
    }
    if all(r.he_probability is not None for r in test):
        out["bayes_auc"] = M.auc(y, np.array([r.he_probability for r in test]))
    return out
