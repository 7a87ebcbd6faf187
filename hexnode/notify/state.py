"""The notifications table's life: enqueue (idempotent, corrections), claim, delivered, back-off, resend.

Life of a row (the outbox's, plus ``superseded``)::

    pending ──claim──▶ sending ──ok──▶ delivered
       ▲  │              │
       │  │              ├── error, younger than [notify] max_age_seconds: back-off ──▶ pending
       │  │              └── error, older: failed (reason in last_error) ──resend──▶ pending
       │  └── a newer result for the study came first ──▶ superseded (never sent)
       └── sending left by a dead sender (lease expired, or its pid gone on this host)

Every state change writes an ``events`` row (entity ``notification``) in the same transaction.
A sender killed after the receiver took a message but before the row says ``delivered`` sends it
once more on restart, with the same message id (MSH-10, Message-ID, Idempotency-Key) so that a
receiver that keeps ids drops it; a kill at any earlier moment sends it exactly once.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from hexnode.config import NotificationTarget, NotifyConfig
from hexnode.notify.message import Finding
from hexnode.store.db import Event, Notification, utcnow
from hexnode.store.queue import owner_is_dead

TRANSITIONS: dict[str, set[str]] = {
    "pending": {"sending", "failed", "superseded"},
    "sending": {"delivered", "pending", "failed"},
    "failed": {"pending", "superseded"},
    "delivered": set(),
    "superseded": set(),
}


def transition(s: Session, row: Notification, to_state: str, detail: str | None = None) -> None:
    from_state = row.state
    if from_state == to_state:
        return
    if to_state not in TRANSITIONS[from_state]:
        raise ValueError(f"notification {row.id}: {from_state} → {to_state} is not allowed")
    row.state = to_state
    if row.id is None:
        s.flush()
    s.add(Event(entity="notification", entity_id=row.id, from_state=from_state, to_state=to_state,
                detail=detail, at=utcnow()))


def idempotency_key(trigger: str, subject: str, revision: int, target: str) -> str:
    return f"{trigger}|{subject}|r{revision}|{target}"


def add(s: Session, target: NotificationTarget, *, trigger: str, subject: str, revision: int, finding: Finding,
        series_id: int | None = None, study_id: int | None = None, retraction: bool = False,
        corrects: bool = True) -> Notification | None:
    """The row for (trigger, subject, revision, target), created once; None when nothing is to be sent.

    Earlier notifications of the same trigger to the same target for the same study decide what
    this one is: when one was delivered (or is being sent), this is a correction of it; rows not
    yet sent are superseded, so the team gets the newest result only. `retraction`: the new result
    is not an alarm (Low risk, not analysed): it is sent only to correct a delivered alarm.
    `corrects=False` (IT warnings, drift): each row stands alone."""
    key = idempotency_key(trigger, subject, revision, target.name)
    existing = s.execute(select(Notification).where(Notification.key == key)).scalar_one_or_none()
    if existing is not None:
        return existing
    earlier: list[Notification] = []
    if study_id is not None and corrects:
        earlier = list(s.execute(
            select(Notification).where(Notification.study_id == study_id, Notification.trigger == trigger,
                                       Notification.target == target.name).order_by(Notification.id)
        ).scalars())
    sent = [n for n in earlier if n.state in ("delivered", "sending")]
    if retraction and not (sent and bool(sent[-1].payload.get("positive"))):
        return None  # nothing delivered to take back (or the last word was already "no longer")
    for n in earlier:
        if n.state in ("pending", "failed"):
            transition(s, n, "superseded", f"superseded by revision {revision} of the study's result")
    now = utcnow()
    row = Notification(key=key, target=target.name, kind=target.kind, trigger=trigger, series_id=series_id,
                       study_id=study_id, revision=revision, correction=bool(sent), payload=finding.to_json(),
                       state="pending", attempts=0, next_attempt_at=now, created_at=now, queued_at=now)
    s.add(row)
    s.flush()
    s.add(Event(entity="notification", entity_id=row.id, from_state=None, to_state="pending",
                detail=f"{trigger} → {target.name}" + (" (correction)" if sent else ""), at=now))
    return row


@dataclass(frozen=True)
class Due:
    """A claimed notification (a snapshot, usable outside the claiming transaction)."""

    id: int
    key: str
    target: str
    trigger: str
    correction: bool
    payload: dict[str, object]
    series_id: int | None
    attempts: int
    created_at: datetime


def claim_due(s: Session, owner: str, *, lease_seconds: float, limit: int = 20,
              now: datetime | None = None) -> list[Due]:
    now = now or utcnow()
    q = select(Notification).where(Notification.state == "sending")
    if s.get_bind().dialect.name == "postgresql":
        q = q.with_for_update(skip_locked=True)
    for row in s.execute(q).scalars():
        expired = row.lease_until is not None and row.lease_until < now
        if expired or owner_is_dead(row.lease_owner):
            transition(s, row, "pending", f"lease of {row.lease_owner} " + ("expired" if expired else "ended: it died"))
            row.lease_owner, row.lease_until, row.next_attempt_at = None, None, now
    q = (select(Notification).where(Notification.state == "pending", Notification.next_attempt_at <= now)
         .order_by(Notification.next_attempt_at, Notification.id).limit(limit))
    if s.get_bind().dialect.name == "postgresql":
        q = q.with_for_update(skip_locked=True)
    out = []
    for row in s.execute(q).scalars():
        row.attempts += 1
        row.lease_owner = owner
        row.lease_until = now + timedelta(seconds=lease_seconds)
        transition(s, row, "sending", f"attempt {row.attempts} by {owner}")
        out.append(Due(row.id, row.key, row.target, row.trigger, row.correction, dict(row.payload), row.series_id,
                       row.attempts, row.created_at))
    return out


def _own(s: Session, notification_id: int, owner: str) -> Notification | None:
    row = s.get(Notification, notification_id)
    if row is None or row.state != "sending" or row.lease_owner != owner:
        return None  # reclaimed meanwhile: whoever holds it records the outcome
    return row


def mark_delivered(s: Session, notification_id: int, owner: str, detail: str) -> bool:
    row = _own(s, notification_id, owner)
    if row is None:
        return False
    row.delivered_at = utcnow()
    row.lease_owner = row.lease_until = None
    row.last_error = None
    transition(s, row, "delivered", detail[:500])
    return True


def backoff_seconds(attempts: int, cfg: NotifyConfig) -> float:
    return float(min(cfg.backoff_max_seconds, cfg.backoff_initial_seconds * 2 ** max(0, attempts - 1)))


def mark_failed_attempt(s: Session, notification_id: int, owner: str, error: str, cfg: NotifyConfig,
                        now: datetime | None = None) -> str | None:
    """Back off, or give up past `max_age_seconds`; returns the new state (None: not ours any more)."""
    row = _own(s, notification_id, owner)
    if row is None:
        return None
    now = now or utcnow()
    row.lease_owner = row.lease_until = None
    delay = backoff_seconds(row.attempts, cfg)
    age = (now - row.queued_at).total_seconds()
    if age + delay > cfg.max_age_seconds:
        row.last_error = f"gave up after {row.attempts} attempts over {age:.0f} s: {error}"[:2000]
        transition(s, row, "failed", row.last_error)
        return "failed"
    row.last_error = error[:2000]
    row.next_attempt_at = now + timedelta(seconds=delay)
    transition(s, row, "pending", f"retry in {delay:.1f} s: {error}"[:2000])
    return "pending"


def requeue(s: Session, ids: list[int] | None = None, *, all_failed: bool = False) -> list[int]:
    """`hexnode resend`: failed notifications back to pending, due now, with a fresh maximum age."""
    q = select(Notification).where(Notification.state == "failed")
    if not all_failed:
        q = q.where(Notification.id.in_(ids or []))
    now = utcnow()
    done = []
    for row in s.execute(q.order_by(Notification.id)).scalars():
        row.next_attempt_at = row.queued_at = now
        row.attempts = 0
        transition(s, row, "pending", "resend requested")
        done.append(row.id)
    return done
