"""`hexnode receive`: the C-STORE SCP, the spool writer and the header indexer. It stores, never decides.

Receive path of one instance (nothing here decodes pixel data):

1. pynetdicom writes the dataset as it arrives into ``spool/incoming/`` (chunked receive,
   ``STORE_RECV_CHUNKED_DATASET``); the temporary directory is inside the spool, so step 2 is
   a rename on one file system.
2. The C-STORE handler renames the complete file to ``instances/<aa>/<sop>.dcm`` (name from
   the SOP Instance UID if it is a valid UID, else its hash; ``aa`` spreads files over 256
   directories) and only then answers Success (0x0000): a killed process never leaves a partial
   file under a final name, nor loses an acknowledged one. A second copy of the same SOP
   Instance UID is dropped (the first complete one is kept).
3. The indexer process (``hexnode.receive.indexer``) fsyncs the file and its directory, reads
   the header (``stop_before_pixels``) and records study, series and instance in the database,
   in batches. Both are off the response path: an fsync costs 1-10 ms per instance on a busy
   disk and header parsing holds the GIL; together they made receiving 4-10 × slower
   (bench/receive.py). ``[spool] fsync_before_success = true`` fsyncs before Success instead,
   for sites that want power-cut durability at answer time. A file that is in the spool but not
   indexed (killed between 2 and 3) is indexed when the indexer starts again.

Policies (``[dicom]`` in hexnode.toml):

* Calling AE allow-list (``allowed_calling_aes``): others are rejected at association time,
  A-ASSOCIATE-RJ rejected-permanent, service-user, reason 3 "calling AE title not recognised".
  Called AE (``require_called_ae``): reason 7 "called AE title not recognised".
* ``max_associations``, optional TLS (``[dicom.tls]``).
* What one association may cost (``hexnode.receive.limits``, on the bytes as they arrive, in both
  receive modes and under TLS): ``max_pdu_size`` (the length we advertise, enforced: A-ABORT at the
  header of a longer PDU), ``max_instance_mb`` and ``min_free_disk_mb`` (A-ABORT at the fragment
  that would cross them, before it is written).
* ``fast_receive`` (default true): the receive fast path, ``hexnode.receive.fastpath``; false is
  pynetdicom's own chunked receive.
* Hostile and broken peers (``hexnode.receive.gate``): a connection waits in a separate pool until
  it has sent a valid A-ASSOCIATE-RQ (``association_request_timeout_seconds``), per-address
  connection limit, association slots only for allowed calling AEs. ``network_timeout_seconds``
  cuts an association without data for that long (a stalled P-DATA stream too: the socket times
  out in the middle of a PDU); its partial file is deleted (:meth:`Receiver.sweep_incoming`) and the
  series is marked as sent part-way, as after an A-ABORT. One rate-limited WARNING line per
  refused or broken peer (``hexnode.receive.peers``), no tracebacks for malformed input.
* Free disk below ``min_free_disk_mb`` when a complete instance arrives → C-STORE status 0xA700
  (Out of Resources); the temporary file is deleted, nothing is indexed.
* Before Success (``hexnode.receive.admission``): a deflated data set is inflated within
  ``max_instance_mb`` (else 0xA700) and stored uncompressed; a data set whose SOP Class or SOP
  Instance UID is not the command's is refused 0xA900, one without valid Study, Series and SOP
  Instance UIDs 0xC000 (as dcmtk's storescp). Each refusal is said in the association's one line.
* SOP classes: every storage SOP class in pynetdicom's ``StoragePresentationContexts`` is
  accepted (docs/conformance.md lists them, and the storage classes that are not among them),
  so nothing a PACS sends is lost silently;
  a series that is not CT (CT, Enhanced CT, Legacy Converted Enhanced CT) is indexed as
  ``rejected`` with the reason and visible in ``hexnode status``. A segmentation (Segmentation
  Storage, and Label Map Segmentation Storage, added to pynetdicom's list) is a reader's corrected
  mask: the indexer files it as a correction (``hexnode.receive.corrections``), not as a series. Transfer syntaxes: the
  uncompressed ones, deflate, and every compressed syntax whose pixel decoder is installed
  (JPEG baseline/extended/lossless, JPEG-LS, JPEG 2000, HTJ2K, RLE), so what we accept can be
  read later; a syntax without a decoder is refused at negotiation (the sender can convert).
* A dataset whose header the indexer cannot read (beyond what the handler checks) is moved to
  ``spool/quarantine/`` and recorded as an ``events`` row (entity ``instance``), since by then
  Success was answered. Receive listens whether or not its indexer starts and restarts it when it
  dies, with a back-off; a file the indexer dies on is quarantined (``hexnode.receive.indexer``).

Logs never contain patient name, ID or birth date; series are named by a short UID hash.

What happens to a series once it is indexed (completion, selection, the study's decision) is
`hexnode route`'s job (``hexnode.route.service``), a process of its own that reads the same
database; nothing here imports it. `hexnode node` (and the old `hexnode serve`) start both.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import ssl
import tempfile
import threading
import time
from typing import Any, cast

from pydicom.dataset import Dataset
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from pynetdicom import AE, StoragePresentationContexts, _config, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from hexnode.config import DicomConfig
from hexnode.receive import fastpath
from hexnode.receive.admission import InflateError, Verdict, check_identity, inflate, is_deflated
from hexnode.receive.gate import Gate, GateLimits, ScreeningHandler, ScreeningServer
from hexnode.receive.index import header_keywords
from hexnode.receive.indexer import IndexerProcess, IndexPolicy, Item, Stopped
from hexnode.receive.limits import GuardedSSLSocket, ReceiveLimits
from hexnode.receive.peers import LibraryLog, PeerLog, printable, withhold_pydicom_text
from hexnode.sop import CT_SOP_CLASSES, SEGMENTATION_SOP_CLASSES
from hexnode.store.db import Store, utcnow
from hexnode.store.process import stage_process
from hexnode.store.spool import Spool, instance_relpath, uid_hash

log = logging.getLogger(__name__)

STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_CANNOT_UNDERSTAND = 0xC000
STATUS_PROCESSING_FAILURE = 0x0110

# In this order of preference: when a context proposes several, the first of ours it lists is accepted.
_UNCOMPRESSED = [ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian]
# Seconds without a DIMSE reply before the association is aborted (network: [dicom] network_timeout_seconds).
DIMSE_TIMEOUT_SECONDS = 60.0
# Temporary files of transfers in progress: pynetdicom's NamedTemporaryFile (rx-…: the fast path's own,
# before it was cut to what earns its gain; still swept after an upgrade).
_RECEIVE_TEMP = re.compile(r"^(tmp[A-Za-z0-9_]+|rx-\d+-\d+-[0-9a-f]+)\.dcm$")
# A file in incoming/ untouched for network_timeout + this long belongs to no live transfer.
ORPHAN_GRACE_SECONDS = 10.0
TLS_MINIMUM_VERSION = ssl.TLSVersion.TLSv1_2


def accepted_transfer_syntaxes() -> list[str]:
    """Uncompressed + deflate + every compressed syntax with an installed pixel decoder."""
    from pydicom.pixels import get_decoder
    from pydicom.uid import AllTransferSyntaxes

    out = [str(ts) for ts in _UNCOMPRESSED]
    for uid in AllTransferSyntaxes:  # pydicom's public list; get_decoder says which it can decode
        if uid in out:
            continue
        try:
            if get_decoder(uid).is_available:
                out.append(str(uid))
        except Exception:  # no decoder for it, or a plugin that fails to import: not offered
            continue
    return out


def build_ae(dicom: DicomConfig) -> AE:
    """The SCP's AE: policies and presentation contexts (docs/conformance.md is generated from it)."""
    ae = AE(ae_title=dicom.ae_title)
    ae.maximum_pdu_size = dicom.max_pdu_size
    ae.maximum_associations = dicom.max_associations
    ae.require_called_aet = dicom.require_called_ae
    ae.require_calling_aet = list(dicom.allowed_calling_aes)
    ae.network_timeout = dicom.network_timeout_seconds
    # Waiting for the A-ASSOCIATE-RQ (and, as requestor only, for association replies): the gate
    # enforces the same deadline before pynetdicom sees a connection.
    ae.acse_timeout = dicom.association_request_timeout_seconds
    ae.dimse_timeout = DIMSE_TIMEOUT_SECONDS
    syntaxes = accepted_transfer_syntaxes()
    for cx in StoragePresentationContexts:
        if cx.abstract_syntax:
            ae.add_supported_context(cx.abstract_syntax, syntaxes)
    # CT in case a pynetdicom release drops one from its list; the segmentation classes because a
    # reader's corrected mask comes back as one (Label Map Segmentation is not in pynetdicom's list)
    for uid in [*CT_SOP_CLASSES, *SEGMENTATION_SOP_CLASSES]:
        if uid not in {cx.abstract_syntax for cx in ae.supported_contexts}:
            ae.add_supported_context(uid, syntaxes)
    ae.add_supported_context(Verification)
    return ae


class Receiver:
    """The SCP: pynetdicom AE + handlers; `start()` returns once it listens."""

    def __init__(self, dicom: DicomConfig, store: Store, spool: Spool, *, fsync_before_success: bool = False,
                 log_level: str = "INFO", header_keywords: tuple[str, ...] = ()) -> None:
        self.dicom = dicom
        self.store = store
        self.spool = spool
        self.fsync_before_success = fsync_before_success
        policy = IndexPolicy(header_keywords, dicom.max_instance_mb << 20, dicom.min_free_disk_mb << 20,
                             dicom.indexer_memory_mb << 20)
        self.indexer = IndexerProcess(store, spool, log_level, policy)
        self.server: Any = None
        self._disk_checked_at = float("-inf")
        self._disk_low_cached = False
        self.stored = 0
        self.duplicates = 0
        self.refused_stores = 0
        # per open association: the instances it delivered and its failed C-STOREs, so that a
        # sender that stops part-way marks the series it was sending (see `on_association_end`)
        self._sent: dict[int, tuple[list[str], list[Any]]] = {}  # [failed count, first refusal's reason]
        self._sent_lock = threading.Lock()
        self.peers = PeerLog(log, dicom.peer_log_interval_seconds)
        self._rejected: set[int] = set()  # associations already reported by on_rejected
        self.library_log = LibraryLog()
        self.gate: Gate | None = None
        self._excepthook = threading.excepthook
        self._serve_thread: threading.Thread | None = None
        self._fast = False  # this receiver installed the fast path (dicom.fast_receive)
        self._tempdir: str | None = None  # tempfile's directory before start(), given back by stop()

    def build_ae(self) -> AE:
        return build_ae(self.dicom)

    def ssl_context(self) -> ssl.SSLContext | None:
        tls = self.dicom.tls
        if not tls.enabled:
            return None
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = TLS_MINIMUM_VERSION
        ctx.sslsocket_class = GuardedSSLSocket  # the PDU and instance limits see the decrypted stream
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
        # pynetdicom's standard handlers log every PDU and DIMSE message at DEBUG; we keep its
        # logger at WARNING anyway, and unbound handlers cost nothing per message.
        _config.LOG_HANDLER_LEVEL = "none"
        self._tempdir = tempfile.tempdir
        tempfile.tempdir = str(self.spool.incoming)
        # Process-wide (pynetdicom's reactors are module code): installed for as long as a
        # receiver with fast_receive runs; another receiver in the same process shares it.
        self._fast = self.dicom.fast_receive and fastpath.install()
        if not self.dicom.fast_receive and fastpath.installed():
            log.warning("dicom.fast_receive = false, but another receiver in this process uses the fast path")
        # Recovers spooled-but-unindexed files before we listen. If it cannot start (a file in the
        # spool kills it, the database is down), receiving goes on: every file is safe in the spool
        # and the run loop keeps restarting the indexer (IndexerProcess.keep_alive), whose recovery
        # indexes them, and quarantines a file it died on (hexnode.receive.indexer).
        try:
            self.indexer.start()
        except Exception as exc:
            log.error("indexer did not start (%s); receiving anyway, retrying", exc)
        d = self.dicom
        if not d.max_pdu_size:
            log.warning("dicom.max_pdu_size = 0: the PDU length a peer claims is not limited")
        limits = GateLimits(d.association_request_timeout_seconds, d.network_timeout_seconds,
                            d.max_connections_per_address, d.max_pending_connections, d.max_associations,
                            tuple(d.allowed_calling_aes))
        gate = Gate(limits, self.peers, self.ssl_context())
        handlers: list[Any] = [
            (evt.EVT_C_STORE, self.handle_store),
            (evt.EVT_C_ECHO, self.handle_echo),
            (evt.EVT_REJECTED, self.on_rejected),
            (evt.EVT_CONN_OPEN, gate.on_conn_open),
        ]
        ae = self.build_ae()
        # The gate enforces max_associations (for allowed calling AEs only); pynetdicom's own count
        # also sees associations being rejected or ending, so it gets headroom.
        ae.maximum_associations = d.max_associations + d.max_pending_connections
        server = cast(ScreeningServer, ae.make_server(
            (d.bind, d.port), evt_handlers=handlers, server_class=ScreeningServer, request_handler=ScreeningHandler))
        server.gate = gate
        server.on_association_end = self.on_association_end
        server.limits = ReceiveLimits(d.max_pdu_size, d.max_instance_mb << 20, d.min_free_disk_mb << 20,
                                      str(self.spool.root))
        server.on_refused = self.library_log.note
        self.gate = server.gate
        self.library_log.install()
        withhold_pydicom_text()
        self._excepthook = threading.excepthook
        threading.excepthook = self._thread_died
        gate.start(server.dispatch)
        self.server = server
        self._serve_thread = threading.Thread(target=server.serve_forever, name="hexnode-accept", daemon=True)
        self._serve_thread.start()
        log.info("listening as %s on %s:%d%s", d.ae_title, d.bind, d.port, " (TLS)" if d.tls.enabled else "")

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server = None
            self.library_log.uninstall()
            threading.excepthook = self._excepthook
            # the rest of the process (a test run, `hexnode node`'s own code) must not write its
            # temporary files into a spool that may be gone
            if tempfile.tempdir == str(self.spool.incoming):
                tempfile.tempdir = self._tempdir
        if self._fast:
            fastpath.uninstall()
            self._fast = False
        self.indexer.stop()

    def _thread_died(self, args: Any) -> None:
        if not self.library_log.thread_died(args):
            self._excepthook(args)

    def on_rejected(self, event: Any) -> None:
        # Site IT needs to see who was turned away and why (AE titles and addresses are not PHI).
        req = event.assoc.requestor
        calling = str(req.ae_title).strip()
        rq = getattr(req, "primitive", None)
        called = str(getattr(rq, "called_ae_title", None) or event.assoc.acceptor.ae_title).strip()
        if self.dicom.allowed_calling_aes and calling not in self.dicom.allowed_calling_aes:
            why = "calling AE title not in dicom.allowed_calling_aes"
        elif self.dicom.require_called_ae and called != self.dicom.ae_title:
            why = f"called AE title is not {self.dicom.ae_title}"
        else:
            why = f"more than dicom.max_associations = {self.dicom.max_associations} at once"
        self.peers.warn(str(req.address), f"association to {printable(called)} rejected: {why}", calling, kind=why)
        self._rejected.add(id(event.assoc))

    def handle_echo(self, event: Any) -> int:
        return STATUS_SUCCESS

    def _track(self, event: Any, relpath: str | None, refused: str = "") -> None:
        with self._sent_lock:
            paths, failed = self._sent.setdefault(id(event.assoc), ([], [0, ""]))
        if relpath is None:
            failed[0] += 1
            failed[1] = failed[1] or refused
        else:
            paths.append(relpath)

    def on_association_end(self, assoc: Any) -> None:
        """An association's thread ended (ScreeningHandler), however it ended.

        A sender that aborted (or lost the connection, or stalled past the network timeout) or that
        had C-STOREs fail stopped part-way through what it was sending; its series must wait for
        the rest and is never analysed partial (hexnode.route.completion). Its partial file, if it was
        cut off inside an instance, is deleted. One line says what happened."""
        with self._sent_lock:
            sent = self._sent.pop(id(assoc), None)
            rejected = id(assoc) in self._rejected
            self._rejected.discard(id(assoc))
        paths, failed = sent if sent is not None else ([], [0, ""])
        cause = self.library_log.reason(assoc)
        released = bool(getattr(assoc, "is_released", False))
        aborted = bool(getattr(assoc, "is_aborted", False)) or not released
        # Whenever the node falls idle: a transfer cut off while others ran is not waited for
        # until its file is old (a released association can leave one too, e.g. a C-STORE whose
        # command pynetdicom could not use).
        self.sweep_incoming(all_idle=True)
        address = str(getattr(assoc.requestor, "address", "") or "?")
        calling = str(getattr(assoc.requestor, "ae_title", "") or "").strip()[:16] or None
        if rejected or (not aborted and not failed[0]):
            return
        if aborted and not paths and cause is None and not bool(getattr(assoc, "is_established", False)):
            if getattr(assoc.requestor, "primitive", None) is None:
                cause = "closed before its A-ASSOCIATE-RQ was read"
            else:
                return  # refused by policy, or released/aborted during negotiation: pynetdicom said
        how = (cause or "aborted the association") if aborted else f"had {failed[0]} C-STOREs fail"
        if failed[1]:  # the first refusal's status and reason (hexnode.receive.admission)
            how += (f" ({failed[0]} C-STOREs refused before, the first with {failed[1]})" if aborted
                    else f" (the first with {failed[1]})")
        if paths:
            how += f" after {len(paths)} instances"
        self.peers.warn(address, f"sender {how}" if paths else how, calling, kind="aborted" if aborted else "failed")
        if paths and (aborted or failed[0]):
            self.indexer.submit(Stopped(calling or "", utcnow(), tuple(paths), aborted, failed[0]))

    def sweep_incoming(self, *, all_idle: bool = False) -> int:
        """Delete temporary files of transfers that were cut off (nothing else deletes them).

        A file is an orphan when no association is open at all (`all_idle`: checked after
        listing, so a transfer starting meanwhile is not touched), or when it has not been written
        for network_timeout + a grace period: a live transfer writes at least that often or is cut
        off. Only the receive path's temporary files are considered (results are written there too)."""
        try:
            names = [n for n in os.listdir(self.spool.incoming) if _RECEIVE_TEMP.match(n)]
        except FileNotFoundError:
            return 0
        if not names:
            return 0
        idle = all_idle and self.gate is not None and self.gate.associations == 0
        cutoff = time.time() - (self.dicom.network_timeout_seconds + ORPHAN_GRACE_SECONDS)
        removed = 0
        for name in names:
            path = os.path.join(self.spool.incoming, name)
            try:
                if idle or os.stat(path).st_mtime < cutoff:
                    # truncated first: pynetdicom may still hold the file of an aborted transfer
                    # open, and an unlinked file's blocks are only freed when it is closed
                    os.truncate(path, 0)
                    os.unlink(path)
                    removed += 1
            except FileNotFoundError:
                continue
        if removed:
            log.info("deleted %d partial file(s) of transfers that were cut off", removed)
        return removed

    def _disk_low(self) -> bool:
        # statvfs once a second, not per instance: the answer cannot change faster than that
        # matters, and every syscall on this path costs a GIL round trip.
        now = time.monotonic()
        if now - self._disk_checked_at > 1.0:
            self._disk_low_cached = self.spool.free_mb() < self.dicom.min_free_disk_mb
            self._disk_checked_at = now
        return self._disk_low_cached

    def handle_store(self, event: Any) -> int | Dataset:
        tmp = str(event.dataset_path)
        calling_ae = str(event.assoc.requestor.ae_title).strip()[:16]
        if self._disk_low():
            _unlink(tmp)
            log.warning("C-STORE from %s refused: free disk below %d MB", calling_ae, self.dicom.min_free_disk_mb)
            self._track(event, None)
            return STATUS_OUT_OF_RESOURCES
        sop_uid = str(event.request.AffectedSOPInstanceUID or "")
        if not sop_uid:
            _unlink(tmp)
            self._track(event, None)
            return STATUS_CANNOT_UNDERSTAND
        transfer_syntax = str(event.context.transfer_syntax)
        if is_deflated(transfer_syntax):
            inflated = tmp[:-len(".dcm")] + "_inflated.dcm" if tmp.endswith(".dcm") else tmp + "_inflated.dcm"
            try:
                inflate(tmp, inflated, self.dicom.max_instance_mb << 20, self.dicom.min_free_disk_mb << 20,
                        self._free_bytes)
            except InflateError as exc:
                _unlink(inflated)
                return self._refuse(event, tmp, exc.verdict)
            except (OSError, ValueError) as exc:  # the disk filled, or a file we did not write
                _unlink(inflated)
                return self._refuse(event, tmp, Verdict(STATUS_OUT_OF_RESOURCES, f"cannot inflate: {type(exc).__name__}"))
            _unlink(tmp)
            tmp, transfer_syntax = inflated, str(ExplicitVRLittleEndian)
        verdict = check_identity(tmp, transfer_syntax, str(event.request.AffectedSOPClassUID or ""), sop_uid)
        if not verdict.ok:
            return self._refuse(event, tmp, verdict)
        relpath = instance_relpath(sop_uid)
        try:
            created = self.spool.commit_received(tmp, relpath, fsync=self.fsync_before_success)
        except OSError:
            log.exception("C-STORE from %s: could not write the spool", calling_ae)
            _unlink(tmp)
            self._track(event, None)
            return STATUS_OUT_OF_RESOURCES
        self._track(event, relpath)
        if created:
            self.stored += 1
            peer = str(getattr(event.assoc.requestor, "address", "") or "")
            self.indexer.submit(Item(relpath, calling_ae, utcnow(), -1, peer))  # size: the indexer stats
        else:
            self.duplicates += 1
            log.debug("instance %s from %s already spooled", uid_hash(sop_uid), calling_ae)
        return STATUS_SUCCESS

    def _free_bytes(self) -> int:
        st = os.statvfs(self.spool.root)
        return st.f_bavail * st.f_frsize

    def _refuse(self, event: Any, tmp: str, verdict: Verdict) -> Dataset:
        """Answer a C-STORE with `verdict`'s failure status; the file is deleted, nothing indexed."""
        _unlink(tmp)
        # said in the association's one line when it ends (on_association_end)
        self._track(event, None, f"0x{verdict.status:04X}: {verdict.reason}")
        self.refused_stores += 1
        log.debug("C-STORE refused with 0x%04X: %s", verdict.status, verdict.reason)
        rsp = Dataset()
        rsp.Status = verdict.status
        rsp.ErrorComment = verdict.reason[:64]
        return rsp


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def run_receive(args: argparse.Namespace) -> int:
    """`hexnode receive`: the SCP and its indexer process until SIGTERM/SIGINT."""
    with stage_process(args, "receive") as proc:
        cfg = proc.cfg
        receiver = Receiver(cfg.dicom, proc.store, proc.spool, fsync_before_success=cfg.spool.fsync_before_success,
                            log_level=cfg.log_level, header_keywords=header_keywords(cfg.series.selection))
        receiver.start()
        proc.beater.start()
        try:
            while not proc.stop.wait(1.0):
                receiver.indexer.keep_alive()
                receiver.sweep_incoming()
                proc.beater.beat()
        finally:
            log.info("stopping")
            receiver.stop()
    return 0
