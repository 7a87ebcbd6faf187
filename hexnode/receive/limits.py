"""What one association may cost: PDU length, instance size and the spool's free-disk floor, checked
on the bytes as they arrive, before they are buffered or written.

pynetdicom advertises our maximum PDU length (``[dicom] max_pdu_size``) but reads whatever length
a PDU header claims, so one P-DATA-TF header saying 2 GiB makes it buffer what follows. And it writes
a C-STORE's dataset to its file as the fragments arrive, so a free-disk check made when the
instance is complete comes after the disk has filled.

:class:`PduGuard` follows the stream of one association as it is read: PDU headers, and inside
P-DATA-TF PDUs the presentation data value (PDV) headers, which say how many bytes each fragment
has before a byte of it is read. It refuses (:class:`Refused`):

* a P-DATA-TF PDU longer than the maximum length we advertised, any other PDU longer than
  ``MAX_OTHER_PDU`` (an A-ASSOCIATE-RQ is at most a few KiB; the gate checks the first one too);
* a dataset whose fragments add up to more than ``[dicom] max_instance_mb``;
* a dataset fragment that would take the spool's free space below ``[dicom] min_free_disk_mb``:
  free space is read (statvfs) at the first fragment of every dataset and after every
  ``DISK_CHECK_BYTES`` declared since, so the floor is never undershot by more than about that
  plus one PDU per open association.

A refusal sends an A-ABORT (service-provider; reason invalid PDU parameter value for a PDU length,
not specified for the other limits) to the peer and ends
the association as a lost connection would (pynetdicom's A-P-ABORT); its partial file is deleted
and its series marked as sent part-way, as after any abort (hexnode.receive.scp).

The guard sits in the socket pynetdicom reads from: :class:`GuardedSocket` and
:class:`GuardedSSLSocket` are the standard library's socket classes with ``recv`` and ``recv_into``
extended (an accepted socket is re-created around its descriptor; TLS sockets come from
``SSLContext.sslsocket_class``), so pynetdicom's own reader and the fast path
(hexnode.receive.fastpath) are both covered without changing either. ``MSG_PEEK`` reads (the gate's
look at the first PDU) pass through uncounted.
"""

from __future__ import annotations

import os
import socket
import ssl
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

# A-ASSOCIATE-RQ/AC/RJ, A-RELEASE, A-ABORT: real ones are at most a few KiB (the gate allows 1 MiB).
MAX_OTHER_PDU = 1 << 20
# Free space is read again after this many dataset bytes were declared on one association.
DISK_CHECK_BYTES = 1 << 20
P_DATA_TF = 0x04
_PEEK = socket.MSG_PEEK


class Refused(ConnectionAbortedError):
    """The association was cut off by a limit; the message says which (no peer bytes in it).
    `abort_reason`: the A-ABORT's reason (PS3.8 9.3.8): 6 invalid PDU parameter value for a PDU
    length, 0 not specified for a limit of ours (instance size, free disk)."""

    def __init__(self, message: str, abort_reason: int = 0) -> None:
        super().__init__(message)
        self.abort_reason = abort_reason


@dataclass(frozen=True)
class ReceiveLimits:
    """The limits of ``[dicom]`` in bytes; 0 means not limited."""

    max_pdu: int  # the Maximum Length Received we advertise (P-DATA-TF variable field)
    max_instance: int
    min_free: int
    spool: str  # a path on the spool's file system (statvfs)

    def free_bytes(self) -> int:
        st = os.statvfs(self.spool)
        return st.f_bavail * st.f_frsize


def mb(n: int) -> str:
    """Bytes as MB (2**20) for a log line: whole numbers as such, small ones with 2 decimals."""
    return f"{n / 2**20:.2f}".rstrip("0").rstrip(".")


def abort_pdu(reason: int = 0x06) -> bytes:
    """A-ABORT from the service provider; reason 6: invalid PDU parameter value (PS3.8 9.3.8)."""
    return struct.pack(">BBLBBBB", 0x07, 0, 4, 0, 0, 0x02, reason)


class PduGuard:
    """The limits above, on one association's incoming byte stream (fed in order, any chunking)."""

    __slots__ = ("limits", "_head", "_body_left", "_pdata", "_pdv_head", "_pdv_left", "_skip",
                 "_instance", "_unchecked", "refused", "_free")

    def __init__(self, limits: ReceiveLimits, free_bytes: Callable[[], int] | None = None) -> None:
        self.limits = limits
        self._head = bytearray()  # the PDU header being read (6 bytes)
        self._body_left = 0  # bytes of the current PDU body still to come
        self._pdata = False  # the current PDU is a P-DATA-TF
        self._pdv_head = bytearray()  # the PDV item header being read (length 4, context 1, control 1)
        self._pdv_left = 0  # bytes of the current PDV's data still to come
        self._skip = False  # a malformed PDV: the rest of this PDU is pynetdicom's to refuse
        self._instance = 0  # dataset bytes declared for the message being received
        self._unchecked = 0  # dataset bytes declared since free space was last read
        self.refused: str | None = None
        self._free = free_bytes or limits.free_bytes

    def feed(self, data: Any) -> None:
        """Account for `data` (bytes-like), the next bytes read; raises Refused past a limit."""
        if self.refused is not None:
            raise Refused(self.refused)
        n = len(data)
        if n <= self._pdv_left and n <= self._body_left:  # inside one fragment's data: the usual read
            self._pdv_left -= n
            self._body_left -= n
            return
        i = 0
        while i < n:
            if self._body_left:
                take = min(self._body_left, n - i)
                if self._pdata and not self._skip:
                    self._pdvs(data, i, i + take)
                self._body_left -= take
                i += take
                continue
            take = min(6 - len(self._head), n - i)
            self._head += data[i:i + take]
            i += take
            if len(self._head) == 6:
                kind, _, length = struct.unpack(">BBL", self._head)
                self._head.clear()
                self._start_pdu(kind, length)

    def _start_pdu(self, kind: int, length: int) -> None:
        if kind == P_DATA_TF:
            limit = self.limits.max_pdu
            if limit and length > limit:
                self._refuse(f"P-DATA-TF PDU of {length} bytes, above the maximum length we advertised "
                             f"(dicom.max_pdu_size = {limit})", 6)
        elif length > MAX_OTHER_PDU:
            self._refuse(f"PDU of type 0x{kind:02X} claiming {length} bytes", 6)
        self._body_left = length
        self._pdata = kind == P_DATA_TF
        self._pdv_head.clear()
        self._pdv_left = 0
        self._skip = False

    def _pdvs(self, data: Any, i: int, end: int) -> None:
        """The PDV items in data[i:end], the next part of the current P-DATA-TF body (whose
        `_body_left` still counts all of it)."""
        start = i
        while i < end:
            if self._pdv_left:
                take = min(self._pdv_left, end - i)
                self._pdv_left -= take
                i += take
                continue
            take = min(6 - len(self._pdv_head), end - i)
            self._pdv_head += data[i:i + take]
            i += take
            if len(self._pdv_head) < 6:
                continue
            item_length, _context, control = struct.unpack(">LBB", self._pdv_head)
            self._pdv_head.clear()
            left_in_pdu = self._body_left - (i - start)
            if item_length < 2 or item_length - 2 > left_in_pdu:
                self._skip = True  # malformed: pynetdicom's decoder refuses it; we stop counting
                return
            self._pdv_left = item_length - 2
            if control & 0x01:  # a command fragment: a new message begins
                self._instance = 0
            else:
                self._fragment(item_length - 2, last=bool(control & 0x02))

    def _fragment(self, size: int, last: bool) -> None:
        first = self._instance == 0
        self._instance += size
        limits = self.limits
        if limits.max_instance and self._instance > limits.max_instance:
            self._refuse(f"dataset larger than dicom.max_instance_mb = {mb(limits.max_instance)} MB")
        if limits.min_free:
            self._unchecked += size
            if first or self._unchecked >= DISK_CHECK_BYTES:
                free = self._free()
                if free - size < limits.min_free:
                    self._refuse(f"free disk in the spool would drop below dicom.min_free_disk_mb = "
                                 f"{mb(limits.min_free)} MB ({mb(free)} MB free)")
                self._unchecked = 0
        if last:
            self._instance = 0

    def _refuse(self, reason: str, abort_reason: int = 0) -> None:
        self.refused = reason
        raise Refused(reason, abort_reason)


class _Guarded:
    """recv/recv_into that feed a PduGuard (mixed into the standard socket classes below)."""

    pdu_guard: PduGuard | None = None
    # called once with the reason when the guard refuses (the receiver logs it for the association)
    on_refused: Callable[[str], None] | None = None

    def recv(self, bufsize: int = 1024, flags: int = 0) -> bytes:  # type: ignore[override]
        data: bytes = super().recv(bufsize, flags)  # type: ignore[misc]
        guard = self.pdu_guard
        if guard is not None and data and not flags & _PEEK:
            try:
                guard.feed(data)
            except Refused as exc:
                self._refused(exc)
        return data

    def recv_into(self, buffer: Any, nbytes: int | None = None, flags: int = 0) -> int:  # type: ignore[override]
        # socket.recv_into wants 0 for "the whole buffer", SSLSocket.recv_into None
        n: int = (super().recv_into(buffer, nbytes, flags) if nbytes is not None  # type: ignore[misc]
                  else super().recv_into(buffer, flags=flags))  # type: ignore[misc]
        guard = self.pdu_guard
        if guard is not None and n and not flags & _PEEK:
            try:
                guard.feed(memoryview(buffer)[:n])
            except Refused as exc:
                self._refused(exc)
        return n

    def _refused(self, exc: Refused) -> None:
        self.pdu_guard = None  # what follows is not read any more
        self._abort(str(exc), exc.abort_reason)
        raise exc

    def _abort(self, reason: str, abort_reason: int) -> None:
        callback = self.on_refused
        if callback is not None:
            try:
                callback(reason)
            except Exception:
                pass
        sock: Any = self
        try:
            sock.settimeout(1.0)
            sock.sendall(abort_pdu(abort_reason))
        except (OSError, ValueError):
            pass
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except (OSError, ValueError):
            pass


class GuardedSocket(_Guarded, socket.socket):
    """A plain TCP socket whose reads feed its `pdu_guard` (None: reads are not checked)."""

    @classmethod
    def adopt(cls, sock: socket.socket) -> GuardedSocket:
        """The same connection as a GuardedSocket (`sock` is detached; its timeout is kept)."""
        timeout = sock.gettimeout()
        new = cls(sock.family, sock.type, sock.proto, fileno=sock.detach())
        new.settimeout(timeout)
        return new


class GuardedSSLSocket(_Guarded, ssl.SSLSocket):
    """The TLS counterpart (``SSLContext.sslsocket_class``): the guard sees the decrypted stream."""
