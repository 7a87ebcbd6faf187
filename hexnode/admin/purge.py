"""`hexnode purge`: free the spool of series that are finished and older than the retention period.

A series is purged when it is ``delivered`` (every result object confirmed by the destination)
or ``rejected`` with every outbox row (its "not analysed" report, if any) delivered or superseded
(a held result a better series replaced: never to be sent), and nothing
happened to it for ``spool.retention_days`` (``--days``): its received instances and result files
are deleted and its instance rows removed. The series, job, result and event rows stay (the
audit trail); an ``events`` row records the purge. Failed series and undelivered results are
never purged — they need a person (see ``hexnode status``). Nor is a series with a reference
mask (a ``stored`` correction a reader sent back): its slices are a case of the site data set
(`hexnode dataset export`), which needs them.

Beside the series, by the same retention:

* quarantined files (``spool/quarantine/``: what the indexer could not index, with an ``events``
  row saying why) received before the cutoff;
* orphans: files under ``spool/instances/`` that no instance row names (a file a crash left
  between its rename and its index row, which recovery no longer looks at) older than the cutoff;
* ``events`` rows older than the cutoff, except those of what still needs a person or is still
  under way: series that are not ``delivered`` or ``rejected``, their jobs, outbox rows and
  notifications not delivered, and model activations (kept: they say which model made a result).
"""

from __future__ import annotations

import argparse
import logging
import os
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import and_, delete, func, not_, or_, select

from hexnode.store.db import (
    Correction,
    Event,
    Instance,
    Job,
    Notification,
    Outbox,
    Result,
    Series,
    Store,
    utcnow,
)
from hexnode.store.process import stage_process
from hexnode.store.spool import Spool, uid_hash

log = logging.getLogger(__name__)


FINISHED = ("delivered", "rejected")
# Outbox rows nobody waits on: delivered, or superseded before release (a held result never sent).
SETTLED_OUTBOX = ("delivered", "superseded")


@dataclass(frozen=True)
class Purged:
    series: int
    files: int
    bytes: int
    quarantined: int = 0  # quarantined files deleted
    orphans: int = 0  # files under instances/ no row names, deleted
    other_bytes: int = 0  # of those two
    events: int = 0  # events rows deleted


def purgeable(store: Store, cutoff: datetime) -> list[int]:
    with store.transaction() as s:
        rows = s.execute(
            select(Series.id).where(
                Series.state.in_(("delivered", "rejected")),
                Series.state_at < cutoff,
                Series.last_instance_at < cutoff,
                Series.id.not_in(select(Correction.series_id).where(Correction.state == "stored",
                                                                    Correction.series_id.is_not(None))),
            )
        ).scalars().all()
        out = []
        for sid in rows:
            undelivered = s.execute(
                select(Outbox.id).join(Result, Result.id == Outbox.result_id)
                .where(Result.series_id == sid, Outbox.state.not_in(SETTLED_OUTBOX)).limit(1)
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
    if stop is not None and stop.is_set():
        return Purged(done, n_files, n_bytes)
    q_files, q_bytes = purge_quarantine(spool, cutoff, dry_run=dry_run)
    o_files, o_bytes = purge_orphans(store, spool, cutoff, dry_run=dry_run, stop=stop)
    events = prune_events(store, cutoff, dry_run=dry_run)
    return Purged(done, n_files, n_bytes, q_files, o_files, q_bytes + o_bytes, events)


def _old_files(folder: Path, cutoff: float) -> list[tuple[Path, int]]:
    out: list[tuple[Path, int]] = []
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return out
    for e in entries:
        try:
            st = e.stat(follow_symlinks=False)
        except FileNotFoundError:
            continue
        if e.is_file(follow_symlinks=False) and st.st_mtime < cutoff:
            out.append((Path(e.path), st.st_size))
    return out


def purge_quarantine(spool: Spool, cutoff: datetime, *, dry_run: bool = False) -> tuple[int, int]:
    """Delete quarantined files received before `cutoff` (naive UTC). Returns (files, bytes)."""
    old = _old_files(spool.root / "quarantine", cutoff.replace(tzinfo=UTC).timestamp())
    for path, _ in old:
        if not dry_run:
            path.unlink(missing_ok=True)
    if old:
        log.info("%s %d quarantined files", "would delete" if dry_run else "deleted", len(old))
    return len(old), sum(n for _, n in old)


def purge_orphans(store: Store, spool: Spool, cutoff: datetime, *, dry_run: bool = False,
                  stop: threading.Event | None = None) -> tuple[int, int]:
    """Delete files under instances/ older than `cutoff` that no instance row names."""
    root = spool.root / "instances"
    when = cutoff.replace(tzinfo=UTC).timestamp()
    n_files = n_bytes = 0
    buckets = sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    for bucket in buckets:
        if stop is not None and stop.is_set():
            break
        old = {f"instances/{bucket.name}/{p.name}": (p, size) for p, size in _old_files(bucket, when)}
        if not old:
            continue
        known: set[str] = set()
        rels = list(old)
        with store.transaction() as s:
            for i in range(0, len(rels), 500):
                known |= set(s.execute(select(Instance.path).where(Instance.path.in_(rels[i:i + 500]))).scalars())
        for rel in rels:
            if rel in known:
                continue
            path, size = old[rel]
            if not dry_run:
                path.unlink(missing_ok=True)
            n_files += 1
            n_bytes += size
    if n_files:
        log.info("%s %d orphaned files (in the spool, in no instance row)", "would delete" if dry_run else "deleted",
                 n_files)
    return n_files, n_bytes


def prune_events(store: Store, cutoff: datetime, *, dry_run: bool = False) -> int:
    """Delete events rows older than `cutoff`, except those of what is not finished (module doc)."""
    open_series = select(Series.id).where(Series.state.not_in(FINISHED))
    keep = or_(
        Event.entity == "model",
        and_(Event.entity == "series", Event.entity_id.in_(open_series)),
        and_(Event.entity == "job", Event.entity_id.in_(select(Job.id).where(Job.series_id.in_(open_series)))),
        and_(Event.entity == "outbox",
             Event.entity_id.in_(select(Outbox.id).where(Outbox.state.not_in(SETTLED_OUTBOX)))),
        and_(Event.entity == "notification",
             Event.entity_id.in_(select(Notification.id).where(Notification.state != "delivered"))),
    )
    where = and_(Event.at < cutoff, not_(keep))
    with store.transaction() as s:
        if dry_run:
            n = int(s.execute(select(func.count()).select_from(Event).where(where)).scalar_one())
        else:
            n = int(s.execute(delete(Event).where(where)).rowcount or 0)  # type: ignore[attr-defined]
    if n:
        log.info("%s %d events rows older than the retention period", "would delete" if dry_run else "deleted", n)
    return n


def run_purge(args: argparse.Namespace) -> int:
    # a timer or an operator stopping a long purge: the series being deleted is finished first
    # (its files and its instance rows go together), never left half-deleted
    with stage_process(args, "purge") as proc:
        days = proc.cfg.spool.retention_days if getattr(args, "days", None) is None else float(args.days)
        res = purge(proc.store, proc.spool, days, dry_run=bool(getattr(args, "dry_run", False)), stop=proc.stop)
    verb = "would free" if getattr(args, "dry_run", False) else "freed"
    print(f"{res.series} series older than {days:g} days: {verb} {res.files} files, {res.bytes / 2**20:.1f} MiB; "
          f"{res.quarantined} quarantined and {res.orphans} orphaned files, {res.other_bytes / 2**20:.1f} MiB; "
          f"{res.events} events rows")
    return 0
