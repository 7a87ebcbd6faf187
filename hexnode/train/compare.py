"""`hexnode models compare CANDIDATE`: the candidate against the active version, on the site's
held-out cases (those the candidate never trained on, `siteset`) and on the synthetic benchmark
(so that nothing learnt before is forgotten), each figure with a 95 % bootstrap CI and the
candidate − active difference paired by case.

Worse, and refused by `hexnode models activate` unless `--force`, when on the site's held-out cases
* the CI of the mean IoU difference (cases with blood) lies entirely below −`IOU_MARGIN`, or
* false blood on normal heads (cases without blood) is up by more than `FALSE_BLOOD_MARGIN_ML` on
  average, or
* the CI of the AUC difference lies entirely below 0 (only with `MIN_PER_CLASS` outcomes of each
  class among the held-out cases),
or when on the synthetic benchmark the CI of the IoU difference lies entirely below
−`FORGET_MARGIN` (the candidate forgot what the base version knew).

The verdict is written beside the candidate (`compare.json`: against which active version, on
which site data set, by whom) and read by `activate`.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hexnode.config import Config
from hexnode.store.db import Store
from hexnode.train import metrics as M
from hexnode.train.export import finite
from hexnode.train.siteset import MIN_PER_CLASS, read_site

log = logging.getLogger(__name__)

IOU_MARGIN = 0.01
FALSE_BLOOD_MARGIN_ML = 0.5
FORGET_MARGIN = 0.05
#: the synthetic benchmark's seed (hexnode evaluate's: no training run drew from it)
SYNTH_SEED = 12345
SYNTH_CASES = 8
REPS = 1000


@dataclass
class Measured:
    """One model on one case."""

    iou: float
    dice: float
    volume_true: float
    volume_pred: float
    probability: float
    label: int | None


def measure(models: Any, hu: Any, mask: Any, spacing: tuple[float, float, float], label: int | None) -> Measured:
    from hexnode.models.segment import volume_ml

    huf = np.asarray(hu, np.float32)
    pred = models.segment(huf, spacing)
    prob = 0.0
    if pred.any() and label is not None:
        prob = models.scores(models.features(huf, pred, spacing, {})).probability
    return Measured(M.iou(mask, pred), M.dice(mask, pred), volume_ml(mask, spacing), volume_ml(pred, spacing), prob, label)


def _est(fn: Any, n: int) -> M.Estimate:
    return M.bootstrap(fn, n, reps=REPS)


def figures(cand: list[Measured], act: list[Measured]) -> dict[str, dict[str, Any]]:
    """Each figure for both models and their paired difference (candidate − active), with CIs."""
    out: dict[str, dict[str, Any]] = {}
    blood = [i for i, m in enumerate(act) if m.volume_true > 0]
    normal = [i for i, m in enumerate(act) if m.volume_true == 0]

    def add(name: str, idx: list[int], value: Any) -> None:
        if not idx:
            return
        c = np.array([value(cand[i]) for i in idx], float)
        a = np.array([value(act[i]) for i in idx], float)
        n = len(idx)
        out[name] = {"n": n, "candidate": _est(lambda k: float(c[k].mean()), n).__dict__,
                     "active": _est(lambda k: float(a[k].mean()), n).__dict__,
                     "difference": _est(lambda k: float((c[k] - a[k]).mean()), n).__dict__}

    add("iou", blood, lambda m: m.iou)
    add("dice", blood, lambda m: m.dice)
    add("volume_error_ml", blood, lambda m: abs(m.volume_pred - m.volume_true))
    add("false_blood_ml", normal, lambda m: m.volume_pred)
    lab = [i for i in blood if act[i].label is not None]
    y = np.array([act[i].label for i in lab], float)
    if lab and min(y.sum(), len(y) - y.sum()) >= 1:
        pc = np.array([cand[i].probability for i in lab])
        pa = np.array([act[i].probability for i in lab])
        n = len(lab)
        for name, fn in (("auc", M.auc), ("ece", M.ece)):
            out[name] = {"n": n, "events": int(y.sum()),
                         "candidate": _est(lambda k, f=fn: float(f(y[k], pc[k])), n).__dict__,
                         "active": _est(lambda k, f=fn: float(f(y[k], pa[k])), n).__dict__,
                         "difference": _est(lambda k, f=fn: float(f(y[k], pc[k]) - f(y[k], pa[k])), n).__dict__}
    return out


def verdict(site: dict[str, dict[str, Any]], synth: dict[str, dict[str, Any]]) -> list[str]:
    """Why the candidate is worse (module doc); empty: it is not."""
    reasons = []
    iou = site.get("iou")
    if iou and iou["difference"]["hi"] is not None and iou["difference"]["hi"] < -IOU_MARGIN:
        d = iou["difference"]
        reasons.append(f"site IoU difference {d['value']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}] lies below -{IOU_MARGIN:g}")
    fb = site.get("false_blood_ml")
    if fb and fb["difference"]["value"] > FALSE_BLOOD_MARGIN_ML:
        reasons.append(f"false blood on the site's normal heads up {fb['difference']['value']:+.2f} ml on average "
                       f"(limit +{FALSE_BLOOD_MARGIN_ML:g} ml)")
    auc = site.get("auc")
    if auc and auc["events"] >= MIN_PER_CLASS and auc["n"] - auc["events"] >= MIN_PER_CLASS \
            and auc["difference"]["hi"] is not None and auc["difference"]["hi"] < 0:
        reasons.append(f"site AUC difference {auc['difference']['value']:+.3f} lies below 0")
    siou = synth.get("iou")
    if siou and siou["difference"]["hi"] is not None and siou["difference"]["hi"] < -FORGET_MARGIN:
        reasons.append(f"synthetic benchmark IoU difference {siou['difference']['value']:+.3f} lies below "
                       f"-{FORGET_MARGIN:g} (forgotten)")
    return reasons


def compare(store: Store, cfg: Config, candidate: str, *, site_dir: str | None = None, synth: int = SYNTH_CASES,
            against: str | None = None) -> dict[str, Any]:
    from hexnode.models.analyser import Models
    from hexnode.store.model_versions import COMPARISON, active_version, find, os_user
    from hexnode.train.data import site_case, synth_case

    t0 = time.monotonic()
    cand_v = find(cfg, candidate)
    act_name = against or active_version(store, cfg)
    act_v = find(cfg, act_name)
    manifest = json.loads((cand_v.path / "manifest.json").read_text())
    prov_site = manifest.get("provenance", {}).get("site", {})
    root = site_dir or prov_site.get("path")
    if not root:
        raise ValueError(f"{candidate} names no site data set (not a site fine-tuned version): give --site DIR")
    site = read_site(Path(root))
    cand_m, act_m = Models.load(cand_v.path), Models.load(act_v.path)
    site_c, site_a = [], []
    for c in site.held_out:
        tc = site_case(site.root, c.case_id, c.label or 0)
        site_c.append(measure(cand_m, tc.hu, tc.mask, tc.spacing, c.label))
        site_a.append(measure(act_m, tc.hu, tc.mask, tc.spacing, c.label))
    syn_c, syn_a = [], []
    for i in range(synth):
        tc = synth_case(SYNTH_SEED, i, normal=i % 4 == 3)  # every 4th a head without blood
        syn_c.append(measure(cand_m, tc.hu, tc.mask, tc.spacing, tc.label))
        syn_a.append(measure(act_m, tc.hu, tc.mask, tc.spacing, tc.label))
    site_fig, synth_fig = figures(site_c, site_a), figures(syn_c, syn_a)
    reasons = verdict(site_fig, synth_fig)
    result = {
        "candidate": cand_v.version, "against": act_v.version, "site_path": str(site.root.resolve()),
        "site_digest": site.digest, "trained_on_digest": prov_site.get("digest"),
        "held_out_cases": len(site.held_out), "synthetic_cases": synth, "synthetic_seed": SYNTH_SEED,
        "site": site_fig, "synthetic": synth_fig, "worse": bool(reasons), "reasons": reasons,
        "rules": {"iou_margin": IOU_MARGIN, "false_blood_margin_ml": FALSE_BLOOD_MARGIN_ML,
                  "forget_margin": FORGET_MARGIN, "auc_min_per_class": MIN_PER_CLASS},
        "by": os_user(), "at_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "seconds": round(time.monotonic() - t0, 1),
    }
    result = finite(result)
    (cand_v.path / COMPARISON).write_text(json.dumps(result, indent=1) + "\n")
    return result


def _ci(e: dict[str, Any], digits: int) -> str:
    if e["value"] is None:
        return "n/a"
    ci = "" if e["lo"] is None else f" [{e['lo']:.{digits}f}, {e['hi']:.{digits}f}]"
    return f"{e['value']:.{digits}f}{ci}"


def report_lines(r: dict[str, Any]) -> list[str]:
    lines = [f"candidate {r['candidate']} vs active {r['against']}"]
    for part, title in (("site", f"site held-out cases ({r['held_out_cases']}; data set {r['site_digest'][:12]})"),
                        ("synthetic", f"synthetic benchmark ({r['synthetic_cases']} cases, seed {r['synthetic_seed']})")):
        lines += ["", title, f"  {'figure':16s} {'n':>3s}  {'active':24s} {'candidate':24s} difference (cand - active)"]
        for name, f in r[part].items():
            digits = 2 if name.endswith("_ml") else 3
            lines.append(f"  {name:16s} {f['n']:3d}  {_ci(f['active'], digits):24s} {_ci(f['candidate'], digits):24s} "
                         f"{_ci(f['difference'], digits)}")
    if r["trained_on_digest"] and r["trained_on_digest"] != r["site_digest"]:
        lines += ["", "note: the site data set changed since the candidate was trained (the held-out rule is by key, "
                      "so no held-out case was trained on)"]
    lines += ["", ("WORSE: " + "; ".join(r["reasons"])) if r["worse"] else "not worse: hexnode models activate "
              + r["candidate"] + " will accept it"]
    return lines


def run_compare(args: argparse.Namespace) -> int:
    from hexnode.config import load_config
    from hexnode.runtime import route_warnings, setup_logging
    from hexnode.store.db import open_existing

    setup_logging(logging.WARNING)
    route_warnings()
    if not args.version:
        print("hexnode models compare: CANDIDATE is required", file=sys.stderr)
        return 2
    cfg = load_config(getattr(args, "config", None))
    store = open_existing(cfg.database_url)
    try:
        r = compare(store, cfg, args.version, site_dir=getattr(args, "site", None),
                    synth=int(SYNTH_CASES if getattr(args, "synth", None) is None else args.synth))
    except ValueError as exc:
        print(f"hexnode models compare: {exc}", file=sys.stderr)
        return 1
    finally:
        store.dispose()
    print("\n".join(report_lines(r)))
    if getattr(args, "json", False):
        print(json.dumps(r))
    return 0
