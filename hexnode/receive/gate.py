"""The door in front of pynetdicom: what a connection must show before it gets an association slot.

pynetdicom gives every accepted TCP connection an association thread at once, counts it against
``maximum_associations`` and waits ``acse_timeout`` (30 s) for its A-ASSOCIATE-RQ; a PDU it cannot
decode costs a traceback in the log. So 10 connections that send nothing lock every real sender out,
and a port scanner that reconnects keeps the node deaf. Here a connection first waits in
a separate, bounded pool, watched by one thread (epoll, no thread per connection), until its first
PDU is complete and read without consuming it (``MSG_PEEK``). Then:

* not an A-ASSOCIATE-RQ, an implausible length, a request pynetdicom's own PDU decoder cannot read,
  or nothing complete within ``association_request_timeout_seconds``: the connection is closed
  at once (one rate-limited WARNING line, see :class:`PeerLog`);
* from an address with ``max_connections_per_address`` connections open already: closed at accept;
* the pool full (``max_pending_connections``): its oldest member is dropped, so a new connection
  is always looked at; a real sender sends its request within milliseconds of connecting;
* a request from a calling AE that may associate, while ``max_associations`` associations are
  open: answered A-ASSOCIATE-RJ (transient, local limit exceeded) and closed;
* otherwise the socket goes to pynetdicom (``ThreadingMixIn.process_request``), which reads the
  same bytes again and runs the association. A calling AE outside ``allowed_calling_aes`` is
  handed over too, for pynetdicom's permanent rejection; it holds no slot.

So the association slots are only ever held by senders that presented a valid request from an
allowed calling AE; unknown or broken peers compete only among themselves, in the pool.

With TLS the handshake is done here (non-blocking, under the same deadline) and the request is
left to pynetdicom: a TLS socket cannot be peeked at. The A-ASSOCIATE-RQ deadline then holds
through pynetdicom's ``acse_timeout`` and the socket timeout set at hand-over.

Everything here uses documented interfaces: ``AE.make_server(server_class=...,
request_handler=...)``, subclasses of pynetdicom's public ``ThreadedAssociationServer`` and
``RequestHandler``, socketserver's override points, and pynetdicom's PDU classes to decode and
encode. Nothing in pynetdicom is patched.
"""

from __future__ import annotations

import logging
import select
import socket
import socketserver
import ssl
import struct
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pynetdicom.pdu import A_ASSOCIATE_RJ, A_ASSOCIATE_RQ
from pynetdicom.transport import RequestHandler, ThreadedAssociationServer

from hexnode.receive.limits import GuardedSocket, PduGuard, ReceiveLimits
from hexnode.receive.peers import PeerLog

log = logging.getLogger(__name__)

# An A-ASSOCIATE-RQ is read in full before hand-over only up to this size (it must fit in the socket's
# receive buffer without our reading it; real ones are 1-20 KiB). Bigger ones (up to the cap) get
# only their header checked and are decoded by pynetdicom.
PEEK_LIMIT = 48 * 1024
MAX_REQUEST_LENGTH = 1 << 20  # no real A-ASSOCIATE-RQ comes near 1 MiB
MIN_REQUEST_LENGTH = 68  # the fixed fields: version, reserved, called/calling AE, reserved
A_ASSOCIATE_RQ_TYPE = 0x01


@dataclass(frozen=True)
class GateLimits:
    request_timeout: float
    network_timeout: float
    per_address: int
    pending: int
    associations: int
    allowed_calling_aes: tuple[str, ...] = ()

    def allowed(self, calling_ae: str) -> bool:
        return not self.allowed_calling_aes or calling_ae in self.allowed_calling_aes


@dataclass(eq=False)
class _Pending:
    sock: socket.socket
    address: str
    port: int
    deadline: float
    tls: bool
    handshaken: bool = False
    hangup: bool = False


@dataclass
class _Counts:
    by_address: dict[str, int] = field(default_factory=dict)
    associations: int = 0


class Gate:
    """The pending pool, the per-address counts and the association slots (see the module doc)."""

    def __init__(self, limits: GateLimits, peers: PeerLog, ssl_context: ssl.SSLContext | None) -> None:
        self.limits = limits
        self.peers = peers
        self.ssl_context = ssl_context
        self._dispatch: Callable[[socket.socket, tuple[Any, ...]], None] | None = None
        # EVT_CONN_OPEN fires in the thread of the connection's ScreeningHandler: hands it the association
        self.opened = threading.local()
        self._warned: set[str] = set()
        self._lock = threading.Lock()
        self._counts = _Counts()
        # handed-over connections that hold an association slot (allowed calling AE, or not known yet)
        self._counted: set[tuple[str, int]] = set()
        self._pending: OrderedDict[int, _Pending] = OrderedDict()  # fd -> connection, oldest first
        self._epoll = select.epoll()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._epoll.register(self._wake_r.fileno(), select.EPOLLIN)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="hexnode-gate", daemon=True)
        self.refused = 0

    # --- counts ------------------------------------------------------------------------------------
    @property
    def associations(self) -> int:
        with self._lock:
            return self._counts.associations

    @property
    def pending(self) -> int:
        with self._lock:
            return len(self._pending)

    def _release(self, address: str, port: int | None = None) -> None:
        with self._lock:
            n = self._counts.by_address.get(address, 0) - 1
            if n > 0:
                self._counts.by_address[address] = n
            else:
                self._counts.by_address.pop(address, None)
            if port is not None and (address, port) in self._counted:
                self._counted.discard((address, port))
                self._counts.associations -= 1

    def association_ended(self, address: str, port: int) -> None:
        """Called once for every connection handed over, when its association thread has ended."""
        self._release(address, port)

    # --- life cycle --------------------------------------------------------------------------------
    def start(self, dispatch: Callable[[socket.socket, tuple[Any, ...]], None]) -> None:
        """Start watching; screened connections go to `dispatch` (ScreeningServer.dispatch)."""
        self._dispatch = dispatch
        self._thread.start()

    def on_conn_open(self, event: Any) -> None:
        """EVT_CONN_OPEN handler: hand the new association to the ScreeningHandler of this thread."""
        self.opened.assoc = event.assoc

    def warn_once(self, message: str) -> None:
        if message not in self._warned:
            self._warned.add(message)
            log.warning("%s", message)

    def stop(self) -> None:
        self._stop.set()
        self._wake()
        self._thread.join(5)
        with self._lock:
            pending = list(self._pending.values())
            self._pending.clear()
        for conn in pending:
            _close(conn.sock)
        self._epoll.close()
        self._wake_r.close()
        self._wake_w.close()

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"\0")
        except OSError:
            pass

    # --- admission ---------------------------------------------------------------------------------
    def admit(self, sock: socket.socket, client_address: tuple[Any, ...]) -> None:
        """A connection accepted by the listener (runs in the accept loop: must not block)."""
        address, port = str(client_address[0]), int(client_address[1])
        evicted: _Pending | None = None
        with self._lock:
            n = self._counts.by_address.get(address, 0)
            if n >= self.limits.per_address:
                over = True
            else:
                over = False
                self._counts.by_address[address] = n + 1
                if len(self._pending) >= self.limits.pending:
                    _, evicted = self._pending.popitem(last=False)
        if over:
            self._refuse_socket(sock, address, f"closed at accept: more than dicom.max_connections_per_address = "
                                f"{self.limits.per_address} connections open from this address", kind="per-address")
            return
        if evicted is not None:
            self._drop(evicted, "dropped unanswered: the pool of connections without an association "
                       f"request is full (dicom.max_pending_connections = {self.limits.pending})", kind="pool")
        try:
            sock.setblocking(False)
            tls = self.ssl_context is not None
            if tls:
                assert self.ssl_context is not None
                sock = self.ssl_context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
            conn = _Pending(sock, address, port, time.monotonic() + self.limits.request_timeout, tls)
            with self._lock:
                self._pending[sock.fileno()] = conn
            self._epoll.register(sock.fileno(), select.EPOLLIN | select.EPOLLRDHUP | select.EPOLLET)
        except (OSError, ValueError):
            with self._lock:
                for fd, c in list(self._pending.items()):
                    if c.sock is sock:
                        del self._pending[fd]
            _close(sock)
            self._release(address)
        # no wake-up needed: epoll reports a connection whose data arrived before it was registered

    def _refuse_socket(self, sock: socket.socket, address: str, reason: str, calling_ae: str | None = None,
                       reply: bytes = b"", kind: str | None = None) -> None:
        self.refused += 1
        # logged before the peer hears it: by the time a refused sender reports the refusal, the
        # node's log already says why (tests/receive/test_receive.py reads both right after storescu exits)
        self.peers.warn(address, reason, calling_ae, kind)
        if reply:
            try:
                sock.setblocking(True)
                sock.settimeout(1.0)
                sock.sendall(reply)
            except OSError:
                pass
        _close(sock)

    def _drop(self, conn: _Pending, reason: str, calling_ae: str | None = None, reply: bytes = b"",
              quiet: bool = False, kind: str = "malformed") -> None:
        """Close a pending connection (already out of `_pending`) and free its address count."""
        try:
            self._epoll.unregister(conn.sock.fileno())
        except (OSError, ValueError):
            pass
        if quiet:
            _close(conn.sock)
        else:
            self._refuse_socket(conn.sock, conn.address, reason, calling_ae, reply, kind)
        self._release(conn.address)

    # --- the watcher thread ------------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._step()
            except Exception:  # the door must stay open: log it, keep watching
                if self._stop.is_set():
                    return
                log.exception("connection screening loop failed; continuing")
                time.sleep(0.1)

    def _step(self) -> None:
        now = time.monotonic()
        with self._lock:
            oldest = next(iter(self._pending.values()), None)
            # the pool is ordered by arrival and every deadline is arrival + the same timeout
            timeout = max(0.0, min(1.0, oldest.deadline - now)) if oldest is not None else 1.0
        try:
            events = self._epoll.poll(timeout)
        except InterruptedError:
            return
        ready: list[_Pending] = []
        with self._lock:
            for fd, mask in events:
                if fd == self._wake_r.fileno():
                    continue
                conn = self._pending.get(fd)
                if conn is not None:
                    conn.hangup = conn.hangup or bool(mask & (select.EPOLLRDHUP | select.EPOLLHUP | select.EPOLLERR))
                    ready.append(conn)
            if any(fd == self._wake_r.fileno() for fd, _ in events):
                try:
                    while self._wake_r.recv(4096):
                        pass
                except OSError:
                    pass
        for conn in ready:
            try:
                self._advance(conn)
            except Exception:  # never let one peer stop the door for everyone
                log.exception("connection screening failed for %s", conn.address)
                if self._take(conn):
                    self._drop(conn, "closed: internal error while screening it", quiet=True)
        self._expire(time.monotonic())

    def _take(self, conn: _Pending) -> bool:
        with self._lock:
            return self._pending.pop(conn.sock.fileno(), None) is conn

    def _expire(self, now: float) -> None:
        expired: list[_Pending] = []
        with self._lock:
            while self._pending:
                conn = next(iter(self._pending.values()))
                if conn.deadline > now:
                    break
                self._pending.popitem(last=False)
                expired.append(conn)
        for conn in expired:
            self._drop(conn, f"no A-ASSOCIATE-RQ within dicom.association_request_timeout_seconds = "
                       f"{self.limits.request_timeout:g} s", kind="timeout")

    def _advance(self, conn: _Pending) -> None:
        if conn.tls and not conn.handshaken:
            assert isinstance(conn.sock, ssl.SSLSocket)
            try:
                conn.sock.do_handshake()
            except ssl.SSLWantReadError:
                self._rearm(conn, select.EPOLLIN)
                return
            except ssl.SSLWantWriteError:
                self._rearm(conn, select.EPOLLOUT)
                return
            except (ssl.SSLError, OSError):
                if self._take(conn):
                    self._drop(conn, "closed: TLS handshake failed", kind="tls")
                return
            conn.handshaken = True
            self._rearm(conn, select.EPOLLIN)
            if conn.sock.pending() or _readable(conn.sock):
                self._hand_over(conn, None)
            return
        if conn.tls:
            self._hand_over(conn, None)  # data after the handshake: pynetdicom reads the request
            return
        try:
            head = conn.sock.recv(PEEK_LIMIT, socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            if conn.hangup and self._take(conn):
                self._drop(conn, "closed the connection before completing an A-ASSOCIATE-RQ")
            return
        except OSError:
            if self._take(conn):
                self._drop(conn, "connection reset before an A-ASSOCIATE-RQ", quiet=True)
            return
        if not head:  # connected and closed without a byte: a port probe or a health check
            if self._take(conn):
                self._drop(conn, "", quiet=True)
                log.debug("connection from %s closed without sending anything", conn.address)
            return
        verdict = screen_request(bytes(head))
        if verdict.action == "wait":
            self._wait_more(conn)
        elif verdict.action == "drop":
            if self._take(conn):
                self._drop(conn, verdict.reason, verdict.calling_ae)
        else:  # "hand_over": a valid request, or one too big to look at whole (pynetdicom decodes it)
            self._hand_over(conn, verdict.calling_ae)

    def _wait_more(self, conn: _Pending) -> None:
        if conn.hangup and self._take(conn):
            self._drop(conn, "closed the connection before completing an A-ASSOCIATE-RQ")

    def _rearm(self, conn: _Pending, mask: int) -> None:
        try:
            self._epoll.modify(conn.sock.fileno(), mask | select.EPOLLRDHUP | select.EPOLLET)
        except (OSError, ValueError):
            pass

    def _hand_over(self, conn: _Pending, calling_ae: str | None) -> None:
        """Give the connection to pynetdicom, or refuse it when every association slot is taken."""
        if not self._take(conn):
            return
        counts = calling_ae is None or self.limits.allowed(calling_ae)  # others: pynetdicom rejects them
        with self._lock:
            full = counts and self._counts.associations >= self.limits.associations
            if counts and not full:
                self._counts.associations += 1
                self._counted.add((conn.address, conn.port))
        if full:
            self._drop(conn, f"association refused: all dicom.max_associations = {self.limits.associations} "
                       "slots in use", calling_ae, reply=_local_limit_rj(), kind="full")
            return
        try:
            self._epoll.unregister(conn.sock.fileno())
        except (OSError, ValueError):
            pass
        try:
            conn.sock.setblocking(True)
            # until the association is established (then network_timeout): see ScreeningHandler
            conn.sock.settimeout(self.limits.request_timeout)
            assert self._dispatch is not None
            self._dispatch(conn.sock, (conn.address, conn.port))
        except Exception:
            log.exception("could not hand a connection from %s to the DICOM server", conn.address)
            _close(conn.sock)
            self.association_ended(conn.address, conn.port)


@dataclass(frozen=True)
class Screening:
    """What to do with a connection whose first bytes (peeked, not consumed) are these."""

    action: str  # "wait" (incomplete), "drop" (closed, with reason), "hand_over" (to pynetdicom)
    reason: str = ""
    calling_ae: str | None = None  # known when the request was decoded here


def screen_request(head: bytes) -> Screening:
    """Judge the first bytes a connection sent (at most PEEK_LIMIT of them) without consuming
    them: a peer's bytes, so no exception escapes (tests/receive/test_fuzz_receive.py drives it)."""
    if head[0] != A_ASSOCIATE_RQ_TYPE:
        return Screening("drop", f"closed: first PDU is not an A-ASSOCIATE-RQ (type 0x{head[0]:02X})")
    if len(head) < 6:
        return Screening("wait")
    (length,) = struct.unpack(">L", head[2:6])
    if not MIN_REQUEST_LENGTH <= length <= MAX_REQUEST_LENGTH:
        return Screening("drop", f"closed: implausible A-ASSOCIATE-RQ length {length}")
    if length + 6 > PEEK_LIMIT:
        return Screening("hand_over")  # too big to look at whole: pynetdicom decodes it
    if len(head) < length + 6:
        return Screening("wait")
    rq = A_ASSOCIATE_RQ()
    try:
        rq.decode(head[:length + 6])
        # what pynetdicom's state machine does with it next (AE-6): if this fails there, it
        # fails in pynetdicom's reactor thread, uncaught
        primitive = rq.to_primitive()
        calling = str(primitive.calling_ae_title).strip()
        str(primitive.called_ae_title)
        if not primitive.presentation_context_definition_list:
            raise ValueError("no presentation context")
    except Exception:  # a peer's bytes: any decoder failure is a malformed request, never a traceback
        return Screening("drop", "closed: malformed A-ASSOCIATE-RQ")
    if len(head) > length + 6 and head[length + 6] not in range(0x01, 0x08):
        return Screening("drop", "closed: garbage after the A-ASSOCIATE-RQ", calling)
    return Screening("hand_over", calling_ae=calling)


def _local_limit_rj() -> bytes:
    rj = A_ASSOCIATE_RJ()
    rj.result = 0x02  # rejected-transient
    rj.source = 0x03  # service-provider (presentation related)
    rj.reason_diagnostic = 0x02  # local-limit-exceeded
    return bytes(rj.encode())


def _readable(sock: socket.socket) -> bool:
    try:
        r, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return False
    return bool(r)


def _close(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass


class ScreeningServer(ThreadedAssociationServer):
    """pynetdicom's threaded server with the :class:`Gate` between accept and association."""

    # socketserver's documented knobs: a deep accept queue (a burst of connections must not be
    # dropped by the kernel) and no waiting for connection threads at shutdown.
    request_queue_size = socket.SOMAXCONN
    daemon_threads = True
    block_on_close = False
    gate: Gate
    # called with each association once its thread has ended (Receiver.on_association_end)
    on_association_end: Callable[[Any], None] | None = None
    # PDU length, instance size and free-disk floor on every association's incoming bytes
    # (hexnode.receive.limits); `on_refused` hears the reason in the association's reader thread
    limits: ReceiveLimits | None = None
    on_refused: Callable[[str], None] | None = None

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        # TLS is wrapped by the gate, without a blocking handshake in the accept loop. The socket
        # becomes a GuardedSocket (the same descriptor) so that its reads can be checked; with
        # TLS the context's sslsocket_class is GuardedSSLSocket.
        assert self.socket is not None
        sock, address = self.socket.accept()
        return GuardedSocket.adopt(sock), address

    def process_request(self, request: Any, client_address: Any) -> None:
        self.gate.admit(request, client_address)

    def dispatch(self, sock: socket.socket, client_address: tuple[Any, ...]) -> None:
        """A screened connection: a thread and pynetdicom's association, as ThreadingMixIn does."""
        if self.limits is not None and hasattr(sock, "pdu_guard"):
            # from its first byte: the gate only peeked (MSG_PEEK), pynetdicom reads it all again
            guarded: Any = sock
            guarded.pdu_guard = PduGuard(self.limits)
            guarded.on_refused = self.on_refused
        ThreadedAssociationServer.process_request(self, sock, client_address)  # type: ignore[arg-type]

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.warning("DICOM connection from %s failed in the server", client_address[0] if client_address else "?")

    def shutdown(self) -> None:
        # AssociationServer.shutdown also removes itself from the AE's list of servers it started,
        # which holds only servers made by start_server; ours came from make_server.
        socketserver.BaseServer.shutdown(self)
        self.server_close()
        self.gate.stop()


class ScreeningHandler(RequestHandler):
    """pynetdicom's request handler, then: wait for the association to end and report it.

    ``RequestHandler.handle`` starts the association thread and returns; this handler's thread
    stays with it (joined) so that the connection's slot and address count are freed exactly when
    it ends, whichever way it ends, and so that its socket timeout becomes ``network_timeout`` once
    the association is established.
    """

    server: ScreeningServer

    def handle(self) -> None:
        gate = self.server.gate
        address, port = str(self.client_address[0]), int(self.client_address[1])
        opened = gate.opened.__dict__
        opened.pop("assoc", None)
        assoc: Any = None
        try:
            super().handle()  # EVT_CONN_OPEN fires here, in this thread: see Gate.on_conn_open
            assoc = opened.pop("assoc", None)
            if assoc is None:  # EVT_CONN_OPEN no longer fires in this thread (a pynetdicom change)
                gate.warn_once("pynetdicom did not report the association to its request handler: "
                           "association slots are not counted while they last")
                return
            relaxed = closed = False
            rejected_at = 0.0
            while assoc.is_alive():
                if not relaxed and assoc.is_established:
                    relaxed = True
                    try:
                        self.request.settimeout(gate.limits.network_timeout)
                    except OSError:
                        pass
                if assoc.is_rejected and not rejected_at:
                    rejected_at = time.monotonic()
                # A-ASSOCIATE-RJ goes out through pynetdicom's queue: give it a moment, then the same
                if not closed and (assoc.is_aborted or (rejected_at and time.monotonic() - rejected_at > 0.5)):
                    # After an A-ABORT (a malformed PDU, a timeout) pynetdicom waits, as the
                    # standard's state machine says (Sta13), up to the ACSE timeout for the peer to
                    # close the connection, and a broken peer does not. The A-ABORT is already sent:
                    # close it now, which frees the slot at once.
                    closed = True
                    try:
                        self.request.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
                assoc.join(0.05 if relaxed else 0.01)
        finally:
            gate.association_ended(address, port)
            ended = self.server.on_association_end
            if ended is not None and assoc is not None:
                ended(assoc)
