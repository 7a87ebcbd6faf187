"""The notifications table's life: enqueue (idempotent, corrections), claim, delivered, back-off, resend.

Life of a row (the outbox's, plus ``superseded``)::

    pending ──claim──▶ sending ──ok──▶ delivered
       ▲  │              │
       │  │              ├── error, younger than [notify] max_age_seconds: back-off ──▶ pending
       │  │              └── error, older: failed (reason in last_error) ──resend──▶ pending
       │  └── a newer result for the study came first ──▶ superseded (never sent)
       └── sending left by a dead sender (lease expired, or its pid gone on this host)

Every state change writes an ``events`` row (entity ``notification``) in the same transaction.
The lease and back-off steps are hexnode.store.lease's, shared with the outbox.
A sender killed after the receiver took a message but before the row says ``delivered`` sends it
once more on restart, with the same message id (MSH-10, Message-ID, Idempotency-Key) so that a
receiver that keeps ids drops it; a kill at any earlier moment sends it exactly once.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import exists, select
from sqlalchemy.orm import Session

from hexnode.config import NotificationTarget, NotifyConfig
from hexnode.notify.message import Finding
from hexnode.store import lease
from hexnode.store.db import Event, Job, Notification, utcnow

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
    lease.reclaim(s, Notification, now, transition, died="lease of {owner} ended: it died")
    out = []
    # a held job's alerts wait with its results (hexnode.route.hold): never an alarm the PACS cannot show
    held = exists().where(Job.series_id == Notification.series_id, Job.revision == Notification.revision,
                          Job.held.is_(True))
    q = lease.due(Notification, now, limit).where(~held)
    for row in s.execute(lease.skip_locked(s, q, Notification)).scalars():
        lease.claim(s, row, owner, lease_seconds, now, transition)
        out.append(Due(row.id, row.key, row.target, row.trigger, row.correction, dict(row.payload), row.series_id,
                       row.attempts, row.created_at))
    return out


def mark_delivered(s: Session, notification_id: int, owner: str, detail: str) -> bool:
    row = lease.own(s, Notification, notification_id, owner)
    if row is None:
        return False
    lease.delivered(s, row, detail[:500], transition)
    return True


def backoff_seconds(attempts: int, cfg: NotifyConfig) -> float:
    return lease.backoff_seconds(attempts, cfg)


def mark_failed_attempt(s: Session, notification_id: int, owner: str, error: str, cfg: NotifyConfig,
                        now: datetime | None = None) -> str | None:
    """Back off, or give up past `max_age_seconds`; returns the new state (None: not ours any more)."""
    row = lease.own(s, Notification, notification_id, owner)
    if row is None:
        return None
    return lease.failed_attempt(s, row, error, cfg, now or utcnow(), transition)


def requeue(s: Session, ids: list[int] | None = None, *, all_failed: bool = False) -> list[int]:
    """`hexnode resend`: failed notifications back to pending, due now, with a fresh maximum age."""
    return lease.requeue(s, Notification, ids, all_failed, transition)
