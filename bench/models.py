"""Per-stage inference time of the committed models on a 32 x 512 x 512 synthetic series.

Prints seconds per stage against the issue's targets (segmentation <= 3 s, radiomics <= 5 s,
CNN + LightGBM <= 1 s on 2 CPU cores) and, as the reference measured in the same run,
pyradiomics on the uncropped volume, so the crop's effect is a ratio, not a claim.

    .venv/bin/python bench/models.py [--repeats 3] [--no-reference] [--big]

`--big`: a 102 ml synthetic hematoma (seed 2024, case 24), at 5 mm and at 0.75 mm: segmentation
against radiomics of the booster's features only (what the node computes) and of all ~1,300
(what training computes), same run; the target is radiomics <= segmentation (issue 21).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
TARGETS = {"segmentation": 3.0, "radiomics": 5.0, "cnn+lgbm": 1.0}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-reference", action="store_true")
    ap.add_argument("--models", default=str(REPO / "models"))
    ap.add_argument("--big", action="store_true", help="also the 102 ml hematoma, thick and thin")
    args = ap.parse_args()

    from hexnode.models.analyser import Models
    from hexnode.synth.phantom import generate_case

    t = time.perf_counter()
    models = Models.load(args.models)
    print(f"load + sha256 verify: {time.perf_counter() - t:.2f} s (provider {models.provider}, models {models.info.version})")
    case = None
    for i in range(50):  # the first case with 32 slices
        c = generate_case(2024, i)
        if c.hu.shape[0] == 32:
            case = c
            break
    assert case is not None
    hu = case.hu.astype(np.float32)
    print(f"series {hu.shape} spacing {case.spacing}, true volume {case.truth.volume_ml:.1f} ml")
    stages: dict[str, list[float]] = {k: [] for k in (*TARGETS, "total")}
    models.analyse(hu, case.spacing)  # warm-up (session allocation)
    for _ in range(args.repeats):
        a = models.analyse(hu, case.spacing)
        tm = a.timings
        stages["segmentation"].append(tm["segmentation"])
        stages["radiomics"].append(tm.get("radiomics", 0.0))
        stages["cnn+lgbm"].append(tm.get("cnn", 0.0) + tm.get("fusion", 0.0))
        stages["total"].append(tm["total"])
    print(f"{'stage':14s} {'median s':>9s} {'target s':>9s}")
    for k, v in stages.items():
        tgt = TARGETS.get(k)
        print(f"{k:14s} {np.median(v):9.2f} {tgt if tgt else '':>9}" + ("  OK" if tgt and np.median(v) <= tgt else ("  OVER" if tgt else "")))
    if not args.no_reference and a.mask.any():
        from hexnode.models import features as F

        ext = F.RadiomicsExtractor(models.manifest.path("radiomics"))
        margin = F.RADIOMICS_MARGIN_MM
        F.RADIOMICS_MARGIN_MM = 1e6  # reference: no crop (the whole volume is filtered)
        try:
            t = time.perf_counter()
            ext.extract(hu, a.mask, case.spacing)
            ref = time.perf_counter() - t
        finally:
            F.RADIOMICS_MARGIN_MM = margin
        crop = float(np.median(stages["radiomics"]))
        print(f"radiomics reference without crop: {ref:.2f} s -> cropped is {ref / max(crop, 1e-9):.1f}x faster")
    if args.big:
        big(models, args.repeats)


def big(models: object, repeats: int) -> None:
    from hexnode.models import features as F
    from hexnode.models.analyser import Models
    from hexnode.synth.phantom import generate_case

    assert isinstance(models, Models)
    full = F.RadiomicsExtractor(models.manifest.path("radiomics"))
    print(f"{'series':22s} {'ml':>6s} {'seg s':>7s} {'radiomics s':>12s} {'all feats s':>12s} {'rad/seg':>8s}")
    for thin in (False, True):
        case = generate_case(2024, 24, thin=thin)
        hu = case.hu.astype(np.float32)
        seg, rad, ref = [], [], []
        for _ in range(repeats):
            t = time.perf_counter()
            mask = models.segment(hu, case.spacing)
            seg.append(time.perf_counter() - t)
            t = time.perf_counter()
            models.radiomics.extract(hu, mask, case.spacing)
            rad.append(time.perf_counter() - t)
            t = time.perf_counter()
            full.extract(hu, mask, case.spacing)
            ref.append(time.perf_counter() - t)
        ml = float(mask.sum()) * float(np.prod(case.spacing)) / 1000.0
        s, r, f = (float(np.median(v)) for v in (seg, rad, ref))
        name = f"{hu.shape[0]} x {case.spacing[2]:g} mm"
        print(f"{name:22s} {ml:6.1f} {s:7.2f} {r:12.2f} {f:12.2f} {r / s:8.2f}" + ("  OK" if r <= s else "  OVER"))


if __name__ == "__main__":
    main()
