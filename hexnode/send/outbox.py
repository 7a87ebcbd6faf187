"""Outbox state changes: claim due deliveries, record success, back off, give up, re-queue.

Rows are created by the worker (``hexnode.store.queue.add_result``: one per result object and
destination). Life of a row::

    pending ──claim──▶ sending ──ok──▶ delivered
       ▲                  │
       └──── back-off ────┤ (error, younger than max age: next_attempt_at = now + backoff)
                          └──▶ failed (error, older than max age; reason in last_error)
    failed ──resend──▶ pending (the age clock restarts: queued_at = now)

A row left ``sending`` by a sender that died is claimable again once its lease expires; the
object is then sent again with the same SOP Instance UID, which a PACS stores once.
Objects stay in the spool until delivery is confirmed (``hexnode purge`` only deletes series
whose every outbox row is delivered).

Back-off: ``backoff_initial_seconds * 2**(attempts-1)``, capped at ``backoff_max_seconds``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from hexnode.config import SendConfig
from hexnode.store.db import Outbox, Result, Series, utcnow
from hexnode.store.queue import owner_is_dead, transition


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
    return float(min(cfg.backoff_max_seconds, cfg.backoff_initial_seconds * 2 ** max(0, attempts - 1)))


def reclaim_stale(s: Session, now: datetime) -> int:
    """`sending` rows whose lease expired or whose sender died on this host → pending, due now."""
    q = select(Outbox).where(Outbox.state == "sending")
    if s.get_bind().dialect.name == "postgresql":
        q = q.with_for_update(skip_locked=True)
    n = 0
    for row in s.execute(q).scalars():
        expired = row.lease_until is not None and row.lease_until < now
        if not expired and not owner_is_dead(row.lease_owner):
            continue
        transition(s, row, "pending", f"lease of {row.lease_owner} expired" if expired else
                   f"sender {row.lease_owner} died")
        row.lease_owner = None
        row.lease_until = None
        row.next_attempt_at = now
        n += 1
    return n


def claim_due(
    s: Session, owner: str, *, lease_seconds: float, limit: int = 50, now: datetime | None = None
) -> list[Due]:
    now = now or utcnow()
    reclaim_stale(s, now)
    q = (
        select(Outbox, Result)
        .join(Result, Result.id == Outbox.result_id)
        .where(Outbox.state == "pending", Outbox.next_attempt_at <= now)
        .order_by(Outbox.next_attempt_at, Outbox.id)
        .limit(limit)
    )
    if s.get_bind().dialect.name == "postgresql":
        q = q.with_for_update(of=Outbox, skip_locked=True)
    out = []
    for row, result in s.execute(q).all():
        row.attempts += 1
        row.lease_owner = owner
        row.lease_until = now + timedelta(seconds=lease_seconds)
        if row.queued_at is None:
            row.queued_at = row.created_at
        transition(s, row, "sending", f"attempt {row.attempts} by {owner}")
        out.append(Due(row.id, row.destination, row.attempts, result.id, result.kind,
                       result.sop_instance_uid, result.path, result.series_id))
    return out


def _own(s: Session, outbox_id: int, owner: str) -> Outbox | None:
    row = s.get(Outbox, outbox_id)
    if row is None or row.state != "sending" or row.lease_owner != owner:
        return None  # reclaimed meanwhile: the other sender records the outcome
    return row


def mark_delivered(s: Session, outbox_id: int, owner: str, detail: str | None = None) -> bool:
    row = _own(s, outbox_id, owner)
    if row is None:
        return False
    row.delivered_at = utcnow()
    row.lease_owner = None
    row.lease_until = None
    row.last_error = None
    transition(s, row, "delivered", detail)
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
    row = _own(s, outbox_id, owner)
    if row is None:
        return None
    now = now or utcnow()
    row.last_error = error[:2000]
    row.lease_owner = None
    row.lease_until = None
    started = row.queued_at or row.created_at
    delay = backoff_seconds(row.attempts, cfg)
    age = (now - started).total_seconds()
    if age + delay > cfg.max_age_seconds:
        reason = f"gave up after {row.attempts} attempts over {age:.0f} s: {error}"
        row.last_error = reason[:2000]
        transition(s, row, "failed", reason)
        return "failed"
    row.next_attempt_at = now + timedelta(seconds=delay)
    transition(s, row, "pending", f"retry in {delay:.1f} s: {error}")
    return "pending"


def requeue(s: Session, ids: list[int] | None = None, *, all_failed: bool = False) -> list[int]:
    """`hexnode resend`: failed rows back to pending, due now, with a fresh maximum age."""
    q = select(Outbox).where(Outbox.state == "failed")
    if not all_failed:
        q = q.where(Outbox.id.in_(ids or []))
    now = utcnow()
    done = []
    for row in s.execute(q).scalars():
        row.next_attempt_at = now
        row.queued_at = now
        row.attempts = 0
        transition(s, row, "pending", "resend requested")
        done.append(row.id)
    return done
