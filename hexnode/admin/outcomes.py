"""`hexnode outcomes`: the site's outcome figures per model version as text or JSON, and the
reliability diagram (the figures themselves are computed in hexnode/store/outcomes.py, which the
status page and the follow-up step share)."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np

from hexnode.store.db import Store
from hexnode.store.outcomes import scored_pairs, summarise

__all__ = ["reliability_png", "run_outcomes", "text_report"]


def reliability_png(store: Store, path: Path, version: str | None = None) -> int:
    """Reliability diagram of the scored pairs (of one model version, or all); returns n."""
    from hexnode.train.plots import reliability_png as draw

    with store.transaction() as s:
        pairs, _ = scored_pairs(s)
    if version:
        pairs = [p for p in pairs if p.model_version == version]
    y = np.array([p.expansion for p in pairs], bool)
    prob = np.array([p.probability for p in pairs], float)
    draw(path, y, prob, f"site outcomes: {version or 'all versions'} (n = {len(pairs)})")
    return len(pairs)


def _fmt(x: float | None, digits: int = 3) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{x:.{digits}f}"


def text_report(summary: dict[str, Any]) -> str:
    lines = [f"outcome pairs scored: {summary['pairs']} (left out: {summary['left_out']['later_followups']} later "
             f"follow-ups of the same baseline, {summary['left_out']['decreased']} decreased)"]
    for v in summary["versions"]:
        lines += [
            f"model {v['model_version']}: {v['pairs']} pairs, {v['events']} expansions observed "
            f"(rate {_fmt(v['observed_rate'])}; predicted {_fmt(v['predicted_rate'])}, 95 % interval "
            f"[{_fmt(v['predicted_rate_lo'])}, {_fmt(v['predicted_rate_hi'])}]), baselines {v['first'][:10]} - "
            f"{v['last'][:10]}",
            f"  AUC {_fmt(v['auc'])} [{_fmt(v['auc_lo'])}, {_fmt(v['auc_hi'])}]; ECE {_fmt(v['ece'])}; at the threshold: "
            f"sensitivity {_fmt(v['sensitivity'])}, specificity {_fmt(v['specificity'])}, PPV {_fmt(v['ppv'])}, "
            f"NPV {_fmt(v['npv'])}",
        ]
        if v["drift"]:
            lines.append("  DRIFT: " + "; ".join(v["drift_reasons"]))
    lines.append(f"rule: {summary['rule']}")
    return "\n".join(lines)


def run_outcomes(args: argparse.Namespace) -> int:
    """`hexnode outcomes [--json] [--png FILE]`."""
    from hexnode.config import load_config
    from hexnode.store.db import open_existing

    cfg = load_config(getattr(args, "config", None))
    store = open_existing(cfg.database_url)  # a report: never from a new, empty database
    try:
        fu = cfg.followup
        summary = summarise(store, drift_min_pairs=fu.drift_min_pairs, drift_max_ece=fu.drift_max_ece)
        if getattr(args, "png", None):
            n = reliability_png(store, Path(args.png), getattr(args, "version", None))
            print(f"wrote {args.png} ({n} pairs)", file=sys.stderr)
        print(json.dumps(summary, indent=1) if getattr(args, "json", False) else text_report(summary))
    finally:
        store.dispose()
    return 0
