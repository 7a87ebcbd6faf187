"""What every stage process opens when it starts and closes when it stops.

A stage (receive, route, worker, send, web, purge) reads the one settings file, sets its log
level, turns SIGTERM/SIGINT into a stop event, opens the store and keeps a heartbeat row. Doing
that in one place keeps the order the same everywhere (signals are caught before the first
transaction, so a stop during start-up is never lost) and the store is always disposed of, even
when the stage's own start-up fails.

    with stage_process(args, "send") as proc:
        proc.beater.start()
        while not proc.stop.wait(1.0): ...

The heartbeat is created but not started: each stage starts it when it is ready to work (the
worker after its models are loaded), so `hexnode health` never reports a stage that cannot yet
serve.
"""

from __future__ import annotations

import argparse
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from hexnode import runtime
from hexnode.config import Config, load_config
from hexnode.store.db import Store, open_store
from hexnode.store.heartbeat import Beater
from hexnode.store.spool import Spool

__all__ = ["StageProcess", "stage_process"]


@dataclass(frozen=True)
class StageProcess:
    """The settings, store, spool, stop event and heartbeat of one running stage."""

    name: str
    cfg: Config
    store: Store
    spool: Spool
    stop: threading.Event
    beater: Beater


@contextmanager
def stage_process(args: argparse.Namespace, name: str) -> Iterator[StageProcess]:
    """Open the stage's resources; on leaving, remove its heartbeat row and dispose of the store."""
    cfg = load_config(getattr(args, "config", None))
    runtime.setup_logging(cfg.log_level)
    stop = runtime.stop_on_signals()
    store = open_store(cfg.database_url)
    beater = Beater(store, name)
    try:
        yield StageProcess(name, cfg, store, Spool(cfg.spool_path), stop, beater)
    finally:
        beater.stop()
        store.dispose()
