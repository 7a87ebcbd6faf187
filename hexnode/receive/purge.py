"""`hexnode purge`: free the spool of series that are finished and older than the retention period.

A series is purged when it is ``delivered`` (every result object confirmed by the destination)
or ``rejected`` with every outbox row (its "not analysed" report, if any) delivered, and nothing
happened to it for ``spool.retention_days`` (``--days``): its received instances and result files
are deleted and its instance rows removed. The series, job, result and event rows stay (the
audit trail); an ``events`` row records the purge. Failed series and undelivered results are
never purged — they need a person (see ``hexnode status``).
"""

from __future__ import annotations

import argparse
import logging
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, select

from hexnode.config import load_config
from hexnode.runtime import setup_logging, stop_on_signals
from hexnode.store.db import Event, Instance, Outbox, Result, Series, Store, open_store, utcnow
from hexnode.store.spool import Spool, uid_hash

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Purged:
    series: int
    files: int
    bytes: int


def purgeable(store: Store, cutoff: datetime) -> list[int]:
    with store.transaction() as s:
        rows = s.execute(
            select(Series.id).where(
                Series.state.in_(("delivered", "rejected")),
                Series.state_at < cutoff,
                Series.last_instance_at < cutoff,
            )
        ).scalars().all()
        out = []
        for sid in rows:
            undelivered = s.execute(
                select(Outbox.id).join(Result, Result.id == Outbox.result_id)
                .where(Result.series_id == sid, Outbox.state != "delivered").limit(1)
            ).first()
            if undelivered is None:
                out.append(sid)
        return out


def purge(store: Store, spool: Spool, days: float, *, dry_run: bool = False,
          stop: threading.Event | None = None) -> Purged:
    """Purge every purgeable series; `stop` set (SIGTERM): after the series being purged."""
    cutoff = utcnow() - timedelta(days=days)
    n_files = n_bytes = 0
    ids = purgeable(store, cutoff)
    done = 0
    for sid in ids:
        if stop is not None and stop.is_set():
            log.info("stopping: %d of %d series purged", done, len(ids))
            break
        done += 1
        with store.transaction() as s:
            series = s.get(Series, sid)
            if series is None:
                continue
            paths = list(s.execute(select(Instance.path).where(Instance.series_id == sid)).scalars())
            paths += list(s.execute(select(Result.path).where(Result.series_id == sid)).scalars())
            files = bytes_ = 0
            for rel in paths:
                p = spool.path(rel)
                if p.is_file():
                    files += 1
                    bytes_ += p.stat().st_size
                    if not dry_run:
                        p.unlink()
            if not dry_run:
                s.execute(delete(Instance).where(Instance.series_id == sid))
                s.add(Event(entity="series", entity_id=sid, from_state=series.state, to_state=series.state,
                            detail=f"purged {files} files ({bytes_} bytes) after {days:g} days"))
            log.info("series %s: %s %d files", uid_hash(series.series_uid), "would purge" if dry_run else "purged",
                     files)
            n_files += files
            n_bytes += bytes_
    return Purged(done, n_files, n_bytes)


def run_purge(args: argparse.Namespace) -> int:
    cfg = load_config(getattr(args, "config", None))
    setup_logging(cfg.log_level)
    days = cfg.spool.retention_days if getattr(args, "days", None) is None else float(args.days)
    # a timer or an operator stopping a long purge: the series being deleted is finished first
    # (its files and its instance rows go together), never left half-deleted
    stop = stop_on_signals()
    store = open_store(cfg.database_url)
    try:
        res = purge(store, Spool(cfg.spool_path), days, dry_run=bool(getattr(args, "dry_run", False)), stop=stop)
    finally:
        store.dispose()
    verb = "would free" if getattr(args, "dry_run", False) else "freed"
    print(f"{res.series} series older than {days:g} days: {verb} {res.files} files, {res.bytes / 2**20:.1f} MiB")
    return 0
