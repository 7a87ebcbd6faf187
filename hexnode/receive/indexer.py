"""The header indexer of `hexnode serve`, in its own process.

The C-STORE handler only spools (rename into place) and hands the file's spool path to this
process through a queue; here each file is fsynced (with its directory), its header read with
``stop_before_pixels`` and recorded in the database, in batches of up to 200 per transaction.

Why a process: header parsing and ORM inserts are CPU-bound Python; in a thread they hold the
GIL while pynetdicom's reactors wait to answer the next C-STORE, which more than doubled the
receive time of a 320-instance series. Why it is safe: a file is complete in the spool before
Success is answered; if this process dies (or the queue is lost with serve), ``Indexer.recover``
indexes every spooled file the database does not know when the indexer starts again.

A file whose header cannot be read (truncated, not DICOM, no UIDs) is moved to
``spool/quarantine/`` and recorded as an ``events`` row (entity ``instance``).
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import queue as queue_mod
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from hexnode.receive.index import HeaderError, read_header, record_instance
from hexnode.receive.spool import Spool, fsync_dir, instance_relpath
from hexnode.store.db import Event, Instance, Store, open_store

log = logging.getLogger(__name__)

BATCH = 200


@dataclass(frozen=True)
class Item:
    relpath: str
    calling_ae: str
    received_at: datetime  # naive UTC
    size: int


class Indexer:
    """Index spooled files into the store (runs in the indexer process; also used by tests)."""

    def __init__(self, store: Store, spool: Spool, *, fsync: bool = True) -> None:
        self.store = store
        self.spool = spool
        self.fsync = fsync
        self.indexed = 0

    def index_batch(self, batch: list[Item]) -> None:
        parsed = []
        dirs: set[Path] = set()
        for item in batch:
            path = self.spool.path(item.relpath)
            if not path.exists():
                continue  # purged or replaced meanwhile
            if self.fsync:
                fd = os.open(path, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
                dirs.add(path.parent)
            try:
                parsed.append((item, read_header(path)))
            except HeaderError as exc:
                self._quarantine(item, str(exc))
        for d in dirs:
            fsync_dir(d)
        if not parsed:
            return
        with self.store.transaction() as s:
            for item, header in parsed:
                rec = record_instance(s, header, item.relpath, item.size, item.calling_ae, item.received_at)
                if not rec.created and item.relpath != instance_relpath(header.sop_instance_uid):
                    # The same SOP Instance UID arrived under another name (the C-STORE command
                    # and the dataset disagreed): keep only the copy that is indexed.
                    self.spool.path(item.relpath).unlink(missing_ok=True)
        self.indexed += len(parsed)

    def _quarantine(self, item: Item, reason: str) -> None:
        dest_rel = "quarantine/" + Path(item.relpath).name
        dest = self.spool.path(dest_rel)
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(self.spool.path(item.relpath), dest)
        except FileNotFoundError:
            pass
        with self.store.transaction() as s:
            s.add(Event(entity="instance", entity_id=0, from_state=None, to_state="rejected",
                        detail=f"{dest_rel} from {item.calling_ae or 'unknown AE'}: {reason}"))
        log.warning("instance from %s quarantined as %s: %s", item.calling_ae, dest_rel, reason)

    def recover(self, window: timedelta = timedelta(minutes=10)) -> int:
        """Index spooled files the database does not know (killed between rename and index).

        Only directories and files modified since (latest indexed instance − `window`) are
        looked at, so a start-up with a large spool stays quick.
        """
        root = self.spool.root / "instances"
        if not root.is_dir():
            return 0
        with self.store.transaction() as s:
            latest = s.execute(select(func.max(Instance.received_at))).scalar_one_or_none()
        # received_at is naive UTC and mtimes POSIX seconds: compare in POSIX seconds.
        cutoff = 0.0 if latest is None else (latest - window).replace(tzinfo=UTC).timestamp()
        candidates: list[str] = []
        for bucket in root.iterdir():
            if not bucket.is_dir() or bucket.stat().st_mtime < cutoff:
                continue
            for f in bucket.iterdir():
                if f.suffix == ".dcm" and f.stat().st_mtime >= cutoff:
                    candidates.append(f"instances/{bucket.name}/{f.name}")
        if not candidates:
            return 0
        known: set[str] = set()
        with self.store.transaction() as s:
            for i in range(0, len(candidates), 500):
                chunk = candidates[i:i + 500]
                known |= set(s.execute(select(Instance.path).where(Instance.path.in_(chunk))).scalars())
        items = []
        for rel in candidates:
            if rel in known:
                continue
            st = self.spool.path(rel).stat()
            items.append(Item(rel, "", datetime.fromtimestamp(st.st_mtime, UTC).replace(tzinfo=None), st.st_size))
        for i in range(0, len(items), BATCH):
            self.index_batch(items[i:i + BATCH])
        if items:
            log.info("recovered %d spooled instances that were not indexed", len(items))
        return len(items)

    def serve(self, q: Any) -> None:
        """Index what arrives on `q` until a None arrives."""
        done = False
        while not done:
            first = q.get()
            if first is None:
                break
            batch = [first]
            while len(batch) < BATCH:
                try:
                    nxt = q.get_nowait()
                except queue_mod.Empty:
                    break
                if nxt is None:
                    done = True
                    break
                batch.append(nxt)
            self._index_with_retry(batch)

    def _index_with_retry(self, batch: list[Item]) -> None:
        delay = 0.2
        while True:
            try:
                self.index_batch(batch)
                return
            except Exception:
                # Database down or locked: the files are safe in the spool; keep trying.
                log.exception("indexing %d instances failed; retrying in %.1f s", len(batch), delay)
                time.sleep(delay)
                delay = min(delay * 2, 30.0)


def _child_main(url: str, schema: str | None, spool_root: str, q: Any, ready: Any, log_level: str) -> None:
    logging.basicConfig(level=log_level, format="%(asctime)s %(levelname)s %(name)s[indexer]: %(message)s")
    store = open_store(url, schema=schema, create=False)
    indexer = Indexer(store, Spool(Path(spool_root)))
    try:
        indexer.recover()
        ready.set()
        indexer.serve(q)
    finally:
        store.dispose()


class IndexerProcess:
    """Owns the indexer child process; `submit` is cheap enough for the C-STORE handler."""

    def __init__(self, store: Store, spool: Spool, log_level: str = "INFO") -> None:
        self.store = store
        self.spool = spool
        self.log_level = log_level.upper()
        self._ctx = mp.get_context("spawn")  # no fork: serve has threads and open sockets
        self._queue: Any = None
        self._proc: Any = None

    def start(self, timeout: float = 120.0) -> None:
        self._queue = self._ctx.Queue()
        ready = self._ctx.Event()
        self._proc = self._ctx.Process(
            target=_child_main,
            args=(self.store.url, self.store.schema, str(self.spool.root), self._queue, ready, self.log_level),
            name="hexnode-indexer",
            daemon=True,
        )
        self._proc.start()
        # Start-up recovery runs before we listen, so nothing new races with it.
        if not ready.wait(timeout):
            raise RuntimeError("the indexer process did not start")

    def submit(self, item: Item) -> None:
        self._queue.put(item)

    def alive(self) -> bool:
        return bool(self._proc is not None and self._proc.is_alive())

    def restart_if_dead(self) -> bool:
        if self._proc is not None and not self._proc.is_alive():
            log.error("indexer process exited (code %s); restarting (recovery re-indexes the spool)",
                      self._proc.exitcode)
            self.start()
            return True
        return False

    def pending(self) -> int:
        try:
            return int(self._queue.qsize()) if self._queue is not None else 0
        except NotImplementedError:
            return 0

    def stop(self, timeout: float = 60.0) -> None:
        if self._proc is None:
            return
        if self._proc.is_alive():
            self._queue.put(None)
            self._proc.join(timeout)
            if self._proc.is_alive():
                self._proc.terminate()
                self._proc.join(5)
        self._queue.close()
        self._proc = None
