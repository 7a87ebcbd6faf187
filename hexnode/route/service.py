"""`hexnode route`: an APScheduler job in a process of its own, each tick completion
(hexnode.route.completion) then the study decision (hexnode.route.decide).

It reads what receive indexed and writes the decisions (series states, jobs) to the same database;
it never talks to the receiver, so either can be restarted, or run on another machine with the
database and the spool, without the other. Everything lives in the database: a restart re-reads
the state, and the next tick carries on.
"""

from __future__ import annotations

import argparse
import logging
from datetime import UTC, datetime
from typing import Any

from hexnode.config import Config
from hexnode.labels.take import take_received
from hexnode.route.completion import CountWatch, complete_ready, settle_arrivals
from hexnode.route.decide import Tick, select_complete
from hexnode.series.select import Selector
from hexnode.store.db import Store, utcnow
from hexnode.store.doorbell import ring
from hexnode.store.heartbeat import Beater
from hexnode.store.process import stage_process
from hexnode.store.spool import Spool

log = logging.getLogger(__name__)


def check_once(store: Store, cfg: Config, spool: Spool, selector: Selector | None = None,
               now: datetime | None = None, watch: CountWatch | None = None) -> Tick:
    """One pass: complete what is stable or whole, then select and queue. Safe to run repeatedly.

    `watch` (the scheduler keeps one) also waits for the instance count to stop changing.
    """
    selector = selector or Selector.from_config(cfg.series.selection)
    now = now or utcnow()
    tick = Tick()
    with store.transaction() as s:
        tick.reopened, tick.rejected_at_once = settle_arrivals(s)
        tick.completed = complete_ready(s, cfg, now, watch)
    with store.transaction() as s:
        select_complete(s, cfg, spool, selector, now, tick)
    return tick


def start_scheduler(store: Store, cfg: Config, spool: Spool, beater: Beater | None = None) -> Any:
    """A BackgroundScheduler running `check_once` every `check_interval_seconds` (one at a time).

    `hexnode route` (:func:`run_route`) calls this after opening the store and stops it with
    `.shutdown()`. `beater`: the stage heartbeat, beaten after each check that finished (a check
    stuck on a lock stops it).
    """
    from apscheduler.schedulers.background import BackgroundScheduler

    selector = Selector.from_config(cfg.series.selection)  # a bad rule fails start-up, not a tick
    # APScheduler logs every run at INFO: four lines a second that drown the node's own log
    logging.getLogger("apscheduler").setLevel(logging.WARNING)

    watch = CountWatch()

    def job() -> None:
        try:
            tick = check_once(store, cfg, spool, selector, watch=watch)
        except Exception:  # a tick must never kill the scheduler; the next one retries
            log.exception("series completion check failed")
            return
        if tick.queued or tick.not_analysed or tick.study_reports or tick.held:
            ring(cfg.data_path, "worker")
        if tick.released:
            ring(cfg.data_path, "send")
        try:  # the reference masks readers sent back (hexnode/labels/take.py)
            take_received(store, spool)
        except Exception:
            log.exception("taking received corrections failed")
        if beater is not None:
            beater.beat()

    scheduler = BackgroundScheduler(timezone="UTC")
    scheduler.add_job(job, "interval", seconds=max(0.1, cfg.series.check_interval_seconds),
                      id="hexnode-series-stable", max_instances=1, coalesce=True, next_run_time=datetime.now(UTC))
    scheduler.start()
    return scheduler


def run_route(args: argparse.Namespace) -> int:
    """`hexnode route`: the scheduler until SIGTERM/SIGINT (a tick in progress finishes first)."""
    with stage_process(args, "route") as proc:  # the spool is read only here: indexed instances' headers
        cfg = proc.cfg
        proc.beater.start()
        scheduler = start_scheduler(proc.store, cfg, proc.spool, proc.beater)
        log.info("routing: completion checks every %g s, series stable after %g s, studies settled after %g s",
                 cfg.series.check_interval_seconds, cfg.series.stable_seconds, cfg.series.study_settle_seconds)
        try:
            while not proc.stop.wait(1.0):
                pass
        finally:
            log.info("stopping")
            scheduler.shutdown()  # waits for a running check: its transaction commits or rolls back whole
    return 0
