"""The intracranial gate measured: IoU with and without it, and false blood on normal heads.

One U-Net pass per case; the same raw mask is post-processed twice, once as before the gate
(`clean_mask` alone) and once gated (`gate_mask`, then `clean_mask`), so the difference is the
gate and nothing else. Held-out seed 11 (training used seed 1, `hexnode evaluate` seed 2).

    .venv/bin/python bench/gate.py [--bleeds 400] [--normal 200] [--tilted 50] [--workers 2]

"before" is without the gate, "after" with it (and the model set's post-processing); prints
patient- and slice-level IoU before/after on the bleeds, and the false-positive volume
(median, 95th percentile, max) on normal heads (straight and tilted 20-25 degrees, whose low
slices cut through the skull base), before/after, against the targets (median 0, p95 <= 1 ml).
`--sweep 0.05,0.1` adds gated variants with a larger smallest component (`min_component_ml`),
`--lesion-sweep 0.1` variants with a smallest reported hemorrhage (`min_lesion_ml`). The
"before"/"after" pair uses the model set's own post-processing (its manifest).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from multiprocessing import Pool
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SEED = 11
_W: dict[str, Any] = {}


def _init(models_dir: str, sweep: list[float], lesion: list[float]) -> None:
    from hexnode.models.analyser import Models

    _W["models"] = Models.load(models_dir, threads=1)
    _W["sweep"] = sweep
    _W["lesion"] = lesion


def _job(job: tuple[str, int]) -> dict[str, Any]:
    from hexnode.models.brain import gate_mask, intracranial
    from hexnode.models.segment import clean_mask, predict_mask, volume_ml
    from hexnode.synth.phantom import generate_case
    from hexnode.train import metrics as M

    kind, i = job
    models = _W["models"]
    tilt = 20.0 + 5.0 * (i % 2) if kind == "tilted" else (20.0 if kind == "bleed" and i % 4 == 0 else 0.0)
    bleeding = kind in ("bleed", "hard")
    index = {"bleed": i, "hard": 20_000 + i}.get(kind, 10_000 + i)
    c = generate_case(SEED, index, normal=not bleeding, hard=kind == "hard", tilt_deg=tilt)
    hu = c.hu.astype(np.float32)
    raw = predict_mask(models.seg, hu, models.post.threshold)
    gated = raw.copy()
    cav = intracranial(hu, c.spacing)
    removed = gate_mask(gated, cav, c.spacing)
    sweep = {f"min{v:g}": clean_mask(gated.copy(), c.spacing, replace(models.post, min_component_ml=v))
             for v in _W["sweep"]}
    sweep |= {f"lesion{v:g}": clean_mask(gated.copy(), c.spacing, replace(models.post, min_lesion_ml=v))
              for v in _W["lesion"]}
    before = clean_mask(raw, c.spacing, models.post)
    after = clean_mask(gated, c.spacing, models.post)
    out: dict[str, Any] = {"kind": kind, "i": i, "removed_voxels": removed,
                           "truth_ml": volume_ml(c.mask, c.spacing) if bleeding else 0.0}
    for tag, m in sweep.items():
        out[f"{tag}_ml"] = volume_ml(m, c.spacing)
        if bleeding:
            out[f"{tag}_iou"] = M.iou(c.mask, m)
            out[f"{tag}_slice_ious"] = M.slice_ious(c.mask, m)
    for tag, m in (("before", before), ("after", after)):
        out[f"{tag}_ml"] = volume_ml(m, c.spacing)
        if bleeding:
            out[f"{tag}_iou"] = M.iou(c.mask, m)
            out[f"{tag}_slice_ious"] = M.slice_ious(c.mask, m)
    return out


def _fp(rows: list[dict[str, Any]], tag: str) -> str:
    v = np.array([r[f"{tag}_ml"] for r in rows])
    return (f"median {np.median(v):.2f} ml, p95 {np.percentile(v, 95):.2f} ml, max {v.max():.2f} ml, "
            f"cases > 0: {int((v > 0).sum())}/{len(v)}")


def _bleeds(rows: list[dict[str, Any]], kind: str, tags: list[str]) -> None:
    bleeds = [r for r in rows if r["kind"] == kind]
    if not bleeds:
        return
    name = "bleeds" if kind == "bleed" else "hard bleeds"
    for tag in tags:
        iou = np.mean([r[f"{tag}_iou"] for r in bleeds])
        sl = [v for r in bleeds for v in r[f"{tag}_slice_ious"]]
        print(f"{name} n={len(bleeds)} {tag}: IoU patient {iou:.4f}, slice {np.mean(sl):.4f}")
    dv = [r["after_ml"] - r["before_ml"] for r in bleeds]
    print(f"{name}: volume change by the gate: median {np.median(dv):.3f} ml, min {min(dv):.3f} ml; "
          f"cases changed {sum(1 for d in dv if d != 0)}/{len(dv)}")
    emptied = {tag: sum(1 for r in bleeds if r[f"{tag}_ml"] == 0) for tag in tags}
    print(f"{name}: truth {min(r['truth_ml'] for r in bleeds):.2f}-{max(r['truth_ml'] for r in bleeds):.2f} ml; "
          f"called no hemorrhage: {emptied}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bleeds", type=int, default=400)
    ap.add_argument("--normal", type=int, default=200)
    ap.add_argument("--tilted", type=int, default=50)
    ap.add_argument("--hard", type=int, default=0, help="hard bleeds (< 3 ml, motion, streaks)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--models", default=str(REPO / "models"))
    ap.add_argument("--json", help="write every case's figures here")
    ap.add_argument("--sweep", default="", help="comma-separated min_component_ml values to compare "
                    "(gated), e.g. 0.05,0.1: the smallest blood component the report can show")
    ap.add_argument("--lesion-sweep", default="", help="comma-separated min_lesion_ml values to compare "
                    "(gated): below it, a mask whose largest component is smaller is emptied")
    args = ap.parse_args()
    jobs = ([("bleed", i) for i in range(args.bleeds)] + [("normal", i) for i in range(args.normal)]
            + [("tilted", i) for i in range(args.tilted)] + [("hard", i) for i in range(args.hard)])
    t0 = time.perf_counter()
    sweep = [float(v) for v in args.sweep.split(",") if v]
    lesion = [float(v) for v in args.lesion_sweep.split(",") if v]
    tags = ["before", "after"] + [f"min{v:g}" for v in sweep] + [f"lesion{v:g}" for v in lesion]
    with Pool(args.workers, initializer=_init, initargs=(args.models, sweep, lesion)) as pool:
        rows = pool.map(_job, jobs, chunksize=4)
    print(f"{len(rows)} cases in {time.perf_counter() - t0:.0f} s (seed {SEED}, models {args.models})")
    for bkind in ("bleed", "hard"):
        _bleeds(rows, bkind, tags)
    for kind in ("normal", "tilted"):
        sub = [r for r in rows if r["kind"] == kind]
        if sub:
            for tag in tags:
                print(f"{kind} heads n={len(sub)} {tag}: false blood {_fp(sub, tag)}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows))


if __name__ == "__main__":
    main()
