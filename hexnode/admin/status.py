"""`hexnode status`: what the node is doing, from the database alone (no patient identifiers).

Series, jobs and deliveries by state, queue depths, the last errors (jobs that failed or are
retrying, deliveries that failed for good — re-send them with ``hexnode resend``), rejected
series with their reasons, quarantined instances, and per-stage median times of the last
finished jobs. Series are named by a short hash of their UID (``hexnode series HASH`` shows one).
``--json`` prints one JSON object. It reads an existing database only: where the settings point at
none, it says so and exits 2 instead of creating one.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from datetime import datetime
from typing import Any

from sqlalchemy import func, select

from hexnode import health
from hexnode.config import Config, load_config
from hexnode.store.db import Event, Job, Outbox, Result, Series, Store, open_existing
from hexnode.store.queue import counts_by_state
from hexnode.store.spool import uid_hash


def _iso(t: datetime | None) -> str | None:
    return t.isoformat(timespec="seconds") + "Z" if t else None


def collect(store: Store, *, recent: int = 200, errors: int = 10, cfg: Config | None = None) -> dict[str, Any]:
    """Everything below, plus hexnode/health.py's sections (stage heartbeats, queue ages, destinations,
    recent series; the spool's disk and configured destinations with `cfg`) and what needs attention."""
    with store.transaction() as s:
        monitored = health.sections(s, cfg)
        series_states = counts_by_state(s, Series)
        job_states = counts_by_state(s, Job)
        outbox_states = counts_by_state(s, Outbox)
        uid_of = dict(s.execute(select(Series.id, Series.series_uid)).all())

        def name(series_id: int | None) -> str:
            return uid_hash(uid_of[series_id]) if series_id in uid_of else "?"

        job_errors = [
            {"job": j.id, "series": name(j.series_id), "state": j.state, "attempts": j.attempts,
             "error": j.error, "at": _iso(j.finished_at or j.started_at)}
            for j in s.execute(
                select(Job).where(Job.error.is_not(None)).order_by(Job.id.desc()).limit(errors)
            ).scalars()
        ]
        failed_deliveries = [
            {"id": o.id, "destination": o.destination, "kind": r.kind, "series": name(r.series_id),
             "attempts": o.attempts, "error": o.last_error, "since": _iso(o.queued_at or o.created_at)}
            for o, r in s.execute(
                select(Outbox, Result).join(Result, Result.id == Outbox.result_id)
                .where(Outbox.state == "failed").order_by(Outbox.id.desc()).limit(errors)
            ).all()
        ]
        retrying = [
            {"id": o.id, "destination": o.destination, "attempts": o.attempts, "error": o.last_error,
             "next_attempt": _iso(o.next_attempt_at)}
            for o in s.execute(
                select(Outbox).where(Outbox.state == "pending", Outbox.attempts > 0)
                .order_by(Outbox.id.desc()).limit(errors)
            ).scalars()
        ]
        rejected = [
            {"series": uid_hash(x.series_uid), "reason": x.reason, "at": _iso(x.state_at)}
            for x in s.execute(
                select(Series).where(Series.state.in_(("rejected", "failed")))
                .order_by(Series.state_at.desc()).limit(errors)
            ).scalars()
        ]
        stopped = [
            {"series": uid_hash(x.series_uid), "calling_ae": x.calling_ae, "note": x.aborted_note,
             "at": _iso(x.aborted_at), "state": x.state}
            for x in s.execute(
                select(Series).where(Series.aborted_at.is_not(None)).order_by(Series.aborted_at.desc()).limit(errors)
            ).scalars()
        ]
        notifications = _notifications(s, name, errors)
        quarantined = s.execute(
            select(func.count()).select_from(Event).where(Event.entity == "instance", Event.to_state == "rejected")
        ).scalar_one()
        done = s.execute(
            select(Job).where(Job.state == "done").order_by(Job.id.desc()).limit(recent)
        ).scalars().all()
        from hexnode.store.outcomes import status_section

        outcomes = status_section(s)
        from hexnode.store.corrections import status_section as corrections_section

        corrections = corrections_section(s, errors)
        delivered = s.execute(
            select(Outbox.delivered_at, Result.created_at).join(Result, Result.id == Outbox.result_id)
            .where(Outbox.state == "delivered").order_by(Outbox.id.desc()).limit(recent)
        ).all()

    stages: dict[str, list[float]] = defaultdict(list)
    for j in done:
        for k, v in (j.timings or {}).items():
            if isinstance(v, (int, float)):
                stages[k].append(float(v))
        if j.started_at and j.created_at:
            stages["queue_wait"].append((j.started_at - j.created_at).total_seconds())
        if j.finished_at and j.started_at:
            stages["job_total"].append((j.finished_at - j.started_at).total_seconds())
    for delivered_at, created_at in delivered:
        if delivered_at and created_at:
            stages["delivery"].append((delivered_at - created_at).total_seconds())
    medians = {k: round(statistics.median(v), 3) for k, v in sorted(stages.items()) if v}

    st = {
        "series": series_states,
        "jobs": job_states,
        "outbox": outbox_states,
        "queue_depth": {
            "jobs": job_states.get("queued", 0) + job_states.get("running", 0),
            "outbox": outbox_states.get("pending", 0) + outbox_states.get("sending", 0),
        },
        "median_seconds": medians,
        "median_over_jobs": len(done),
        "job_errors": job_errors,
        "failed_deliveries": failed_deliveries,
        "retrying_deliveries": retrying,
        "rejected_series": rejected,
        "stopped_senders": stopped,
        "quarantined_instances": int(quarantined),
        "outcomes": outcomes,
        "corrections": corrections,
        "notifications": notifications,
        **monitored,
    }
    items = health.attention(st)
    st["overall"] = health.overall(items)
    st["attention"] = [a.as_dict() for a in items]
    return st


def _notifications(s: Any, name: Any, errors: int) -> dict[str, Any]:
    """Notifications (hexnode/notify) by state, those that failed for good and those being retried."""
    from hexnode.store.db import Notification

    def row(n: Notification) -> dict[str, Any]:
        return {"id": n.id, "target": n.target, "kind": n.kind, "trigger": n.trigger, "correction": n.correction,
                "series": name(n.series_id), "attempts": n.attempts, "error": n.last_error,
                "since": _iso(n.queued_at), "next_attempt": _iso(n.next_attempt_at)}

    states = dict(s.execute(select(Notification.state, func.count()).group_by(Notification.state)).all())
    failed = s.execute(select(Notification).where(Notification.state == "failed")
                       .order_by(Notification.id.desc()).limit(errors)).scalars()
    retrying = s.execute(select(Notification).where(Notification.state == "pending", Notification.attempts > 0)
                         .order_by(Notification.id.desc()).limit(errors)).scalars()
    return {"states": {k: int(v) for k, v in states.items()}, "failed": [row(n) for n in failed],
            "retrying": [row(n) for n in retrying]}


def render(st: dict[str, Any]) -> str:
    def states(d: dict[str, int]) -> str:
        return ", ".join(f"{k} {v}" for k, v in sorted(d.items())) or "none"

    lines = [f"overall:     {st['overall'].upper()}" if "overall" in st else "overall:     -"]
    lines += [f"  {a['level'].upper():<5} {a['what']}: {a['detail']}" for a in st.get("attention", [])]
    stages = st.get("stages") or {}
    if stages:
        lines.append("stages:      " + ", ".join(
            f"{k} " + ("never beat" if v["age_seconds"] is None else
                       f"on a job {v['busy_seconds']:.0f} s" if v["busy_seconds"] is not None else
                       f"beat {v['age_seconds']:.0f} s ago") for k, v in stages.items()))
    lines += [
        f"series:      {states(st['series'])}",
        f"jobs:        {states(st['jobs'])}",
        f"deliveries:  {states(st['outbox'])}",
        f"queue depth: {st['queue_depth']['jobs']} jobs, {st['queue_depth']['outbox']} deliveries",
    ]
    if st["median_seconds"]:
        lines.append(f"median seconds over the last {st['median_over_jobs']} jobs:")
        lines += [f"  {k:<16} {v:8.3f}" for k, v in st["median_seconds"].items()]
    if st["failed_deliveries"]:
        lines.append("FAILED deliveries (re-send with `hexnode resend ID...` or `--all-failed`):")
        lines += [f"  #{d['id']} {d['kind']} of series {d['series']} → {d['destination']}: {d['error']}"
                  for d in st["failed_deliveries"]]
    if st["retrying_deliveries"]:
        lines.append("deliveries being retried:")
        lines += [f"  #{d['id']} → {d['destination']} attempt {d['attempts']}, next {d['next_attempt']}: {d['error']}"
                  for d in st["retrying_deliveries"]]
    nt = st.get("notifications") or {}
    if nt.get("states"):
        lines.append(f"notifications: {states(nt['states'])}")
    if nt.get("failed"):
        lines.append("FAILED notifications (re-send with `hexnode resend --notification ID` or `--all-failed`):")
        lines += [f"  #{n['id']} {n['trigger']} of series {n['series']} → {n['target']} ({n['kind']}): {n['error']}"
                  for n in nt["failed"]]
    if nt.get("retrying"):
        lines.append("notifications being retried:")
        lines += [f"  #{n['id']} {n['trigger']} → {n['target']} attempt {n['attempts']}, next {n['next_attempt']}: "
                  f"{n['error']}" for n in nt["retrying"]]
    if st["job_errors"]:
        lines.append("last job errors:")
        lines += [f"  job {e['job']} series {e['series']} ({e['state']}, {e['attempts']} attempts): {e['error']}"
                  for e in st["job_errors"]]
    if st["rejected_series"]:
        lines.append("last rejected / failed series:")
        lines += [f"  {r['series']}: {r['reason']}" for r in st["rejected_series"]]
    if st.get("stopped_senders"):
        lines.append("series whose sender stopped part-way (analysed only if whole after [series] aborted_wait_seconds):")
        lines += [f"  {r['series']} from {r['calling_ae'] or 'unknown AE'}: {r['note']} ({r['state']})"
                  for r in st["stopped_senders"]]
    oc = st.get("outcomes") or {}
    if oc.get("pairs_recorded"):
        lines.append(f"follow-up outcome pairs: {oc['pairs_recorded']} (figures: hexnode outcomes)")
        lines += [f"  OUTCOMES DRIFT, model {v}: {'; '.join(d['reasons'])}" for v, d in oc["versions"].items() if d["drift"]]
    cs = st.get("corrections") or {}
    if cs.get("states"):
        lines.append(f"corrections (DICOM SEG from readers): {states(cs['states'])}")
        for c in cs.get("latest") or []:
            if c["state"] in ("stored", "superseded"):
                lines.append(f"  #{c['id']} series {c['series']} from {c['calling_ae'] or '?'} ({c['peer'] or '?'}), "
                             f"{c['state']}: Dice {c['dice']:.3f}, volume {c['volume_change_ml']:+.2f} ml "
                             f"({c['hexnode_ml']:.2f} → {c['reference_ml']:.2f})")
            elif c["state"] == "aside":
                lines.append(f"  #{c['id']} from {c['calling_ae'] or '?'} kept aside (spool/corrections/aside): "
                             f"{c['reason']}")
    if st["quarantined_instances"]:
        lines.append(f"quarantined instances (unreadable header, see spool/quarantine): {st['quarantined_instances']}")
    return "\n".join(lines)


def run_status(args: argparse.Namespace) -> int:
    cfg = load_config(getattr(args, "config", None))
    store = open_existing(cfg.database_url)  # never a new, empty database that says "series: none"
    try:
        st = collect(store, cfg=cfg)
    finally:
        store.dispose()
    print(json.dumps(st, indent=2) if getattr(args, "json", False) else render(st))
    return 0
