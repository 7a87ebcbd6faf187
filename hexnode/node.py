"""`hexnode node` and `hexnode serve`: a one-machine site's stages as supervised child processes.

Every stage is a command of its own (`hexnode receive | route | worker | send | web`); sites
with a service manager per stage (docker compose, one systemd unit each) run them directly.
A one-machine site, the demo and a single systemd unit run `hexnode node` instead, which starts

    receive, route, worker × [worker] processes (--workers), send, and web if [http] enabled

as child processes with the same command line a service manager would use (`python -m
hexnode.cli STAGE --config FILE`), and nothing else: the children share nothing but the database
and the spool, exactly as the separate services do. `hexnode serve` (the old name, kept for
existing sites) is the same supervisor over receive + route (+ web): before the stages were split
it was one process tree doing those three jobs.

Supervision, standard library only (subprocess):

* A child that exits without being asked is logged and started again after a back-off: 1 s,
  doubling with each exit within `HEALTHY_AFTER_SECONDS` of its start, up to 60 s. A child that
  ran that long before it died is restarted after 1 s again. So a crash loop (a database that is
  away, a port taken) costs one line a minute, not a storm.
* SIGTERM or SIGINT: SIGTERM to every child, then wait up to `STOP_GRACE_SECONDS` for them all —
  a worker finishes the job it is running (a CPU job takes up to a minute) — then SIGKILL to what
  is left (safe: every stage's state is in the database and the spool).
* Exit status 0, unless asked to stop while a child kept failing (its last `KEPT_FAILING` runs
  each ended within `HEALTHY_AFTER_SECONDS`): 1, so a service manager's log shows the node was
  not well when it stopped.
* Children get SIGTERM if the supervisor itself dies (Linux PR_SET_PDEATHSIG): a `kill -9` of the
  node never leaves an orphaned receiver holding the DICOM port against the next start.

The database is created (or upgraded to the head revision) once here, before any child starts:
an upgrade then runs once and logs once, instead of five children queueing on its lock.
"""

from __future__ import annotations

import argparse
import ctypes
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from hexnode.config import Config, load_config
from hexnode.runtime import setup_logging, stop_on_signals

log = logging.getLogger(__name__)

BACKOFF_INITIAL_SECONDS = 1.0
BACKOFF_MAX_SECONDS = 60.0
HEALTHY_AFTER_SECONDS = 60.0  # a child that ran this long before it died was not crash-looping
KEPT_FAILING = 3  # this many quick exits in a row: the node stops with status 1
STOP_GRACE_SECONDS = 100.0  # under the units' TimeoutStopSec = 120 and compose's 2 min
POLL_SECONDS = 0.25

_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class ChildSpec:
    name: str  # what the log calls it: "receive", "worker-2"
    command: str  # the hexnode subcommand


@dataclass
class Child:
    spec: ChildSpec
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    quick_exits: int = 0  # exits in a row within HEALTHY_AFTER_SECONDS of the start
    restart_at: float | None = None  # monotonic time of the next start, while backing off
    starts: int = 0


@dataclass
class Timing:
    """The supervisor's clock constants (tests shorten them)."""

    backoff_initial: float = BACKOFF_INITIAL_SECONDS
    backoff_max: float = BACKOFF_MAX_SECONDS
    healthy_after: float = HEALTHY_AFTER_SECONDS
    stop_grace: float = STOP_GRACE_SECONDS
    poll: float = POLL_SECONDS


def stages(cfg: Config, *, workers: int | None = None, legacy_serve: bool = False) -> list[ChildSpec]:
    """The children of `hexnode node` (or of `hexnode serve`: receive + route, no worker or send)."""
    specs = [ChildSpec("receive", "receive"), ChildSpec("route", "route")]
    if not legacy_serve:
        n = cfg.worker.processes if workers is None else workers
        specs += [ChildSpec("worker" if n == 1 else f"worker-{i + 1}", "worker") for i in range(n)]
        specs.append(ChildSpec("send", "send"))
    if cfg.http.enabled:
        specs.append(ChildSpec("web", "web"))
    return specs


def _die_with_parent(parent: int) -> None:
    """In the child, before exec: SIGTERM when the supervisor dies (Linux only; a no-op elsewhere)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM))
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the supervisor died before prctl took effect
        os._exit(1)


@dataclass
class Supervisor:
    specs: Sequence[ChildSpec]
    config: str | None = None
    timing: Timing = field(default_factory=Timing)
    python: str = sys.executable
    children: list[Child] = field(default_factory=list)

    def argv(self, spec: ChildSpec) -> list[str]:
        return [self.python, "-m", "hexnode.cli", spec.command, *(["--config", self.config] if self.config else [])]

    def _start(self, child: Child) -> None:
        env = dict(os.environ)
        # `-m` puts the working directory first on sys.path; a data dir named `hexnode` there would
        # shadow the installed package (seen with the demo's var/demo/hexnode)
        env["PYTHONSAFEPATH"] = "1"
        parent = os.getpid()
        # A process group of its own: a terminal's Ctrl-C reaches the supervisor only, which stops
        # the children with SIGTERM like any other stop (no KeyboardInterrupt in a child mid-write).
        child.proc = subprocess.Popen(self.argv(child.spec), env=env, process_group=0,
                                      preexec_fn=lambda: _die_with_parent(parent))
        child.started_at = time.monotonic()
        child.restart_at = None
        child.starts += 1
        log.info("%s started (pid %d)%s", child.spec.name, child.proc.pid,
                 f", start {child.starts}" if child.starts > 1 else "")

    def _exited(self, child: Child, code: int, now: float) -> None:
        ran = now - child.started_at
        child.quick_exits = child.quick_exits + 1 if ran < self.timing.healthy_after else 0
        delay = min(self.timing.backoff_initial * 2 ** max(child.quick_exits - 1, 0), self.timing.backoff_max)
        child.restart_at = now + delay
        child.proc = None
        how = f"killed by signal {-code}" if code < 0 else f"exited with status {code}"
        log.error("%s %s after %.1f s; restarting in %g s%s", child.spec.name, how, ran, round(delay, 1),
                  f" ({child.quick_exits} quick exits in a row)" if child.quick_exits > 1 else "")

    def step(self, now: float | None = None) -> None:
        """Notice exited children and start those whose back-off is over (one pass)."""
        now = time.monotonic() if now is None else now
        for child in self.children:
            if child.proc is not None:
                code = child.proc.poll()
                if code is not None:
                    self._exited(child, code, now)
            elif child.restart_at is not None and now >= child.restart_at:
                self._start(child)

    def run(self, stop: threading.Event) -> int:
        self.children = [Child(spec) for spec in self.specs]
        log.info("starting %s", ", ".join(s.name for s in self.specs))
        for child in self.children:
            if not stop.is_set():
                self._start(child)
        while not stop.wait(self.timing.poll):
            self.step()
        return self.shutdown()

    def shutdown(self) -> int:
        running = [c for c in self.children if c.proc is not None and c.proc.poll() is None]
        log.info("stopping %s", ", ".join(c.spec.name for c in running) or "(none running)")
        for child in running:
            assert child.proc is not None
            child.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.timing.stop_grace
        for child in running:
            assert child.proc is not None
            try:
                child.proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop within %.0f s; killing it", child.spec.name, self.timing.stop_grace)
                child.proc.kill()
                child.proc.wait()
        failing = [c.spec.name for c in self.children if c.quick_exits >= KEPT_FAILING]
        if failing:
            log.error("stopped while %s kept failing (see the lines above)", ", ".join(failing))
            return 1
        log.info("stopped")
        return 0


def _prepare_database(cfg: Config) -> None:
    from hexnode.store.db import open_store

    try:
        open_store(cfg.database_url).dispose()
    except Exception as exc:  # PostgreSQL not up yet: each stage retries on its own, backing off
        log.warning("database not ready (%s: %s); the stages will retry", type(exc).__name__, exc)


def supervise(args: argparse.Namespace, *, legacy_serve: bool = False) -> int:
    config = getattr(args, "config", None)
    cfg = load_config(config)
    setup_logging(cfg.log_level)
    stop = stop_on_signals()  # before anything starts: a SIGTERM now still stops every child
    workers = getattr(args, "workers", None)
    if workers is not None and workers < 1:
        log.error("--workers: must be >= 1")
        return 2
    _prepare_database(cfg)
    return Supervisor(stages(cfg, workers=workers, legacy_serve=legacy_serve), config).run(stop)


def run_node(args: argparse.Namespace) -> int:
    return supervise(args)


def run_serve(args: argparse.Namespace) -> int:
    """`hexnode serve`, the old name: receive + route (+ web), without worker or send."""
    return supervise(args, legacy_serve=True)
