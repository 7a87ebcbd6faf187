"""The header indexer of `hexnode receive`, in its own process.

The C-STORE handler checks the data set's UIDs, spools it (rename into place) and hands its spool path to this
process through a queue; here each file is fsynced (with its directory), its header read with
``stop_before_pixels`` and recorded in the database, in batches of up to 200 per transaction.

Why a process: header parsing and ORM inserts are CPU-bound Python; in a thread they hold the
GIL while pynetdicom's reactors wait to answer the next C-STORE, which more than doubled the
receive time of a 320-instance series. (The series-completion scheduler, which also reads the
database every ``check_interval_seconds``, is `hexnode route`: a process of its own, never beside
the SCP.) Why it is safe: a file is complete in the spool before Success is answered; if this
process dies (or the queue is lost with receive), ``Indexer.recover`` indexes every spooled file
the database does not know when the indexer starts again.

A file whose header cannot be read (truncated, not DICOM, no UIDs, UIDs that are not UIDs or
differ from the command's) is moved to ``spool/quarantine/`` and recorded as an ``events`` row
(entity ``instance``) with the reason; so is a file the database refuses a row for.

A file must never stop indexing, nor its restart. The process runs under a limit on its data
(RLIMIT_DATA: ``[dicom] indexer_memory_mb`` beyond what it holds after start-up): a header that
needs more fails with MemoryError and is quarantined. If the process dies anyway (killed by the kernel's OOM killer,
or by receive's watchdog when one batch's headers take longer than ``PARSE_DEADLINE_SECONDS``),
the file named in ``spool/indexing`` (the batch being parsed, written before parsing) tells the
next start what it died on: a batch is parsed again one file at a time, and a file it died on
alone ``MAX_TRIES`` times is quarantined ("the indexer died reading it") instead of being read a
third time. Recovery then never loops on the same file.
"""

from __future__ import annotations

import dataclasses
import fcntl
import logging
import multiprocessing as mp
import os
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import DisconnectionError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from hexnode.receive.corrections import file_correction
from hexnode.receive.index import Arrival, HeaderError, index_header, record_instances
from hexnode.receive.peers import withhold_pydicom_text
from hexnode.runtime import setup_logging
from hexnode.sop import is_segmentation
from hexnode.store.db import Event, Instance, Series, Store, open_store
from hexnode.store.spool import Spool, fsync_dir, fsync_file, instance_relpath, uid_hash

log = logging.getLogger(__name__)

BATCH = 200
MARKER = "indexing"  # in the spool root: the batch being parsed (see the module doc)
MAX_TRIES = 2  # deaths on one file alone before it is quarantined
PARSE_DEADLINE_SECONDS = 300.0  # one batch's headers parsed in longer than this: the indexer is hung
# Database errors worth retrying (down, locked, connection lost); any other error of a batch is
# looked for file by file and the file the database refuses is quarantined.
TRANSIENT = (OperationalError, InterfaceError, DisconnectionError, PoolTimeout, OSError)


@dataclass(frozen=True)
class IndexPolicy:
    """What the indexer needs from the configuration."""

    header_keywords: tuple[str, ...] = ()  # series-header keywords named by site rules (index.header_keywords)
    max_instance_bytes: int = 1 << 30  # a deflated file spooled by an older version: inflated up to this
    min_free_bytes: int = 0
    memory_bytes: int = 0  # RLIMIT_DATA of the indexer process; 0: not limited


@dataclass(frozen=True)
class Item:
    relpath: str
    calling_ae: str
    received_at: datetime  # naive UTC
    size: int  # bytes; -1: not known yet (the indexer stats the file)
    peer: str = ""  # the sender's address (recorded for a correction; "" when recovered from the spool)

    # A tab-separated line: cheaper than pickle, and none of the fields can contain a tab
    # (relpath is built from validated or hashed UIDs, AE titles are checked by pynetdicom).
    def encode(self) -> bytes:
        ae = "".join(c if c.isprintable() and c != "\t" else " " for c in self.calling_ae)
        peer = "".join(c for c in self.peer if c.isprintable() and c != "\t")
        return f"{self.relpath}\t{ae}\t{self.received_at.isoformat()}\t{self.size}\t{peer}".encode()

    @classmethod
    def decode(cls, data: bytes) -> Item:
        relpath, ae, at, size, *rest = data.decode().split("\t")  # 4 fields: a marker an older version wrote
        return cls(relpath, ae, datetime.fromisoformat(at), int(size), rest[0] if rest else "")


@dataclass(frozen=True)
class Stopped:
    """A sender stopped part-way: an association was aborted, or ended with failed C-STOREs.

    Sent after the instances of that association, so the indexer has recorded them when it marks
    their series."""

    calling_ae: str
    at: datetime  # naive UTC
    relpaths: tuple[str, ...]  # every instance that association delivered (duplicates included)
    aborted: bool  # True: A-ABORT / connection lost; False: released after failed C-STOREs
    failed_stores: int = 0

    PREFIX = b"STOPPED\t"

    def encode(self) -> bytes:
        ae = self.calling_ae.replace("\t", " ")
        return (self.PREFIX + f"{ae}\t{self.at.isoformat()}\t{int(self.aborted)}\t{self.failed_stores}\t"
                f"{chr(31).join(self.relpaths)}".encode())

    @classmethod
    def decode(cls, data: bytes) -> Stopped:
        ae, at, aborted, failed, paths = data[len(cls.PREFIX):].decode().split("\t")
        return cls(ae, datetime.fromisoformat(at), tuple(p for p in paths.split(chr(31)) if p), aborted == "1",
                   int(failed))

    def note(self, count: int) -> str:
        """What the not-analysed report says, for a series `count` of whose instances arrived."""
        if self.aborted:
            return f"{count} instances arrived before the association was aborted"
        return f"{count} instances arrived on an association that ended with {self.failed_stores} failed C-STOREs"


class Indexer:
    """Index spooled files into the store (runs in the indexer process; also used by tests)."""

    def __init__(self, store: Store, spool: Spool, *, fsync: bool = True, policy: IndexPolicy | None = None) -> None:
        self.store = store
        self.spool = spool
        self.fsync = fsync
        self.policy = policy or IndexPolicy()
        self.indexed = 0
        self.quarantined = 0

    @property
    def marker(self) -> Path:
        return self.spool.root / MARKER

    def index_batch(self, batch: list[Item], tries: int = 1) -> None:
        parsed = []
        dirs: set[Path] = set()
        present = []
        for item in batch:
            path = self.spool.path(item.relpath)
            try:
                size = path.stat().st_size
            except FileNotFoundError:
                continue  # purged or replaced meanwhile
            if item.size < 0:
                item = dataclasses.replace(item, size=size)
            present.append(item)
        if not present:
            return
        self._mark(present, tries)
        policy = self.policy
        try:
            for item in present:
                path = self.spool.path(item.relpath)
                try:
                    if self.fsync:
                        fsync_file(path)
                        dirs.add(path.parent)
                    header = index_header(path, policy.header_keywords, max_bytes=policy.max_instance_bytes,
                                          min_free=policy.min_free_bytes)
                except HeaderError as exc:
                    self._quarantine(item, str(exc))
                    continue
                except FileNotFoundError:
                    continue
                parsed.append((item, header))
        finally:  # only a death while parsing leaves it behind
            self.marker.unlink(missing_ok=True)
        for d in dirs:
            fsync_dir(d)
        if not parsed:
            return
        filed: list[str] = []
        with self.store.transaction() as s:
            images = []
            for item, header in parsed:
                if is_segmentation(header.sop_class_uid):
                    # a reader's corrected mask (or hexnode's own SEG come back): filed for the
                    # label step, never a series of its own
                    file_correction(s, self.spool, relpath=item.relpath, sop_uid=header.sop_instance_uid,
                                    sop_class_uid=header.sop_class_uid, calling_ae=item.calling_ae,
                                    peer=item.peer, received_at=item.received_at)
                    filed.append(item.relpath)
                else:
                    images.append(Arrival(header, item.relpath, item.size, item.calling_ae, item.received_at))
            recorded = record_instances(s, images, policy.header_keywords)
            for arrival, rec in zip(images, recorded, strict=True):
                if not rec.created and arrival.relpath != instance_relpath(arrival.header.sop_instance_uid):
                    # The same SOP Instance UID arrived under another name (the C-STORE command
                    # and the dataset disagreed): keep only the copy that is indexed.
                    self.spool.path(arrival.relpath).unlink(missing_ok=True)
        for relpath in filed:  # linked under corrections/ and recorded: the instances/ name goes
            self.spool.path(relpath).unlink(missing_ok=True)
        self.indexed += len(parsed)

    def _mark(self, batch: list[Item], tries: int) -> None:
        # Written (not fsynced: after a power cut there is no death to explain) and renamed into
        # place, so a reader never sees half of it.
        tmp = self.marker.with_name(MARKER + ".tmp")
        tmp.write_bytes(f"tries {tries}\n".encode() + b"\n".join(item.encode() for item in batch))
        os.replace(tmp, self.marker)

    def resume(self) -> int:
        """At start: the batch a dead indexer was parsing (`spool/indexing`), if any, one file at a
        time; a file it died on alone MAX_TRIES times is quarantined. Returns the files handled."""
        try:
            lines = self.marker.read_bytes().split(b"\n")
        except FileNotFoundError:
            return 0
        try:
            tries = int(lines[0].split()[1])
            items = [Item.decode(line) for line in lines[1:] if line]
        except (IndexError, ValueError, UnicodeDecodeError):
            self.marker.unlink(missing_ok=True)
            return 0
        if len(items) == 1 and tries >= MAX_TRIES:
            self._quarantine(items[0], f"the indexer process died reading its header {tries} times "
                                       f"(out of memory, or it took longer than {PARSE_DEADLINE_SECONDS:g} s)")
            self.marker.unlink(missing_ok=True)
            return 1
        log.warning("the indexer stopped while reading %d file(s); reading them again one at a time", len(items))
        for item in items:
            self._index_with_retry([item], tries + 1)
        self.marker.unlink(missing_ok=True)
        return len(items)

    def mark_stopped(self, notice: Stopped) -> list[str]:
        """Mark the series `notice`'s instances belong to as sent part-way; returns their UIDs."""
        marked = []
        with self.store.transaction() as s:
            counts: dict[int, int] = {}
            for i in range(0, len(notice.relpaths), 500):
                chunk = list(notice.relpaths[i:i + 500])
                for sid in s.execute(select(Instance.series_id).where(Instance.path.in_(chunk))).scalars():
                    counts[sid] = counts.get(sid, 0) + 1
            for sid, count in counts.items():
                series = s.get(Series, sid)
                if series is None:
                    continue
                note = notice.note(count)
                series.aborted_at = notice.at
                series.aborted_note = note
                s.add(Event(entity="series", entity_id=sid, from_state=series.state, to_state=series.state,
                            detail=f"sender {notice.calling_ae or 'unknown AE'} stopped part-way: {note}"))
                log.warning("series %s: sender %s stopped part-way: %s", uid_hash(series.series_uid),
                            notice.calling_ae or "unknown AE", note)
                marked.append(series.series_uid)
        return marked

    def _quarantine(self, item: Item, reason: str) -> None:
        self.quarantined += 1
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
        log.warning("instance from %s quarantined as %s: %s", item.calling_ae or "unknown AE", dest_rel, reason)

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

    def serve(self, conn: Any) -> None:
        """Index what arrives on the pipe `conn` until an empty message (or the pipe closes)."""
        done = False
        while not done:
            try:
                first = conn.recv_bytes()
            except EOFError:  # receive is gone: nothing more will come
                break
            if not first:
                break
            stopped: list[Stopped] = []
            batch = []
            msg: bytes | None = first
            while msg is not None:
                if msg.startswith(Stopped.PREFIX):
                    # the association's instances came before this notice: index them first
                    stopped.append(Stopped.decode(msg))
                    break
                batch.append(Item.decode(msg))
                msg = None
                if len(batch) < BATCH and conn.poll(0):
                    try:
                        msg = conn.recv_bytes()
                    except EOFError:
                        done = True
                        break
                    if not msg:
                        done = True
                        break
            if batch:
                self._index_with_retry(batch)
            for notice in stopped:
                self._with_retry(lambda n=notice: self.mark_stopped(n), "marking a stopped sender's series")

    def _with_retry(self, fn: Any, what: str) -> None:
        # Database down or locked: the files are safe in the spool; keep trying.
        delay = 0.2
        while True:
            try:
                fn()
                return
            except Exception:
                log.exception("%s failed; retrying in %.1f s", what, delay)
                time.sleep(delay)
                delay = min(delay * 2, 30.0)

    def _index_with_retry(self, batch: list[Item], tries: int = 1) -> None:
        """Index `batch`, retrying while the database is unavailable. Any other error is one
        file's doing (a value the database refuses): the batch is indexed file by file and the
        file that fails alone is quarantined, so it cannot hold up the files after it."""
        delay = 0.2
        while True:
            try:
                self.index_batch(batch, tries)
                return
            except TRANSIENT:
                log.exception("indexing %d instances failed; retrying in %.1f s", len(batch), delay)
                time.sleep(delay)
                delay = min(delay * 2, 30.0)
            except Exception as exc:
                if len(batch) > 1:
                    log.warning("indexing %d instances failed (%s); indexing them one by one",
                                len(batch), type(exc).__name__)
                    for item in batch:
                        self._index_with_retry([item], tries)
                else:
                    self._quarantine(batch[0], f"the database refused its row ({type(exc).__name__})")
                return


def _data_bytes() -> int:
    """This process's data segment and private writable mappings now (what RLIMIT_DATA counts)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmData:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _child_main(url: str, schema: str | None, spool_root: str, conn: Any, ready: Any, log_level: str,
                policy: IndexPolicy) -> None:
    setup_logging(log_level, "%(asctime)s %(levelname)s %(name)s[indexer]: %(message)s")
    withhold_pydicom_text()
    if policy.memory_bytes:
        import resource

        # what this process may allocate (heap and anonymous maps) beyond what it holds now, after
        # its imports (numpy's BLAS threads alone grow with the core count): a header past it is
        # a MemoryError, quarantined, instead of the kernel killing a process for it
        limit = _data_bytes() + policy.memory_bytes
        resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
    store = open_store(url, schema=schema, create=False)
    spool = Spool(Path(spool_root))
    indexer = Indexer(store, spool, policy=policy)
    try:
        indexer.resume()
        indexer.recover()
        ready.set()
        indexer.serve(conn)
    finally:
        store.dispose()


class IndexerProcess:
    """Owns the indexer child process; `submit` is cheap enough for the C-STORE handler.

    Items travel over a one-way pipe written directly by the handler thread (an
    ``multiprocessing.Queue`` would wake a feeder thread per instance, competing for the GIL).
    The pipe buffer is raised to 1 MiB (about 8,000 instances); when the indexer falls further
    behind, ``submit`` blocks and the receive slows down to its pace instead of using memory.
    """

    def __init__(self, store: Store, spool: Spool, log_level: str = "INFO", policy: IndexPolicy | None = None) -> None:
        self.store = store
        self.spool = spool
        self.log_level = log_level.upper()
        self.policy = policy or IndexPolicy()
        self._ctx = mp.get_context("spawn")  # no fork: receive has threads and open sockets
        self._writer: Any = None
        self._proc: Any = None
        self._lock = threading.Lock()
        self._retry_at = 0.0  # monotonic time of the next start attempt after a failed one
        self._retry_delay = 1.0
        self._unavailable_logged = False
        self.restarts = 0

    def start(self, timeout: float = 120.0) -> None:
        reader, writer = self._ctx.Pipe(duplex=False)
        try:
            fcntl.fcntl(writer.fileno(), 1031, 1 << 20)  # F_SETPIPE_SZ
        except OSError:
            pass  # the default 64 KiB still works, it just blocks sooner
        ready = self._ctx.Event()
        self._proc = self._ctx.Process(
            target=_child_main,
            args=(self.store.url, self.store.schema, str(self.spool.root), reader, ready, self.log_level, self.policy),
            name="hexnode-indexer",
            daemon=True,
        )
        self._proc.start()
        reader.close()
        with self._lock:
            self._writer = writer
        # Start-up recovery runs before we listen, so nothing new races with it.
        deadline = time.monotonic() + timeout
        while not ready.wait(0.2):
            if not self._proc.is_alive() or time.monotonic() > deadline:
                if self._proc.is_alive():  # its recovery hangs: the marker names the file (see resume)
                    self._proc.kill()
                    self._proc.join(5)
                raise RuntimeError(f"the indexer process did not start (exit code {self._proc.exitcode})")
        self._unavailable_logged = False

    def submit(self, item: Item | Stopped) -> None:
        data = item.encode()
        try:
            with self._lock:
                if self._writer is None:
                    raise OSError("no indexer")
                self._writer.send_bytes(data)
        except OSError:
            # The indexer died; the file is safe in the spool and the restarted indexer's
            # recovery scan indexes it. Said once per outage, not per instance.
            if isinstance(item, Item):
                if not self._unavailable_logged:
                    self._unavailable_logged = True
                    log.warning("indexer unavailable; instance %s and what follows will be indexed by recovery",
                                uid_hash(item.relpath))
            else:  # the series' completion then takes the ordinary path; logged for IT
                log.warning("indexer unavailable; sender %s stopped part-way: %s", item.calling_ae,
                            item.note(len(item.relpaths)))

    def alive(self) -> bool:
        return bool(self._proc is not None and self._proc.is_alive())

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def keep_alive(self) -> bool:
        """Called about once a second by `hexnode receive`: restart a dead indexer (backing off
        while it keeps failing to start, never raising), and kill one that has been parsing one
        batch for longer than PARSE_DEADLINE_SECONDS (its next start quarantines what hung it).
        Returns True when it (re)started one."""
        if self._proc is not None and self._proc.is_alive():
            try:
                age = time.time() - (self.spool.root / MARKER).stat().st_mtime
            except FileNotFoundError:
                return False
            if age > PARSE_DEADLINE_SECONDS:
                log.error("indexer has been reading one batch of headers for %.0f s; restarting it", age)
                self._proc.kill()
                self._proc.join(5)
            else:
                return False
        now = time.monotonic()
        if now < self._retry_at:
            return False
        if self._proc is not None:
            log.error("indexer process exited (code %s); restarting (recovery re-indexes the spool)",
                      self._proc.exitcode)
        with self._lock:  # a submit meanwhile finds no indexer; the new one's recovery indexes its file
            if self._writer is not None:
                self._writer.close()
                self._writer = None
        self.restarts += 1
        try:
            self.start()
        except Exception as exc:
            self._retry_at = time.monotonic() + self._retry_delay
            log.error("indexer did not start (%s); next attempt in %.0f s", exc, self._retry_delay)
            self._retry_delay = min(self._retry_delay * 2, 60.0)
            return False
        self._retry_delay = 1.0
        return True

    def stop(self, timeout: float = 60.0) -> None:
        if self._proc is None:
            return
        if self._proc.is_alive():
            try:
                with self._lock:
                    self._writer.send_bytes(b"")
            except OSError:
                pass
            self._proc.join(timeout)
            if self._proc.is_alive():
                self._proc.terminate()
                self._proc.join(5)
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        self._proc = None
