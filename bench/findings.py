"""Per-item accuracy of the findings (`hexnode.models.findings`) on held-out synthetic heads.

Cases from a seed no training run used (training: seed 1), every one drawn with the generator's
mass effect (`generate_case(mass_effect=True)`) so the midline shift has a truth; every 5th tilted
12 degrees. The findings are measured on the generator's truth mask (fast), and on the first
`--unet` cases also on the bundled U-Net's mask, as the worker does.

    nice -n 10 .venv/bin/python bench/findings.py --n 300 --unet 60 --out var/bench-findings

`--timing K` instead times `measure` alone on K heads, each as a 5 mm series (about 32 slices) and
as a thin series with every slice doubled (0.31-0.63 mm apart, about 400-600 slices).
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from hexnode.models.brain import intracranial
from hexnode.models.findings import IVH_MIN_ML, measure
from hexnode.synth.phantom import generate_case

SEED = 8101
CLASS = {"deep": "deep", "lobar": "lobar", "lobar_flat": "lobar", "cerebellar": "infratentorial",
         "intraventricular": "intraventricular"}
IVH_PRESENT_ML = IVH_MIN_ML  # the findings report IVH from this volume on


def one(i: int, models: Any) -> dict[str, Any]:
    c = generate_case(SEED, i, mass_effect=True, tilt_deg=12.0 if i % 5 == 4 else 0.0)
    hu = c.hu.astype(np.float32)
    cav = intracranial(hu, c.spacing)
    t = c.truth
    row: dict[str, Any] = {"index": i, "truth": {"location": CLASS[t.location], "site": t.site, "side": t.side,
                                                 "ivh_ml": t.ivh_ml, "oedema_ml": t.oedema_ml,
                                                 "mls_mm": t.midline_shift_mm, "volume_ml": t.volume_ml}}
    masks = {"truth_mask": c.mask}
    if models is not None:
        masks["unet_mask"] = models.segment(hu, c.spacing, cavity=cav)
    for name, m in masks.items():
        t0 = time.perf_counter()
        f = measure(hu, m, c.spacing, cav, c.geometry.orientation) if m.any() else None
        row[name] = None if f is None else {"location": f.location, "site": f.site, "side": f.side,
                                            "ivh_ml": f.ivh_ml, "oedema_ml": f.oedema_ml,
                                            "mls_mm": f.midline_shift_mm, "seconds": time.perf_counter() - t0}
    return row


def summary(rows: list[dict[str, Any]], which: str) -> dict[str, Any]:
    rs = [r for r in rows if which in r]
    got = [r for r in rs if r[which] is not None]
    n = len(rs)
    loc_ok = [r[which]["location"] == r["truth"]["location"] for r in got]
    site_ok = [r[which]["site"] == r["truth"]["site"] for r in got if r[which]["location"] == r["truth"]["location"]]
    side_ok = [r[which]["side"] == r["truth"]["side"] for r in got]
    conf = Counter((r["truth"]["location"], r[which]["location"]) for r in got)
    tp = sum(1 for r in got if r["truth"]["ivh_ml"] >= IVH_PRESENT_ML and r[which]["ivh_ml"] >= IVH_PRESENT_ML)
    pos = sum(1 for r in got if r["truth"]["ivh_ml"] >= IVH_PRESENT_ML)
    tn = sum(1 for r in got if r["truth"]["ivh_ml"] < IVH_PRESENT_ML and r[which]["ivh_ml"] < IVH_PRESENT_ML)
    neg = len(got) - pos
    ivh_err = [r[which]["ivh_ml"] - r["truth"]["ivh_ml"] for r in got if r["truth"]["ivh_ml"] >= IVH_PRESENT_ML]
    mls = [r for r in got if r["truth"]["location"] != "intraventricular"]
    mls_err = [abs(r[which]["mls_mm"] - r["truth"]["mls_mm"]) for r in mls if r[which]["mls_mm"] is not None]
    oed = [r for r in got if r["truth"]["location"] != "intraventricular"]
    oed_err = [r[which]["oedema_ml"] - r["truth"]["oedema_ml"] for r in oed]

    def q(v: list[float], p: float) -> float:
        return float(np.percentile(np.abs(v), p)) if v else float("nan")

    return {
        "mask": which, "cases": n, "measured": len(got),
        "location_accuracy": float(np.mean(loc_ok)) if loc_ok else float("nan"),
        "site_accuracy_given_location": float(np.mean(site_ok)) if site_ok else float("nan"),
        "side_accuracy": float(np.mean(side_ok)) if side_ok else float("nan"),
        "location_confusion": {f"{a}->{b}": k for (a, b), k in sorted(conf.items())},
        "ivh_sensitivity": tp / pos if pos else float("nan"), "ivh_specificity": tn / neg if neg else float("nan"),
        "ivh_present": pos, "ivh_ml_mae": float(np.mean(np.abs(ivh_err))) if ivh_err else float("nan"),
        "ivh_ml_bias": float(np.mean(ivh_err)) if ivh_err else float("nan"),
        "mls_measured": f"{len(mls_err)}/{len(mls)}", "mls_mae_mm": float(np.mean(mls_err)) if mls_err else float("nan"),
        "mls_p90_mm": q(mls_err, 90), "mls_within_2mm": float(np.mean(np.array(mls_err) <= 2.0)) if mls_err else float("nan"),
        "oedema_ml_mae": float(np.mean(np.abs(oed_err))) if oed_err else float("nan"),
        "oedema_ml_bias": float(np.mean(oed_err)) if oed_err else float("nan"), "oedema_p90_ml": q(oed_err, 90),
        "seconds_median": float(np.median([r[which]["seconds"] for r in got])) if got else float("nan"),
    }


def _seconds(hu: np.ndarray, mask: np.ndarray, spacing: tuple[float, float, float], orientation: Any,
             repeats: int = 3) -> float:
    cav = intracranial(hu, spacing)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        measure(hu, mask, spacing, cav, orientation)
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def timing(k: int) -> None:
    """Seconds of `measure` (median of 3) per head: a thick series and a thin one doubled."""
    for i in range(k):
        c = generate_case(SEED, i, mass_effect=True)
        thick = _seconds(c.hu.astype(np.float32), c.mask, c.spacing, c.geometry.orientation)
        t = generate_case(SEED, i, mass_effect=True, thin=True)
        hu, mask = np.repeat(t.hu, 2, axis=0).astype(np.float32), np.repeat(t.mask, 2, axis=0)
        spacing = (t.spacing[0], t.spacing[1], t.spacing[2] / 2.0)
        thin = _seconds(hu, mask, spacing, t.geometry.orientation)
        print(f"head {i}: {c.hu.shape[0]} slices of {c.spacing[2]} mm {thick:.3f} s; "
              f"{hu.shape[0]} slices of {spacing[2]:.3f} mm {thin:.3f} s", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--unet", type=int, default=60, help="cases (the first ones) also measured on the U-Net's mask")
    ap.add_argument("--models", default="models")
    ap.add_argument("--out", default="var/bench-findings")
    ap.add_argument("--timing", type=int, default=0, help="only time `measure` on this many heads")
    args = ap.parse_args()
    if args.timing:
        timing(args.timing)
        return
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    models = None
    if args.unet:
        from hexnode.models.analyser import Models

        models = Models.load(args.models, ["CPUExecutionProvider"])
    rows = []
    t0 = time.perf_counter()
    with (out / "cases.jsonl").open("w") as fh:
        for i in range(args.n):
            rows.append(one(i, models if i < args.unet else None))
            fh.write(json.dumps(rows[-1]) + "\n")
            fh.flush()
            if (i + 1) % 25 == 0:
                print(f"{i + 1} cases, {time.perf_counter() - t0:.0f} s", flush=True)
    res = [summary(rows, "truth_mask")] + ([summary(rows, "unet_mask")] if args.unet else [])
    (out / "summary.json").write_text(json.dumps(res, indent=2))
    print(f"seed {SEED}, {args.n} cases (mass effect on, every 5th tilted 12 degrees), {time.perf_counter() - t0:.0f} s")
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
