"""`hexnode serve`: the C-STORE SCP, the spool writer, the header indexer and the series scheduler.

Receive path of one instance (nothing here decodes pixel data):

1. pynetdicom writes the dataset as it arrives into ``spool/incoming/`` (chunked receive,
   ``STORE_RECV_CHUNKED_DATASET``); the temporary directory is inside the spool, so step 2 is
   a rename on one file system.
2. The C-STORE handler fsyncs the file and renames it to ``instances/<aa>/<sop>.dcm`` (name
   from the SOP Instance UID if it is a valid UID, else its hash; ``aa`` spreads files over 256
   directories), fsyncs the directory, and only then answers Success (0x0000). A second copy of
   the same SOP Instance UID is dropped (the first complete one is kept).
3. The indexer thread reads the header (``stop_before_pixels``) and records study, series and
   instance in the database in batches. Indexing is deliberately off the response path: parsing
   a header and committing a row per instance would double the receive time. A file that is in
   the spool but not indexed (process killed between 2 and 3) is indexed at the next start
   (``Indexer.recover``), so an acknowledged instance is never lost.

Policies (``[dicom]`` in hexnode.toml):

* Calling AE allow-list (``allowed_calling_aes``): others are rejected at association time,
  A-ASSOCIATE-RJ rejected-permanent, service-user, reason 3 "calling AE title not recognised".
  Called AE (``require_called_ae``): reason 7 "called AE title not recognised".
* ``max_associations``, ``max_pdu_size`` (0 = unlimited: fastest), optional TLS (``[dicom.tls]``).
* Free disk below ``min_free_disk_mb`` → C-STORE status 0xA700 (Out of Resources); the
  temporary file is deleted, nothing is indexed.
* SOP classes: every storage SOP class is accepted, so nothing a PACS sends is lost silently;
  a series that is not CT (CT, Enhanced CT, Legacy Converted Enhanced CT) is indexed as
  ``rejected`` with the reason and visible in ``hexnode status``. Transfer syntaxes: the
  uncompressed ones, deflate, and every compressed syntax whose pixel decoder is installed
  (JPEG baseline/extended/lossless, JPEG-LS, JPEG 2000, HTJ2K, RLE), so what we accept can be
  read later; a syntax without a decoder is refused at negotiation (the sender can convert).
* A dataset whose header cannot be read (truncated, no UIDs) is moved to ``spool/quarantine/``
  and recorded as an ``events`` row (entity ``instance``), since by then Success was answered.

Logs never contain patient name, ID or birth date; series are named by a short UID hash.

The series scheduler (``hexnode.series.stable.start_scheduler(store, cfg, spool)``, owned by the
pipeline) is started by :func:`run_serve`; it returns an object with ``shutdown()``.
"""

from __future__ import annotations

import argparse
import logging
import os
import queue as queue_mod
import signal
import ssl
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from pynetdicom import AE, StoragePresentationContexts, _config, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from sqlalchemy import func, select

from hexnode.config import Config, DicomConfig, load_config
from hexnode.receive import fastpath
from hexnode.receive.index import CT_SOP_CLASSES, HeaderError, read_header, record_instance
from hexnode.receive.spool import Spool, instance_relpath, uid_hash
from hexnode.store.db import Event, Instance, Store, open_store, utcnow

log = logging.getLogger(__name__)

STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_CANNOT_UNDERSTAND = 0xC000
STATUS_PROCESSING_FAILURE = 0x0110

_UNCOMPRESSED = [ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian]


def accepted_transfer_syntaxes() -> list[str]:
    """Uncompressed + deflate + every compressed syntax with an installed pixel decoder."""
    from pydicom.pixels import get_decoder
    from pydicom.pixels.decoders.base import _PIXEL_DATA_DECODERS

    out = [str(ts) for ts in _UNCOMPRESSED]
    for uid in _PIXEL_DATA_DECODERS:
        if uid in out:
            continue
        try:
            if get_decoder(uid).is_available:
                out.append(str(uid))
        except Exception:  # a decoder plugin that fails to import is simply not offered
            continue
    return out


@dataclass
class _Item:
    relpath: str
    calling_ae: str
    received_at: datetime
    size: int


@dataclass
class Indexer:
    """Indexes spooled files in batches on its own thread (see module docstring, step 3)."""

    store: Store
    spool: Spool
    batch_size: int = 200
    _queue: queue_mod.Queue[_Item | None] = field(default_factory=queue_mod.Queue)
    _thread: threading.Thread | None = None
    indexed: int = 0

    def submit(self, item: _Item) -> None:
        self._queue.put(item)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="hexnode-indexer", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout)

    def pending(self) -> int:
        return self._queue.qsize()

    def _run(self) -> None:
        done = False
        while not done:
            first = self._queue.get()
            if first is None:
                break
            batch = [first]
            while len(batch) < self.batch_size:
                try:
                    nxt = self._queue.get_nowait()
                except queue_mod.Empty:
                    break
                if nxt is None:
                    done = True
                    break
                batch.append(nxt)
            self._index_with_retry(batch)

    def _index_with_retry(self, batch: list[_Item]) -> None:
        delay = 0.2
        while True:
            try:
                self.index_batch(batch)
                return
            except Exception:
                # The database is down or locked: the files are safe in the spool; keep trying.
                log.exception("indexing %d instances failed; retrying in %.1f s", len(batch), delay)
                time.sleep(delay)
                delay = min(delay * 2, 30.0)

    def index_batch(self, batch: list[_Item]) -> None:
        parsed = []
        for item in batch:
            path = self.spool.path(item.relpath)
            try:
                parsed.append((item, read_header(path)))
            except HeaderError as exc:
                self._quarantine(item, str(exc))
        if not parsed:
            return
        with self.store.transaction() as s:
            for item, header in parsed:
                rec = record_instance(s, header, item.relpath, item.size, item.calling_ae, item.received_at)
                if not rec.created and header.sop_instance_uid:
                    expected = instance_relpath(header.sop_instance_uid)
                    if item.relpath != expected:
                        # Same SOP Instance UID stored under another name (command and dataset
                        # UIDs disagreed): keep the indexed copy only.
                        self.spool.path(item.relpath).unlink(missing_ok=True)
        self.indexed += len(parsed)

    def _quarantine(self, item: _Item, reason: str) -> None:
        src = self.spool.path(item.relpath)
        dest_rel = "quarantine/" + Path(item.relpath).name
        dest = self.spool.path(dest_rel)
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(src, dest)
        except FileNotFoundError:
            pass
        with self.store.transaction() as s:
            s.add(Event(entity="instance", entity_id=0, from_state=None, to_state="rejected",
                        detail=f"{dest_rel} from {item.calling_ae}: {reason}"))
        log.warning("instance from %s quarantined as %s: %s", item.calling_ae, dest_rel, reason)

    def recover(self, window: timedelta = timedelta(minutes=10)) -> int:
        """Index spooled files the database does not know (a crash between rename and index)."""
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
        with self.store.transaction() as s:
            known = set(s.execute(select(Instance.path).where(Instance.path.in_(candidates))).scalars())
        missing = [c for c in candidates if c not in known]
        items = []
        for rel in missing:
            st = self.spool.path(rel).stat()
            items.append(_Item(rel, "", datetime.fromtimestamp(st.st_mtime, UTC).replace(tzinfo=None), st.st_size))
        for i in range(0, len(items), self.batch_size):
            self.index_batch(items[i:i + self.batch_size])
        if items:
            log.info("recovered %d spooled instances that were not indexed", len(items))
        return len(items)


class Receiver:
    """The SCP: pynetdicom AE + handlers; `start()` returns once it listens."""

    def __init__(self, dicom: DicomConfig, store: Store, spool: Spool) -> None:
        self.dicom = dicom
        self.store = store
        self.spool = spool
        self.indexer = Indexer(store, spool)
        self.server: Any = None
        self.stored = 0
        self.duplicates = 0

    def build_ae(self) -> AE:
        ae = AE(ae_title=self.dicom.ae_title)
        ae.maximum_pdu_size = self.dicom.max_pdu_size
        ae.maximum_associations = self.dicom.max_associations
        ae.require_called_aet = self.dicom.require_called_ae
        ae.require_calling_aet = list(self.dicom.allowed_calling_aes)
        ae.network_timeout = 60
        ae.dimse_timeout = 60
        syntaxes = accepted_transfer_syntaxes()
        for cx in StoragePresentationContexts:
            if cx.abstract_syntax:
                ae.add_supported_context(cx.abstract_syntax, syntaxes)
        for uid in CT_SOP_CLASSES:  # in case a pynetdicom release drops one from its list
            if uid not in {cx.abstract_syntax for cx in ae.supported_contexts}:
                ae.add_supported_context(uid, syntaxes)
        ae.add_supported_context(Verification)
        return ae

    def ssl_context(self) -> ssl.SSLContext | None:
        tls = self.dicom.tls
        if not tls.enabled:
            return None
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(tls.cert_file, tls.key_file)
        if tls.ca_file:
            ctx.load_verify_locations(tls.ca_file)
        ctx.verify_mode = ssl.CERT_REQUIRED if tls.require_client_cert else (
            ssl.CERT_OPTIONAL if tls.ca_file else ssl.CERT_NONE)
        return ctx

    def start(self) -> None:
        self.spool.prepare()
        # Chunked receive writes into tempfile's directory: point it into the spool so that
        # committing a file is a rename (pynetdicom offers no per-AE setting for either).
        _config.STORE_RECV_CHUNKED_DATASET = True
        tempfile.tempdir = str(self.spool.incoming)
        fastpath.install()
        self.indexer.recover()
        self.indexer.start()
        handlers: list[Any] = [(evt.EVT_C_STORE, self.handle_store), (evt.EVT_C_ECHO, self.handle_echo)]
        ae = self.build_ae()
        self.server = ae.start_server(
            (self.dicom.bind, self.dicom.port), block=False, evt_handlers=handlers,
            ssl_context=self.ssl_context(),
        )
        log.info("listening as %s on %s:%d%s", self.dicom.ae_title, self.dicom.bind, self.dicom.port,
                 " (TLS)" if self.dicom.tls.enabled else "")

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server = None
        self.indexer.stop()

    def handle_echo(self, event: Any) -> int:
        return STATUS_SUCCESS

    def handle_store(self, event: Any) -> int:
        tmp = Path(event.dataset_path)
        calling_ae = str(event.assoc.requestor.ae_title).strip()[:16]
        if self.spool.free_mb() < self.dicom.min_free_disk_mb:
            tmp.unlink(missing_ok=True)
            log.warning("C-STORE from %s refused: free disk below %d MB", calling_ae, self.dicom.min_free_disk_mb)
            return STATUS_OUT_OF_RESOURCES
        sop_uid = str(event.request.AffectedSOPInstanceUID or "")
        if not sop_uid:
            tmp.unlink(missing_ok=True)
            return STATUS_CANNOT_UNDERSTAND
        relpath = instance_relpath(sop_uid)
        try:
            size = tmp.stat().st_size
            _, created = self.spool.commit_file(tmp, relpath)
        except OSError:
            log.exception("C-STORE from %s: could not write the spool", calling_ae)
            tmp.unlink(missing_ok=True)
            return STATUS_OUT_OF_RESOURCES
        if created:
            self.stored += 1
            self.indexer.submit(_Item(relpath, calling_ae, utcnow(), size))
        else:
            self.duplicates += 1
            log.debug("instance %s from %s already spooled", uid_hash(sop_uid), calling_ae)
        return STATUS_SUCCESS


def _setup_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # pynetdicom's INFO/DEBUG output can include dataset summaries: keep it to warnings.
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)


def run_serve(args: argparse.Namespace) -> int:
    cfg: Config = load_config(getattr(args, "config", None))
    _setup_logging(cfg.log_level)
    store = open_store(cfg.database_url)
    spool = Spool(cfg.spool_path)
    receiver = Receiver(cfg.dicom, store, spool)
    stop = threading.Event()

    def _signal(signum: int, _frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _signal)
    signal.signal(signal.SIGINT, _signal)
    receiver.start()
    scheduler = _start_scheduler(cfg, store, spool)
    try:
        while not stop.wait(1.0):
            pass
    finally:
        log.info("stopping")
        if scheduler is not None:
            scheduler.shutdown()
        receiver.stop()
        store.dispose()
    return 0


def _start_scheduler(cfg: Config, store: Store, spool: Spool) -> Any:
    try:
        from hexnode.series import stable
    except ImportError:
        log.warning("hexnode.series.stable is not available: series will not be completed by this process")
        return None
    start = getattr(stable, "start_scheduler", None)
    if start is None:
        log.warning("hexnode.series.stable has no start_scheduler: series will not be completed")
        return None
    return start(store, cfg, spool)
