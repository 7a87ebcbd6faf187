"""Stage heartbeats: each running receive, route, worker and send process shows it is alive.

A process writes its own ``stage_beats`` row from its work loop — not from a thread of its own —
so a process that is alive but wedged (a loop stuck on a lock, a job that never ends) stops
beating while the container or unit still looks "running". `hexnode health STAGE` compares the
age of the freshest beat of that stage on this host with a limit (compose health checks, a
monitoring probe); /metrics, /status and the status page show each stage's age.

API
---
``Beater(store, stage)``  one process's heartbeat. ``start()`` writes its row (and drops rows of
    earlier processes of the stage with the same host and pid, and rows nobody has beaten for a week);
    ``beat()`` in the loop (writes at most every ``every`` seconds, so a loop polling twice a
    second costs one small write per five seconds); ``busy()`` / ``idle()`` around a worker's job,
    which its loop cannot beat during; ``stop()`` deletes the row on a clean stop. A database
    that is briefly away costs a log line at DEBUG, never the stage.
``beats(s, now)``  every row as a :class:`Beat`, freshest first.

Several processes of a stage (two worker containers) each have a row; a stage's age is that of
its freshest row. Rows are keyed ``host:pid:random``: two containers on a host network may both
be pid 1 of the same host name.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, or_, select
from sqlalchemy.orm import Session

from hexnode.store.db import StageBeat, Store, utcnow

log = logging.getLogger(__name__)

STAGES = ("receive", "route", "worker", "send")
BEAT_SECONDS = 5.0
FORGET_AFTER = timedelta(days=7)  # a row nobody has beaten for this long is dropped by the next start


@dataclass(frozen=True)
class Beat:
    stage: str
    instance: str
    host: str
    pid: int
    started_at: datetime
    beat_at: datetime
    busy_since: datetime | None
    age_seconds: float  # since beat_at
    busy_seconds: float | None  # since busy_since


def beats(s: Session, now: datetime | None = None) -> list[Beat]:
    now = now or utcnow()
    rows = s.execute(select(StageBeat).order_by(StageBeat.beat_at.desc())).scalars()
    return [Beat(r.stage, r.instance, r.host, r.pid, r.started_at, r.beat_at, r.busy_since,
                 max(0.0, (now - r.beat_at).total_seconds()),
                 None if r.busy_since is None else max(0.0, (now - r.busy_since).total_seconds()))
            for r in rows]


class Beater:
    """The heartbeat of one stage process (see the module docstring)."""

    def __init__(self, store: Store, stage: str, *, every: float = BEAT_SECONDS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.store, self.stage, self.every, self.clock = store, stage, every, clock
        self.host = socket.gethostname()[:128]
        self.pid = os.getpid()
        self.instance = f"{self.host}:{self.pid}:{secrets.token_hex(4)}"
        self._last = float("-inf")
        self._busy_since: datetime | None = None

    def start(self) -> None:
        try:
            with self.store.transaction() as s:
                # this stage's earlier process on this host with this pid: a restarted container
                s.execute(delete(StageBeat).where(or_(
                    (StageBeat.stage == self.stage) & (StageBeat.host == self.host) & (StageBeat.pid == self.pid),
                    StageBeat.beat_at < utcnow() - FORGET_AFTER)))
                now = utcnow()
                s.add(StageBeat(instance=self.instance, stage=self.stage, host=self.host, pid=self.pid,
                                started_at=now, beat_at=now))
            self._last = self.clock()
        except Exception as exc:
            log.debug("%s heartbeat: start not recorded (%s)", self.stage, exc)

    def _write(self) -> None:
        try:
            with self.store.transaction() as s:
                row = s.get(StageBeat, self.instance)
                if row is None:  # deleted by hand, or start() could not write: recreate it
                    row = StageBeat(instance=self.instance, stage=self.stage, host=self.host, pid=self.pid,
                                    started_at=utcnow())
                    s.add(row)
                row.beat_at = utcnow()
                row.busy_since = self._busy_since
            self._last = self.clock()
        except Exception as exc:  # the database briefly away: the next beat tries again
            log.debug("%s heartbeat not recorded (%s)", self.stage, exc)

    def beat(self) -> None:
        """From the work loop, each time round; writes when `every` seconds have passed."""
        if self.clock() - self._last >= self.every:
            self._write()

    def busy(self) -> None:
        """A job starts: the loop will not beat until it ends (written at once)."""
        self._busy_since = utcnow()
        self._write()

    def idle(self) -> None:
        """The job ended (written at once)."""
        self._busy_since = None
        self._write()

    def stop(self) -> None:
        try:
            with self.store.transaction() as s:
                s.execute(delete(StageBeat).where(StageBeat.instance == self.instance))
        except Exception as exc:
            log.debug("%s heartbeat: row not removed (%s)", self.stage, exc)
