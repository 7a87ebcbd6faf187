"""Leased work rows: the claim / release / back-off steps that jobs, outbox rows and notifications share.

The columns are the declarative mixins in ``hexnode.store.db``: ``Leased`` (attempts,
lease_owner, lease_until: jobs, outbox, notifications) and ``Delivery`` (Leased plus the retry
columns of a row delivered to a peer: state, next_attempt_at, created_at, last_error,
delivered_at: outbox, notifications). Each table keeps its own state machine: the functions here
take its ``transition`` (which checks the move and writes the ``events`` row).

Life of a delivery row (outbox, notifications; notifications also have ``superseded``)::

    pending ──claim──▶ sending ──ok──▶ delivered
       ▲                  │
       ├──── back-off ────┤ (error, younger than max age: next_attempt_at = now + backoff)
       │                  └──▶ failed (error, older than max age; reason in last_error) ──requeue──▶ pending
       └── sending left by a dead sender (lease expired, or its pid gone on this host)

Back-off: ``backoff_initial_seconds * 2**(attempts-1)``, capped at ``backoff_max_seconds``; a row
gives up when its age (from ``queued_at``, else ``created_at``) plus the next delay passes
``max_age_seconds``.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, Protocol, TypeVar

from sqlalchemy import Select, select
from sqlalchemy.orm import Session

from hexnode.store.db import Leased, Notification, Outbox, utcnow

Row = TypeVar("Row", Outbox, Notification)
# a table's transition(s, row, to_state, detail): checks the move, writes the events row
Transition = Callable[[Session, Any, str, str | None], object]
ERROR_CHARS = 2000  # last_error and an event's error text are cut here


class RetryPolicy(Protocol):
    """[send] and [notify] both have these."""

    backoff_initial_seconds: float
    backoff_max_seconds: float
    max_age_seconds: float


def owner_is_dead(owner: str | None) -> bool:
    """True when `owner` ("[name@]host:pid") is a process on this host that no longer exists.

    Lets a restarted worker or sender take back what its killed predecessor held at once instead
    of waiting for the lease to expire. Owners on other hosts are never judged (lease only).
    """
    if not owner or ":" not in owner:
        return False
    host, _, pid_text = owner.rpartition(":")
    host = host.rpartition("@")[2]
    if host != socket.gethostname() or not pid_text.isdigit():
        return False
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def stale(row: Leased, now: datetime) -> str | None:
    """Why a held row may be taken back: "expired" (its lease), "died" (its owner, on this host), or None."""
    if row.lease_until is not None and row.lease_until < now:
        return "expired"
    return "died" if owner_is_dead(row.lease_owner) else None


def take(row: Leased, owner: str, lease_seconds: float, now: datetime) -> None:
    """One more attempt, held by `owner` until now + lease_seconds."""
    row.attempts += 1
    row.lease_owner = owner
    row.lease_until = now + timedelta(seconds=lease_seconds)


def release(row: Leased) -> None:
    row.lease_owner = None
    row.lease_until = None


def skip_locked(s: Session, q: Select[Any], of: type[Any]) -> Select[Any]:
    """PostgreSQL: rows another claimer holds are skipped; SQLite: BEGIN IMMEDIATE has one writer anyway."""
    if s.get_bind().dialect.name == "postgresql":
        return q.with_for_update(of=of, skip_locked=True)
    return q


def backoff_seconds(attempts: int, policy: RetryPolicy) -> float:
    return float(min(policy.backoff_max_seconds, policy.backoff_initial_seconds * 2 ** max(0, attempts - 1)))


def reclaim(s: Session, model: type[Row], now: datetime, transition: Transition, *, died: str) -> int:
    """`sending` rows whose lease expired or whose sender died → pending, due now.

    `died` is the event text for a dead sender ("{owner}" is replaced)."""
    n = 0
    for row in s.execute(skip_locked(s, select(model).where(model.state == "sending"), model)).scalars():
        why = stale(row, now)
        if why is None:
            continue
        transition(s, row, "pending", f"lease of {row.lease_owner} expired" if why == "expired"
                   else died.format(owner=row.lease_owner))
        release(row)
        row.next_attempt_at = now
        n += 1
    return n


def due(model: type[Row], now: datetime, limit: int) -> Select[Any]:
    """Pending rows whose next attempt is due, oldest due first."""
    return (select(model).where(model.state == "pending", model.next_attempt_at <= now)
            .order_by(model.next_attempt_at, model.id).limit(limit))


def claim(s: Session, row: Row, owner: str, lease_seconds: float, now: datetime, transition: Transition) -> None:
    take(row, owner, lease_seconds, now)
    transition(s, row, "sending", f"attempt {row.attempts} by {owner}")


def own(s: Session, model: type[Row], row_id: int, owner: str) -> Row | None:
    """The row if `owner` still holds it; None when it was reclaimed meanwhile (the other sender
    records the outcome)."""
    row = s.get(model, row_id)
    if row is None or row.state != "sending" or row.lease_owner != owner:
        return None
    return row


def delivered(s: Session, row: Row, detail: str | None, transition: Transition) -> None:
    row.delivered_at = utcnow()
    release(row)
    row.last_error = None
    transition(s, row, "delivered", detail)


def failed_attempt(s: Session, row: Row, error: str, policy: RetryPolicy, now: datetime,
                   transition: Transition) -> str:
    """Back off (→ pending, due after the delay), or give up (→ failed) past the maximum age."""
    release(row)
    started = row.queued_at or row.created_at
    delay = backoff_seconds(row.attempts, policy)
    age = (now - started).total_seconds()
    if age + delay > policy.max_age_seconds:
        row.last_error = f"gave up after {row.attempts} attempts over {age:.0f} s: {error}"[:ERROR_CHARS]
        transition(s, row, "failed", row.last_error)
        return "failed"
    row.last_error = error[:ERROR_CHARS]
    row.next_attempt_at = now + timedelta(seconds=delay)
    transition(s, row, "pending", f"retry in {delay:.1f} s: {error}"[:ERROR_CHARS])
    return "pending"


def requeue(s: Session, model: type[Row], ids: list[int] | None, all_failed: bool,
            transition: Transition) -> list[int]:
    """`hexnode resend`: failed rows back to pending, due now, with a fresh maximum age."""
    q = select(model).where(model.state == "failed")
    if not all_failed:
        q = q.where(model.id.in_(ids or []))
    now = utcnow()
    done = []
    for row in s.execute(q.order_by(model.id)).scalars():
        row.next_attempt_at = row.queued_at = now
        row.attempts = 0
        transition(s, row, "pending", "resend requested")
        done.append(row.id)
    return done
