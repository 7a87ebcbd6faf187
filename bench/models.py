"""Per-stage inference time of the committed models on a 32 x 512 x 512 synthetic series.

Prints seconds per stage against the issue's targets (segmentation <= 3 s, radiomics <= 5 s,
CNN + LightGBM <= 1 s on 2 CPU cores) and, as the reference measured in the same run,
pyradiomics on the uncropped volume, so the crop's effect is a ratio, not a claim.

    .venv/bin/python bench/models.py [--repeats 3] [--no-reference]
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
    args = ap.parse_args()

    from hexnode.models.pipeline import Models
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


if __name__ == "__main__":
    main()
