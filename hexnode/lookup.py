"""`hexnode series ID`: one series as the node knows it, found by what an admin has in hand.

ID is any of: the 10-character hash the logs, `hexnode status` and notifications name a series
by (`series.uid_hash`); a study's hash (the logs' "study 2382d58a10"): its series; a Series or
Study Instance UID; an accession number (`series.accession_number`, from the indexed header). For
each series found: its UIDs, study and sender, state and reason, what was received (and where in
the spool), the jobs, the result objects with each delivery's state, notifications, and every
event (the audit trail) oldest first. Never a patient value: the database holds none. `--json`
prints the same as one JSON object (every event); the text shows the last `--events N` (30; 0: all).
Exit status 0 when something was found, 1 when nothing was.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from datetime import datetime
from typing import Any

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from hexnode.config import Config, load_config
from hexnode.runtime import one_line
from hexnode.store.db import (
    Correction,
    Event,
    Instance,
    Job,
    Notification,
    Outbox,
    Result,
    Series,
    Study,
    open_existing,
)
from hexnode.store.spool import uid_hash

HASH = re.compile(r"^[0-9a-f]{10}$")
UID = re.compile(r"^[0-9]+(\.[0-9]+)+$")


def _iso(t: datetime | None) -> str | None:
    return t.isoformat(timespec="seconds") + "Z" if t else None


def find(s: Session, ident: str) -> list[tuple[Series, str]]:
    """Series matching `ident`, each with how it was found."""
    ident = ident.strip()
    found: dict[int, tuple[Series, str]] = {}

    def add(rows: Any, how: str) -> None:
        for row in rows:
            found.setdefault(row.id, (row, how))

    if HASH.match(ident):
        add(s.execute(select(Series).where(Series.uid_hash == ident)).scalars(), "series hash")
        add(s.execute(select(Series).join(Study, Study.id == Series.study_id)
                      .where(Study.uid_hash == ident)).scalars(), "study hash")
        if not found:  # rows a process older than the uid_hash column inserted during an upgrade
            for row in s.execute(select(Series).where(Series.uid_hash.is_(None))).scalars():
                if uid_hash(row.series_uid) == ident:
                    add([row], "series hash")
    if UID.match(ident) or not HASH.match(ident):
        add(s.execute(select(Series).where(Series.series_uid == ident)).scalars(), "Series Instance UID")
        add(s.execute(select(Series).join(Study, Study.id == Series.study_id)
                      .where(Study.study_uid == ident)).scalars(), "Study Instance UID")
    add(s.execute(select(Series).where(Series.accession_number == ident)).scalars(), "accession number")
    return sorted(found.values(), key=lambda x: x[0].id)


def _header_text(header: dict[str, Any] | None, tag: str) -> str | None:
    try:
        value = header[tag]["Value"][0] if header else None  # type: ignore[index]
    except (KeyError, IndexError, TypeError):
        return None
    return one_line(str(value)) if value is not None else None


def describe(s: Session, series: Series, how: str, cfg: Config, *, instances: bool = False) -> dict[str, Any]:
    study = s.get(Study, series.study_id)
    inst = s.execute(select(func.count(), func.sum(Instance.size_bytes), func.min(Instance.received_at),
                            func.max(Instance.received_at), func.min(Instance.path))
                     .where(Instance.series_id == series.id)).one()
    jobs = s.execute(select(Job).where(Job.series_id == series.id).order_by(Job.id)).scalars().all()
    results = s.execute(select(Result).where(Result.series_id == series.id).order_by(Result.id)).scalars().all()
    outbox = s.execute(select(Outbox).where(Outbox.result_id.in_([r.id for r in results]))
                       .order_by(Outbox.id)).scalars().all() if results else []
    notes = s.execute(select(Notification).where(Notification.series_id == series.id)
                      .order_by(Notification.id)).scalars().all()
    corrections = s.execute(select(Correction).where(Correction.series_id == series.id)
                            .order_by(Correction.id)).scalars().all()
    keys = [("series", [series.id]), ("job", [j.id for j in jobs]), ("outbox", [o.id for o in outbox]),
            ("notification", [n.id for n in notes]), ("correction", [c.id for c in corrections])]
    events = s.execute(select(Event).where(or_(*[(Event.entity == e) & Event.entity_id.in_(ids)
                                                 for e, ids in keys if ids]))
                       .order_by(Event.at, Event.id)).scalars().all()
    by_result: dict[int, list[Outbox]] = {}
    for o in outbox:
        by_result.setdefault(o.result_id, []).append(o)
    spool = cfg.spool_path
    out: dict[str, Any] = {
        "series": series.uid_hash or uid_hash(series.series_uid),
        "found_by": how,
        "series_uid": series.series_uid,
        "study": (study.uid_hash or uid_hash(study.study_uid)) if study else None,
        "study_uid": study.study_uid if study else None,
        "accession_number": one_line(series.accession_number) if series.accession_number else None,
        "study_answer": study.answer_kind if study else None,
        "calling_ae": one_line(series.calling_ae or ""),
        "modality": series.modality,
        "series_number": series.series_number,
        "series_description": _header_text(series.header, "0008103E"),
        "state": series.state,
        "state_at": _iso(series.state_at),
        "reason": one_line(series.reason) if series.reason else None,
        "revision": series.revision,
        "selected": series.selected,
        "sender_stopped": one_line(series.aborted_note) if series.aborted_note else None,
        "instances": {"count": int(inst[0]), "bytes": int(inst[1] or 0), "first_at": _iso(inst[2]),
                      "last_at": _iso(inst[3]),
                      "folder": str(spool / inst[4]).rsplit("/", 1)[0] if inst[4] else None},
        "jobs": [{"id": j.id, "revision": j.revision, "state": j.state, "held": bool(j.held), "attempts": j.attempts,
                  "seconds": round((j.finished_at - j.started_at).total_seconds(), 1)
                  if j.finished_at and j.started_at else None,
                  "error": one_line(j.error) if j.error else None} for j in jobs],
        "results": [{"kind": r.kind, "sop_instance_uid": r.sop_instance_uid, "file": str(spool / r.path),
                     "on_disk": (spool / r.path).is_file(),
                     "deliveries": [{"id": o.id, "destination": o.destination, "state": o.state,
                                     "attempts": o.attempts, "at": _iso(o.delivered_at),
                                     "error": one_line(o.last_error) if o.last_error else None}
                                    for o in by_result.get(r.id, [])]} for r in results],
        "notifications": [{"id": n.id, "trigger": n.trigger, "target": n.target, "state": n.state,
                           "attempts": n.attempts, "error": one_line(n.last_error) if n.last_error else None}
                          for n in notes],
        "corrections": [{"id": c.id, "state": c.state, "calling_ae": c.calling_ae, "peer": c.peer,
                         "received_at": _iso(c.received_at), "dice": c.dice, "hexnode_ml": c.hexnode_ml,
                         "reference_ml": c.reference_ml, "volume_change_ml": c.volume_change_ml,
                         "reason": one_line(c.reason) if c.reason else None, "file": str(spool / c.path)}
                        for c in corrections],
        "events": [{"at": _iso(e.at), "entity": e.entity, "id": e.entity_id, "from": e.from_state,
                    "to": e.to_state, "detail": one_line(e.detail) if e.detail else None} for e in events],
    }
    if instances:
        out["instance_list"] = [
            {"sop_instance_uid": i.sop_instance_uid, "number": i.instance_number, "position": i.position,
             "file": str(spool / i.path), "on_disk": (spool / i.path).is_file()}
            for i in s.execute(select(Instance).where(Instance.series_id == series.id)
                               .order_by(Instance.instance_number, Instance.id)).scalars()]
    return out


def render(d: dict[str, Any], events: int = 30) -> str:
    inst = d["instances"]
    chosen = {True: "yes", False: "no", None: "not decided yet"}[d["selected"]]
    desc = f", {json.dumps(d['series_description'], ensure_ascii=False)}" if d["series_description"] else ""
    lines = [
        f"series {d['series']} (found by {d['found_by']})",
        f"  Series Instance UID  {d['series_uid']}",
        f"  study                {d['study']} (Study Instance UID {d['study_uid']})"
        + (f", accession {d['accession_number']}" if d["accession_number"] else "")
        + (f"; the study's answer: {d['study_answer']}" if d["study_answer"] else ""),
        f"  sender               {d['calling_ae'] or 'unknown AE'}; series #{d['series_number']} "
        f"{d['modality'] or '?'}{desc}",
        f"  state                {d['state']} since {d['state_at']}; revision {d['revision']}; "
        f"chosen for analysis: {chosen}",
    ]
    if d["reason"]:
        lines.append(f"  reason               {d['reason']}")
    if d["sender_stopped"]:
        lines.append(f"  sender stopped       {d['sender_stopped']}")
    lines.append(f"  instances            {inst['count']} ({inst['bytes'] / 1e6:.1f} MB), received {inst['first_at']} "
                 f"… {inst['last_at']}; in {inst['folder']}")
    for i, j in enumerate(d["jobs"]):
        took = f", {j['seconds']} s" if j["seconds"] is not None else ""
        held = " (chosen before the study settled: results held for it)" if j["held"] else ""
        lines.append(f"  {'jobs' if i == 0 else '':<20} #{j['id']} revision {j['revision']}: {j['state']}{held}, "
                     f"{j['attempts']} attempt(s){took}" + (f"; error: {j['error']}" if j["error"] else ""))
    for i, r in enumerate(d["results"]):
        sent = "; ".join(f"→ {o['destination']} {o['state']}" + (f" {o['at']}" if o["at"] else "")
                         + f" ({o['attempts']} attempt(s))" + (f": {o['error']}" if o["error"] and o["state"] != "delivered"
                                                                else "")
                         for o in r["deliveries"]) or "no delivery"
        missing = "" if r["on_disk"] else " (file no longer in the spool)"
        lines.append(f"  {'results' if i == 0 else '':<20} {r['kind']:<3} {r['sop_instance_uid']}{missing} {sent}")
    for i, n in enumerate(d["notifications"]):
        lines.append(f"  {'notifications' if i == 0 else '':<20} #{n['id']} {n['trigger']} → {n['target']}: {n['state']}"
                     + (f" ({n['error']})" if n["error"] and n["state"] != "delivered" else ""))
    for i, c in enumerate(d.get("corrections", [])):
        what = (f"Dice {c['dice']:.3f}, {c['hexnode_ml']:.2f} → {c['reference_ml']:.2f} ml" if c["dice"] is not None
                else (c["reason"] or ""))
        lines.append(f"  {'corrections' if i == 0 else '':<20} #{c['id']} from {c['calling_ae'] or '?'} "
                     f"({c['peer'] or '?'}) {c['received_at']}: {c['state']}" + (f", {what}" if what else ""))
    for item in d.get("instance_list", []):
        lines.append(f"    instance {item['number']} {item['sop_instance_uid']} {item['file']}"
                     + ("" if item["on_disk"] else " (not on disk)"))
    shown = d["events"][-events:] if events > 0 else d["events"]
    if len(shown) < len(d["events"]):
        lines.append(f"  events (last {len(shown)} of {len(d['events'])}; --events 0 for all):")
    else:
        lines.append("  events (oldest first):")
    for e in shown:
        lines.append(f"    {e['at']} {e['entity']} {e['id']}: {e['from'] or '-'} → {e['to']}"
                     + (f": {e['detail']}" if e["detail"] else ""))
    return "\n".join(lines)


def run_series(args: argparse.Namespace) -> int:
    cfg = load_config(getattr(args, "config", None))
    store = open_existing(cfg.database_url)
    try:
        with store.transaction() as s:
            found = find(s, args.id)
            described = [describe(s, row, how, cfg, instances=getattr(args, "instances", False)) for row, how in found]
    finally:
        store.dispose()
    if not described:
        print(f"hexnode series: nothing matches {one_line(args.id)!r} (a series or study hash, a Series or Study "
              "Instance UID, or an accession number)", file=sys.stderr)
        return 1
    if getattr(args, "json", False):
        print(json.dumps(described if len(described) > 1 else described[0], indent=2, ensure_ascii=False))
    else:
        print("\n\n".join(render(d, getattr(args, "events", 30)) for d in described))
    return 0
