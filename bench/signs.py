"""The NCCT expansion signs against the generator's truth, and the HE figures of two model sets,
on held-out synthetic cases run through the node's own inference.

Each case (seed `--seed`, never used by training) goes through `hexnode.train.restage.stage_case`
(the committed U-Net, the intracranial gate, the skull-base rule, the 0.1 ml floor, the features),
cached per case in `--cache`, so a second run, or one with another model set, costs no U-Net pass.
The signs (`hexnode.models.signs`) are measured on the cached crop and scored against
`Truth.signs` (`hexnode.synth.signtruth`): sensitivity and specificity with Wilson 95 % intervals.
With `--models A --models B` the HE AUC and ECE (10 bins) of each set on the same cases, with
bootstrap 95 % intervals, beside the true probability's (Bayes).

    .venv/bin/python bench/signs.py --seed 61 --cases 300 --cache var/signs/cache \\
        --models models --models var/signs/newmodels
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from hexnode.synth.signtruth import SIGNS
from hexnode.train import metrics as M
from hexnode.train.restage import CaseJob, Staged, stage_all, with_signs


def wilson(k: int, n: int) -> tuple[float, float, float]:
    if n == 0:
        return float("nan"), float("nan"), float("nan")
    p, z = k / n, 1.96
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return p, max(0.0, centre - half), min(1.0, centre + half)


def sign_table(staged: list[Staged]) -> list[str]:
    """Per sign: truth prevalence, sensitivity and specificity (cases with a predicted mask; a case
    without one counts every sign absent, as the report says)."""
    rows = []
    for s in staged:
        rec = with_signs(s)
        rows.append((s.truth["signs"], {k: bool(rec.feats.get(f"sign_{k}", 0.0)) for k in SIGNS}))
    lines = [f"{'sign':12s} {'truth+':>6s} {'sensitivity [95% CI]':>26s} {'specificity [95% CI]':>26s}"]
    for k in SIGNS:
        y = np.array([t[k] > 0 for t, _ in rows])
        p = np.array([c[k] for _, c in rows])
        se = wilson(int((y & p).sum()), int(y.sum()))
        sp = wilson(int((~y & ~p).sum()), int((~y).sum()))
        lines.append(f"{k:12s} {int(y.sum()):6d} {se[0]:8.3f} [{se[1]:.3f}, {se[2]:.3f}]    "
                     f"{sp[0]:8.3f} [{sp[1]:.3f}, {sp[2]:.3f}]")
    return lines


def probabilities(models_dir: Path, staged: list[Staged]) -> np.ndarray:
    """The set's calibrated HE probability of each case from the cached features, as
    `Models.analyse` computes it (marker score, booster, calibration); 0 without a mask."""
    from hexnode.models.predict import Booster, Calibration, MarkerScore
    from hexnode.models.registry import load_manifest

    man = load_manifest(models_dir, verify=True)
    fused = Booster(man.path("lgbm"))
    cal = Calibration.from_manifest(man.data["calibration"])
    markers = MarkerScore.load(man.path("markers")) if man.has("markers") else None
    out = np.zeros(len(staged))
    for i, s in enumerate(staged):
        feats: dict[str, Any] = dict(with_signs(s).feats)
        if feats.get("volume_ml", 0.0) <= 0:
            continue
        if markers is not None:
            feats["marker_logit"] = markers.logit(feats)
        out[i] = float(cal.apply(fused.raw([feats]))[0])
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=61)
    ap.add_argument("--cases", type=int, default=300)
    ap.add_argument("--first", type=int, default=0)
    ap.add_argument("--cache", default="var/signs/cache")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--staging-models", default="models", help="the model set whose U-Net makes the masks")
    ap.add_argument("--models", action="append", default=[], help="model sets to score (HE AUC, ECE)")
    ap.add_argument("--cached-only", action="store_true", help="score only the cases already in the cache")
    args = ap.parse_args()

    t0 = time.monotonic()
    cache = Path(args.cache)
    jobs = [CaseJob("heldout", args.seed, i) for i in range(args.first, args.first + args.cases)]
    if args.cached_only:
        jobs = [j for j in jobs if (cache / f"{j.case_id}.pkl").exists()]
    staged = stage_all(Path(args.staging_models), jobs, cache, workers=args.workers)
    print(f"{len(staged)} held-out cases (seed {args.seed}), {time.monotonic() - t0:.0f} s")
    print()
    for line in sign_table(staged):
        print(line)
    if args.models:
        y = np.array([s.truth["he_label"] for s in staged], bool)
        true_p = np.array([s.truth["he_probability"] for s in staged])
        print(f"\nHE prevalence {y.mean():.3f}")
        print(f"{'model set':40s} {'AUC [95% CI]':>24s} {'ECE [95% CI]':>24s}")
        rows = [("true probability (Bayes)", true_p)] + [(m, probabilities(Path(m), staged)) for m in args.models]
        for name, p in rows:
            auc = M.bootstrap(lambda i, p=p: M.auc(y[i], p[i]), len(y))
            ece = M.bootstrap(lambda i, p=p: M.ece(y[i], p[i]), len(y))
            print(f"{name:40s} {auc.fmt():>24s} {ece.fmt():>24s}   mean p {p.mean():.3f}")
        base_name, base = rows[1]
        for name, p in rows[2:]:
            # paired: the same resampled cases for both sets, so the shared case mix cancels out
            gain = M.bootstrap(lambda i, p=p: M.auc(y[i], p[i]) - M.auc(y[i], base[i]), len(y))
            print(f"AUC of {name} minus {base_name} (paired bootstrap): {gain.value:+.3f} [{gain.lo:+.3f}, {gain.hi:+.3f}]")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
