"""Outbox state changes: claim due deliveries, record success, back off, give up, re-queue.

Rows are created by the worker (``hexnode.store.queue.add_result``: one per result object and
destination). Life of a row::

    pending ──claim──▶ sending ──ok──▶ delivered
       ▲                  │
       └──── back-off ────┤ (error, younger than max age: next_attempt_at = now + backoff)
                          └──▶ failed (error, older than max age; reason in last_error)
    failed ──resend──▶ pending (the age clock restarts: queued_at = now)
    pending ──a better series of the study replaced the held result──▶ superseded (never sent)

Rows of a held job (``jobs.held``: route chose the series before its study settled) are not
claimed until route releases the job.

A row left ``sending`` by a sender that died is claimable again once its lease expires; the
object is then sent again with the same SOP Instance UID, which a PACS stores once.
Objects stay in the spool until delivery is confirmed (``hexnode purge`` only deletes series
whose every outbox row is delivered).

Back-off: ``backoff_initial_seconds * 2**(attempts-1)``, capped at ``backoff_max_seconds``.
The lease and back-off steps are hexnode.store.lease's, shared with the notifications.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from hexnode.config import SendConfig
from hexnode.store import lease
from hexnode.store.db import Job, Outbox, Result, Series, utcnow
from hexnode.store.queue import transition


@dataclass(frozen=True)
class Due:
    """One delivery to attempt (a snapshot: safe to use outside the claiming transaction)."""

    outbox_id: int
    destination: str
    attempts: int
    result_id: int
    kind: str
    sop_instance_uid: str
    path: str  # relative to the spool
    series_id: int


def backoff_seconds(attempts: int, cfg: SendConfig) -> float:
    return lease.backoff_seconds(attempts, cfg)


def reclaim_stale(s: Session, now: datetime) -> int:
    """`sending` rows whose lease expired or whose sender died on this host → pending, due now."""
    return lease.reclaim(s, Outbox, now, transition, died="sender {owner} died")


def claim_due(
    s: Session, owner: str, *, lease_seconds: float, limit: int = 50, now: datetime | None = None
) -> list[Due]:
    now = now or utcnow()
    reclaim_stale(s, now)
    # a held job's results wait for its study to settle (hexnode.route.hold)
    q = (lease.due(Outbox, now, limit).add_columns(Result).join(Result, Result.id == Outbox.result_id)
         .join(Job, Job.id == Result.job_id).where(Job.held.is_(False)))
    out = []
    for row, result in s.execute(lease.skip_locked(s, q, Outbox)).all():
        if row.queued_at is None:
            row.queued_at = row.created_at
        lease.claim(s, row, owner, lease_seconds, now, transition)
        out.append(Due(row.id, row.destination, row.attempts, result.id, result.kind,
                       result.sop_instance_uid, result.path, result.series_id))
    return out


def mark_delivered(s: Session, outbox_id: int, owner: str, detail: str | None = None) -> bool:
    row = lease.own(s, Outbox, outbox_id, owner)
    if row is None:
        return False
    lease.delivered(s, row, detail, transition)
    result = s.get(Result, row.result_id)
    if result is not None:
        _maybe_series_delivered(s, result.series_id)
    return True


def _maybe_series_delivered(s: Session, series_id: int) -> None:
    series = s.get(Series, series_id)
    if series is None or series.state != "reported":
        return
    states = s.execute(
        select(Outbox.state).join(Result, Result.id == Outbox.result_id).where(Result.series_id == series_id)
    ).scalars().all()
    if states and all(st == "delivered" for st in states):
        transition(s, series, "delivered", f"{len(states)} objects delivered")


def mark_failed_attempt(
    s: Session, outbox_id: int, owner: str, error: str, cfg: SendConfig, now: datetime | None = None
) -> str | None:
    """Back off, or give up when the row is older than `max_age_seconds`. Returns the new state."""
    row = lease.own(s, Outbox, outbox_id, owner)
    if row is None:
        return None
    return lease.failed_attempt(s, row, error, cfg, now or utcnow(), transition)


def requeue(s: Session, ids: list[int] | None = None, *, all_failed: bool = False) -> list[int]:
    """`hexnode resend`: failed rows back to pending, due now, with a fresh maximum age."""
    return lease.requeue(s, Outbox, ids, all_failed, transition)
