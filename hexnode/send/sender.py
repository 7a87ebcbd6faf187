"""`hexnode send` and `hexnode resend`: deliver the outbox to the configured destinations.

The sender claims due outbox rows (``hexnode.send.outbox``), groups them by destination, sends
each group over one association (C-STORE, ``kind = "dicom"``) or one STOW-RS request
(``kind = "stow"``), and records each object's outcome: delivered, or back-off, or — past
``send.max_age_seconds`` — failed with the reason (visible in ``hexnode status``;
``hexnode resend --all-failed`` or ``hexnode resend ID...`` queues them again). Several senders
may run at once (claims are exclusive); a sender killed mid-send leaves rows that are reclaimed
when their lease expires and sent again with the same SOP Instance UIDs.

The same loop delivers the due notifications after the objects (``hexnode.notify.deliver``:
webhook, e-mail, HL7), and an object that reaches ``failed`` queues the IT warning
(``delivery_failed``) in the same transaction. ``hexnode resend --notification ID`` re-queues a
failed notification; ``--all-failed`` re-queues failed deliveries and notifications.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import threading
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

from hexnode import notify
from hexnode.config import Config, Destination, load_config
from hexnode.notify import state as notify_state
from hexnode.notify.deliver import Notifier
from hexnode.runtime import setup_logging
from hexnode.send import outbox
from hexnode.send.scu import Outcome, store_files
from hexnode.send.stow import stow_files
from hexnode.store.db import Store, open_store
from hexnode.store.doorbell import Doorbell
from hexnode.store.process import stage_process
from hexnode.store.spool import Spool

log = logging.getLogger(__name__)

Transport = Callable[[Destination, dict[str, Path], str], dict[str, Outcome]]


def _default_transport(dest: Destination, files: dict[str, Path], calling_ae: str) -> dict[str, Outcome]:
    if dest.kind == "stow":
        return stow_files(dest, files)
    return store_files(dest, files, calling_ae)


class Sender:
    def __init__(self, cfg: Config, store: Store, spool: Spool, owner: str | None = None) -> None:
        self.cfg = cfg
        self.store = store
        self.spool = spool
        self.owner = owner or f"send@{socket.gethostname()}:{os.getpid()}"
        self.destinations = {d.name: d for d in cfg.destinations}
        self.transport: Transport = _default_transport
        self.notifier = Notifier(cfg, store, spool, self.owner)

    @property
    def lease_seconds(self) -> float:
        # A batch may take several network timeouts; the lease must outlast it.
        longest = max((d.timeout_seconds for d in self.cfg.destinations), default=30.0)
        return max(60.0, 4 * longest)

    def run_once(self, limit: int = 50) -> int:
        """Attempt every due delivery (up to `limit`); returns how many were attempted."""
        with self.store.transaction() as s:
            due = outbox.claim_due(s, self.owner, lease_seconds=self.lease_seconds, limit=limit)
        groups: dict[str, list[outbox.Due]] = defaultdict(list)
        for d in due:
            groups[d.destination].append(d)
        for name, items in groups.items():
            self._send_group(name, items)
        # notifications (hexnode/notify) after the objects: an alert's viewer link then finds them
        return len(due) + self.notifier.run_once()

    def _send_group(self, name: str, items: list[outbox.Due]) -> None:
        dest = self.destinations.get(name)
        if dest is None:
            results = {d.sop_instance_uid: Outcome(False, f"destination {name!r} is not configured") for d in items}
        else:
            files = {d.sop_instance_uid: self.spool.path(d.path) for d in items}
            try:
                results = self.transport(dest, files, self.cfg.dicom.ae_title)
            except Exception as exc:  # a transport bug must not wedge the outbox: back off instead
                log.exception("sending to %s failed", name)
                results = {d.sop_instance_uid: Outcome(False, f"{type(exc).__name__}: {exc}") for d in items}
        delivered = 0
        with self.store.transaction() as s:
            for d in items:
                res = results.get(d.sop_instance_uid, Outcome(False, "no outcome reported"))
                if res.ok:
                    outbox.mark_delivered(s, d.outbox_id, self.owner, res.detail)
                    delivered += 1
                else:
                    state = outbox.mark_failed_attempt(s, d.outbox_id, self.owner, res.detail, self.cfg.send)
                    if state == "failed":
                        log.error("outbox %d (%s → %s) failed for good: %s", d.outbox_id, d.kind, name, res.detail)
                        notify.on_delivery_failed(s, self.cfg, series_id=d.series_id, destination=name, kind=d.kind,
                                                  outbox_id=d.outbox_id, error=res.detail,
                                                  result_file=self.spool.path(d.path))
        failed = len(items) - delivered
        if failed:
            first = next(r.detail for r in results.values() if not r.ok)
            log.warning("%s: %d delivered, %d to retry (%s)", name, delivered, failed, first)
        else:
            log.info("%s: %d objects delivered", name, delivered)

    def run(self, stop: threading.Event, *, once: bool = False, beat: Callable[[], None] | None = None,
            bell: Doorbell | None = None) -> None:
        """Until `stop`; `beat` (the stage heartbeat) after every pass that did not fail; `bell`
        (rung by the worker and route when there is something to send) ends an idle wait early."""
        while not stop.is_set():
            try:
                n = self.run_once()
            except Exception:
                log.exception("send loop error; retrying")
                n = 0
            else:
                if beat is not None:
                    beat()
            if once and n == 0:
                return
            if n == 0:
                if bell is not None:
                    bell.wait(stop, self.cfg.send.poll_seconds)
                else:
                    stop.wait(self.cfg.send.poll_seconds)




def run_send(args: argparse.Namespace) -> int:
    with stage_process(args, "send") as proc:
        cfg = proc.cfg
        sender = Sender(cfg, proc.store, proc.spool)
        log.info("sending to %s", ", ".join(f"{d.name} ({d.kind})" for d in cfg.destinations) or "nowhere")
        if cfg.notifications:
            log.info("notifying %s",
                     ", ".join(f"{n.name} ({n.kind}: {', '.join(n.triggers)})" for n in cfg.notifications))
        proc.beater.start()
        with Doorbell(cfg.data_path, "send") as bell:
            sender.run(proc.stop, once=bool(getattr(args, "once", False)), beat=proc.beater.beat, bell=bell)
    return 0


def run_resend(args: argparse.Namespace) -> int:
    cfg = load_config(getattr(args, "config", None))
    setup_logging(cfg.log_level)
    ids = list(getattr(args, "ids", []) or [])
    notes = list(getattr(args, "notification", []) or [])
    all_failed = bool(getattr(args, "all_failed", False))
    if not ids and not notes and not all_failed:
        print("hexnode resend: give outbox ids, --notification ID or --all-failed (see `hexnode status`)")
        return 2
    store = open_store(cfg.database_url)
    try:
        with store.transaction() as s:
            done = outbox.requeue(s, ids, all_failed=all_failed) if ids or all_failed else []
            done_notes = notify_state.requeue(s, notes, all_failed=all_failed) if notes or all_failed else []
    finally:
        store.dispose()
    print(f"queued again: {len(done)} deliveries" + (f" ({', '.join(map(str, done))})" if done else ""))
    if notes or done_notes:
        print(f"queued again: {len(done_notes)} notifications"
              + (f" ({', '.join(map(str, done_notes))})" if done_notes else ""))
    missing = sorted(set(ids) - set(done)) + [f"notification {n}" for n in sorted(set(notes) - set(done_notes))]
    if missing:
        print(f"not failed or unknown (left alone): {', '.join(map(str, missing))}")
    return 0
