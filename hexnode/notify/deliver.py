"""Deliver due notifications, in the send stage beside the DICOM outbox (hexnode/send/sender.py).

Each claimed row is rendered (`Message`), sent by its target's kind (webhook, email, hl7) and
recorded at once in its own transaction, so a sender killed between two messages leaves the first
delivered and the second to be sent once on restart. Patient fields a target turned on are read
from the series' first instance in the spool here, at send time: they are never stored.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy import select

from hexnode.config import Config, NotificationTarget
from hexnode.notify import state
from hexnode.notify.message import Finding, Message, message_id, viewer_link
from hexnode.notify.webhook import Sent
from hexnode.store.db import Instance, Store
from hexnode.store.spool import Spool

log = logging.getLogger(__name__)

Transport = Callable[[NotificationTarget, Message], Sent]


def _send(target: NotificationTarget, msg: Message) -> Sent:
    if target.kind == "webhook":
        from hexnode.notify.webhook import send_webhook

        return send_webhook(target, msg)
    if target.kind == "email":
        from hexnode.notify.mail import send_email

        return send_email(target, msg)
    from hexnode.notify.hl7v2 import send_hl7

    res = send_hl7(target, msg)
    return Sent(res.ok, res.detail)


@dataclass
class Notifier:
    cfg: Config
    store: Store
    spool: Spool
    owner: str
    transport: Transport = _send
    targets: dict[str, NotificationTarget] = field(init=False)

    def __post_init__(self) -> None:
        self.targets = {t.name: t for t in self.cfg.notifications}

    @property
    def lease_seconds(self) -> float:
        longest = max((t.timeout_seconds for t in self.cfg.notifications), default=10.0)
        return max(60.0, 4 * longest)

    def run_once(self, limit: int = 20) -> int:
        """Attempt every due notification (up to `limit`); returns how many were attempted."""
        if not self.targets:
            return 0  # nothing configured: no rows are created either (triggers.enqueue)
        with self.store.transaction() as s:
            due = state.claim_due(s, self.owner, lease_seconds=self.lease_seconds, limit=limit)
        for d in due:
            self._deliver(d)
        return len(due)

    def _deliver(self, d: state.Due) -> None:
        target = self.targets.get(d.target)
        if target is None:
            res = Sent(False, f"notification target {d.target!r} is not configured")
        else:
            try:
                res = self.transport(target, self._message(d, target))
            except Exception as exc:  # a transport bug must not wedge the queue: back off instead
                log.exception("notification %d → %s failed", d.id, d.target)
                res = Sent(False, f"{type(exc).__name__}: {exc}")
        with self.store.transaction() as s:
            if res.ok:
                state.mark_delivered(s, d.id, self.owner, res.detail)
                log.info("notification %d (%s%s) → %s delivered: %s", d.id, d.trigger,
                         ", correction" if d.correction else "", d.target, res.detail)
                return
            new = state.mark_failed_attempt(s, d.id, self.owner, res.detail, self.cfg.notify)
        if new == "failed":
            log.error("notification %d (%s) → %s failed for good: %s", d.id, d.trigger, d.target, res.detail)
        else:
            log.warning("notification %d (%s) → %s: attempt %d failed, will retry: %s", d.id, d.trigger,
                        d.target, d.attempts, res.detail)

    def _message(self, d: state.Due, target: NotificationTarget) -> Message:
        finding = Finding.from_json(d.payload)
        return Message(id=message_id(d.key), trigger=d.trigger, correction=d.correction, finding=finding,
                       created_at=d.created_at, viewer_link=viewer_link(self.cfg.notify.viewer_url, finding.study_uid),
                       patient=self._patient(d.series_id, target))

    def _patient(self, series_id: int | None, target: NotificationTarget) -> dict[str, str]:
        """The patient fields this target turned on, from the spool (PHI: never stored, never logged)."""
        if not target.phi_fields or series_id is None:
            return {}
        with self.store.transaction() as s:
            path = s.execute(select(Instance.path).where(Instance.series_id == series_id)
                             .order_by(Instance.id).limit(1)).scalar_one_or_none()
        if path is None:
            return {}
        try:
            import pydicom

            ds = pydicom.dcmread(self.spool.path(path), stop_before_pixels=True,
                                 specific_tags=["PatientName", "PatientID", "PatientBirthDate"])
        except Exception:  # purged or unreadable: the message goes without them
            log.warning("series of notification: its first instance is not readable; patient fields left out")
            return {}
        values = {"patient_name": str(ds.get("PatientName", "") or ""), "patient_id": str(ds.get("PatientID", "") or ""),
                  "birth_date": str(ds.get("PatientBirthDate", "") or "")}
        return {k: values[k] for k in target.phi_fields if values.get(k)}
