"""The intracranial cavity step: time and agreement against a reference revision, in one run.

The reference is hexnode/models/brain.py as committed at `--reference` (a git revision; default
the revision before the cropped, run-length morphology and the thin-series slice stride), loaded
from git into this process, so both run on the same machine, on the same arrays, interleaved.

Time: the 32-slice demo series (bench/models.py's: seed 2024, the first case with 32 slices), the
600-slice thin series of bench/memory.py (seed 600, 600 x 512^2; it runs past the head, so the
crop to the slices with bone halves it) and a 600-slice series with a head on every slice (a thin
head's slices each three times), median of `--repeats` (the 600-slice ones: half as many).
Agreement over synthetic cases (held-out seed 31; straight, tilted 20-25 degrees, mixed
4 x 14 + 7 x 14 mm, hard, normal, thin): Dice and voxel difference of the cavity and of its core,
and of the final hemorrhage mask (one U-Net pass per case, gated by each cavity, then the model
set's post-processing); a case whose mask differs is analysed to the end with both (volume,
detected, probability, risk category).

    .venv/bin/python bench/cavity.py [--reference daba7b9] [--repeats 5] [--cases 20,10,10,5,5,4]
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SEED = 31
KINDS = ("straight", "tilted", "mixed", "hard", "normal", "thin")


def reference_module(rev: str) -> ModuleType:
    """hexnode/models/brain.py at `rev`, imported under another name."""
    src = subprocess.run(["git", "show", f"{rev}:hexnode/models/brain.py"], cwd=REPO, check=True,
                         capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp(prefix="hexnode-cavity-ref-")) / "brain_reference.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location("brain_reference", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def dice(a: np.ndarray, b: np.ndarray) -> float:
    n = int(np.count_nonzero(a)) + int(np.count_nonzero(b))
    return 1.0 if n == 0 else 2.0 * int(np.count_nonzero(a & b)) / n


def timed(f: Any, *args: Any) -> tuple[float, Any]:
    t = time.perf_counter()
    out = f(*args)
    return time.perf_counter() - t, out


def speed(ref: ModuleType, repeats: int) -> None:
    from hexnode.models import brain
    from hexnode.synth.phantom import generate_case

    case = next(c for c in (generate_case(2024, i) for i in range(50)) if c.hu.shape[0] == 32)
    t = time.perf_counter()
    thin = generate_case(600, 0, thin=True, n_slices=600)
    # bench/memory.py's series runs past the head (about half its slices hold no bone); a head on
    # every one of 600 slices: a thin head's slices each taken three times, a third of the spacing apart
    head = generate_case(600, 1, thin=True)
    print(f"(600-slice series generated in {time.perf_counter() - t:.0f} s)")
    series = [("32 x 512^2 (demo)", case.hu, case.spacing, 0.15, repeats),
              (f"600 x 512^2 ({thin.spacing[2]:.2f} mm)", thin.hu, thin.spacing, 1.0, max(1, (repeats + 1) // 2)),
              (f"600 x 512^2 head-only ({head.spacing[2] / 3:.2f} mm)", np.repeat(head.hu, 3, axis=0)[:600],
               (head.spacing[0], head.spacing[1], head.spacing[2] / 3), 1.0, max(1, (repeats + 1) // 2))]
    del thin, head
    print(f"{'series':36s} {'reference s':>12s} {'new s':>8s} {'ratio':>6s} {'target s':>9s}  cavity Dice, voxels differing")
    for name, raw, spacing, target, reps in series:
        hu = raw.astype(np.float32)  # what load_volume hands the analyser
        brain.intracranial(hu, spacing)  # imports, first-call allocations
        news, olds = [], []
        for _ in range(reps):  # interleaved: the machine's load hits both alike
            s, new = timed(brain.intracranial, hu, spacing)
            news.append(s)
            s, old = timed(ref.intracranial, hu, spacing)
            olds.append(s)
        new_s, old_s = float(np.median(news)), float(np.median(olds))
        diff = int(np.count_nonzero(old.mask ^ new.mask))
        print(f"{name:36s} {old_s:12.3f} {new_s:8.3f} {old_s / new_s:6.1f} {target:9.2f}"
              f"{'  OK' if new_s <= target else '  OVER'}  {dice(old.mask, new.mask):.4f}, {diff} of "
              f"{int(np.count_nonzero(old.mask))}", flush=True)
        del hu, old, new


def agreement(ref: ModuleType, counts: dict[str, int], models_dir: str) -> None:
    from hexnode.models import brain
    from hexnode.models.analyser import Models
    from hexnode.models.segment import clean_mask, predict_mask, volume_ml
    from hexnode.synth.phantom import generate_case

    models = Models.load(models_dir)
    rows = []
    print(f"\n{'case':16s} {'slices':>6s} {'cav Dice':>9s} {'cav diff':>9s} {'core Dice':>9s} {'mask Dice':>9s} "
          f"{'mask diff':>9s} {'ml ref':>7s} {'ml new':>7s}")
    t0 = time.perf_counter()
    for kind in KINDS:
        for i in range(counts.get(kind, 0)):
            tilt = 20.0 + 5.0 * (i % 2) if kind == "tilted" else 0.0
            c = generate_case(SEED, 1000 * KINDS.index(kind) + i, tilt_deg=tilt, hard=kind == "hard",
                              normal=kind == "normal", thin=kind == "thin",
                              mixed=((4.0, 14), (7.0, 14)) if kind == "mixed" else None)
            hu = c.hu.astype(np.float32)
            ext = c.geometry.extents_mm() if kind == "mixed" else None
            a = ref.intracranial(hu, c.spacing, extents=ext)
            b = brain.intracranial(hu, c.spacing, extents=ext)
            raw = predict_mask(models.seg, hu, models.post.threshold)
            masks = []
            for module, cav in ((ref, a), (brain, b)):
                m = raw.copy()
                module.gate_mask(m, cav, c.spacing)
                masks.append(clean_mask(m, c.spacing, models.post))
            ma, mb = (m.astype(bool) for m in masks)
            ml = [volume_ml(m, c.spacing, ext) for m in masks]
            row = {"case": f"{kind}-{i}", "slices": hu.shape[0], "cav_dice": dice(a.mask, b.mask),
                   "cav_diff": int(np.count_nonzero(a.mask ^ b.mask)), "core_dice": dice(a.core, b.core),
                   "mask_dice": dice(ma, mb), "mask_diff": int(np.count_nonzero(ma ^ mb)), "ml": ml,
                   "coverage": (ref.coverage_problem(a), brain.coverage_problem(b))}
            if row["mask_diff"]:
                row["calls"] = [_call(models, hu, m, c.spacing, ext) for m in masks]
            rows.append(row)
            print(f"{row['case']:16s} {row['slices']:6d} {row['cav_dice']:9.4f} {row['cav_diff']:9d} "
                  f"{row['core_dice']:9.4f} {row['mask_dice']:9.4f} {row['mask_diff']:9d} {ml[0]:7.2f} {ml[1]:7.2f}"
                  + (f"  calls {row['calls']}" if "calls" in row else ""), flush=True)
    print(f"\n{len(rows)} cases in {time.perf_counter() - t0:.0f} s")
    for kind in KINDS:
        sel = [r for r in rows if r["case"].startswith(kind + "-")]
        if sel:
            print(f"{kind:9s} n={len(sel):3d}  cavity Dice min {min(r['cav_dice'] for r in sel):.4f} "
                  f"mean {np.mean([r['cav_dice'] for r in sel]):.4f}; core Dice min {min(r['core_dice'] for r in sel):.4f}; "
                  f"hemorrhage mask Dice min {min(r['mask_dice'] for r in sel):.4f}, "
                  f"voxels differing max {max(r['mask_diff'] for r in sel)}")
    changed_ml = [r for r in rows if abs(r["ml"][0] - r["ml"][1]) > 1e-9]
    changed_call = [r for r in rows if "calls" in r and r["calls"][0][:2] != r["calls"][1][:2]]
    changed_cov = [r for r in rows if r["coverage"][0] != r["coverage"][1]]
    print(f"volume changed: {len(changed_ml)} of {len(rows)} cases"
          + "".join(f"; {r['case']} {r['ml'][0]:.3f} -> {r['ml'][1]:.3f} ml" for r in changed_ml))
    print(f"call changed (detected / risk category): {len(changed_call)}; coverage verdict changed: {len(changed_cov)}")


def _call(models: Any, hu: np.ndarray, mask: np.ndarray, spacing: Any, ext: Any) -> tuple[bool, bool, float]:
    """(hemorrhage detected, High risk, probability) of a mask, through the model set's features."""
    if not mask.any():
        return (False, False, 0.0)
    feats = models.features(hu, mask, spacing, {}, ext)
    p = float(models.calibration.apply(models.fused.raw([feats]))[0])
    return (True, p >= models.info.threshold, round(p, 4))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reference", default="daba7b9", help="git revision of the reference brain.py")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--cases", default="20,10,10,5,5,4",
                    help="cases per kind: " + ",".join(KINDS))
    ap.add_argument("--no-agreement", action="store_true")
    ap.add_argument("--models", default=str(REPO / "models"))
    args = ap.parse_args()
    sys.path.insert(0, str(REPO))
    ref = reference_module(args.reference)
    print(f"reference: hexnode/models/brain.py at {args.reference}")
    speed(ref, args.repeats)
    if not args.no_agreement:
        counts = dict(zip(KINDS, (int(v) for v in args.cases.split(",")), strict=False))
        agreement(ref, counts, args.models)
    return 0


if __name__ == "__main__":
    sys.exit(main())
