"""The corrections readers sent back (hexnode/labels): what `hexnode status`, the status page and
GET /outcomes show of them. Rows are written by receive (filed) and the label step (taken)."""

from __future__ import annotations

import statistics
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from hexnode.store.db import Correction, Series
from hexnode.store.spool import uid_hash


def _iso(t: datetime | None) -> str | None:
    return t.isoformat(timespec="seconds") + "Z" if t else None


def status_section(s: Session, recent: int = 10) -> dict[str, Any]:
    """`collect()["corrections"]`: counts by state and the latest corrections with their figures."""
    states = {k: int(v) for k, v in s.execute(
        select(Correction.state, func.count()).group_by(Correction.state)).all()}
    rows = s.execute(select(Correction, Series.series_uid).outerjoin(Series, Series.id == Correction.series_id)
                     .order_by(Correction.id.desc()).limit(recent)).all()
    latest = [{
        "id": c.id, "state": c.state, "series": uid_hash(series_uid) if series_uid else None,
        "calling_ae": c.calling_ae, "peer": c.peer, "received": _iso(c.received_at), "reason": c.reason,
        "dice": c.dice, "hexnode_ml": c.hexnode_ml, "reference_ml": c.reference_ml,
        "volume_change_ml": c.volume_change_ml, "model_version": c.model_version,
    } for c, series_uid in rows]
    return {"states": states, "latest": latest}


def summary(s: Session) -> dict[str, Any]:
    """For GET /outcomes: the current reference of each series against hexnode's mask, per model version."""
    rows = list(s.execute(select(Correction).where(Correction.state == "stored")).scalars())
    by_version: dict[str, list[Correction]] = {}
    for c in rows:
        by_version.setdefault(c.model_version or "?", []).append(c)
    versions = []
    for version, cs in sorted(by_version.items()):
        dice = [c.dice for c in cs if c.dice is not None]
        change = [c.volume_change_ml for c in cs if c.volume_change_ml is not None]
        versions.append({
            "model_version": version, "series": len(cs),
            "dice_median": round(statistics.median(dice), 4) if dice else None,
            "dice_min": round(min(dice), 4) if dice else None,
            "volume_change_ml_median": round(statistics.median(change), 3) if change else None,
            "volume_change_ml_mean_abs": round(sum(abs(x) for x in change) / len(change), 3) if change else None,
        })
    counts = {k: int(v) for k, v in s.execute(select(Correction.state, func.count()).group_by(Correction.state)).all()}
    return {"stored": len(rows), "states": counts, "versions": versions,
            "rule": "each series' newest correction against hexnode's mask of it; Dice 1 when both are empty; "
                    "volume change = reference - hexnode (ml)"}
