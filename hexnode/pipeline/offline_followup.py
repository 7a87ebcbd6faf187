"""`hexnode run A B ...`: link a patient's scans in time order as the node does, in memory.

The same rule as the worker (hexnode/series/followup.py: window, repeat, new episode, first scan
with blood as the baseline) and the same follow-up report, written beside each follow-up's own
objects (followup-SR.dcm, followup-SC.dcm). Patients are compared by a keyed hash under a secret
drawn for this run only; nothing is stored and no identifier is printed.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from hexnode.pipeline.run import Produced, encode, headers_of, kind_of
from hexnode.series import followup as rule


@dataclass
class _Scan:
    folder: Path
    out: Path
    produced: Produced
    sources: list[Any]
    key: str
    when: datetime
    role: str = ""
    baseline: _Scan | None = None


def link_offline(done: list[tuple[Path, Path, Produced, list[Path]]], cfg: Any, models: Any) -> list[str]:
    """Print (and return) one growth line per follow-up."""
    from hexnode.report.followup import BaselinePrediction, Side, build_followup

    fu = cfg.followup if cfg is not None else None
    window = rule.Window(fu.min_hours, fu.max_hours) if fu else rule.Window()
    definition = fu.definition if fu else "6ml-33pct"
    secret = secrets.token_hex(16)
    scans: list[_Scan] = []
    for folder, out, produced, paths in done:
        if not produced.analysed:
            continue
        sources = headers_of(paths)
        key = rule.header_patient_key(secret, sources[0]) if sources else None
        when = rule.acquired_at(sources[0]) if sources else None
        if key is None or when is None:
            print(f"{folder}: no Patient ID or scan time: not linked")
            continue
        scans.append(_Scan(folder, out, produced, sources, key, when))
    lines = []
    baselines: list[_Scan] = []
    for scan in sorted(scans, key=lambda x: x.when):
        mine = [b for b in baselines if b.key == scan.key]
        by_id = dict(enumerate(mine))
        link = rule.link(scan.when, [rule.Candidate(i, b.when) for i, b in by_id.items()], window)
        p = scan.produced.prediction
        assert p is not None
        if link.role == rule.BASELINE:
            if p.hemorrhage_detected:
                baselines.append(scan)
                print(f"{scan.folder}: baseline ({link.why})")
            else:
                print(f"{scan.folder}: no hemorrhage: not a baseline")
            continue
        assert link.baseline_id is not None
        base = by_id[link.baseline_id]
        if link.role == rule.REPEAT:
            print(f"{scan.folder}: {link.why}")
            continue
        bp = base.produced.prediction
        assert bp is not None and base.produced.key is not None
        g = rule.growth(bp.volume_ml, p.volume_ml if p.hemorrhage_detected else 0.0, definition)
        seg_b = next(ds for ds in base.produced.datasets if kind_of(ds) == "SEG")
        seg_f = next(ds for ds in scan.produced.datasets if kind_of(ds) == "SEG")
        hours = float(link.hours or 0.0)
        objects = build_followup(
            scan.sources, Side(base.when, bp.volume_ml, seg_b, base.sources, base.produced.key),
            Side(scan.when, g.followup_ml, seg_f, scan.sources, scan.produced.key), g, hours,
            BaselinePrediction(bp.probability, bp.threshold, bp.high_risk, bp.model.version), p.model)
        for ds in objects:
            path = scan.out / f"followup-{kind_of(ds)}.dcm"
            path.write_bytes(encode(ds))
        line = g.line(hours)
        print(f"{scan.folder}: follow-up of {base.folder}")
        print(line)
        lines.append(line)
    return lines
