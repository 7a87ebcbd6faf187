"""Event-driven wake-ups for pynetdicom's two polling reactors (receive latency).

pynetdicom 3 runs two threads per association that poll: the DUL reactor sleeps 1 ms whenever
it has nothing to do, and the association reactor sleeps 1 ms before every look at its DIMSE
queue. For a C-STORE every instance crosses both threads twice (data in, response out), so on
loopback ~2.5 ms of each instance's ~4 ms were spent asleep (measured: last PDU → handler
0.5 ms, handler → response on the wire 0.9 ms, response → next request read 1.2 ms).

:func:`install` replaces those two sleeps — and only those, identified by their code object —
with waits that end as soon as there is work:

* DUL reactor: ``select`` on the association socket plus a per-DUL wake-up pipe that
  ``send_pdu`` writes to, so incoming data and outgoing responses are handled at once.
* association reactor: a wait on the DIMSE queue's ``not_empty`` condition.

Both keep the original timeout, so every periodic check (ARTIM, idle and release timers, abort)
still runs at least as often as before, and idle CPU use does not grow. It also reads PDUs with
``recv_into`` in large chunks instead of 4 KiB ``recv`` calls.

The patch is process-wide (pynetdicom's reactors are module code) and applied by ``hexnode serve``
only. It checks the pynetdicom major version and the patched functions' presence; if anything
is unexpected it does nothing and returns False (the node then runs at pynetdicom's own speed).
"""

from __future__ import annotations

import logging
import os
import select
import sys
import threading
import time as _time
import types
import weakref
from typing import Any

log = logging.getLogger(__name__)
_lock = threading.Lock()
_installed = False


def install() -> bool:
    global _installed
    with _lock:
        if _installed:
            return True
        try:
            import pynetdicom
            import pynetdicom.association as assoc_mod
            import pynetdicom.dul as dul_mod
            import pynetdicom.transport as transport_mod
        except ImportError:
            return False
        if not pynetdicom.__version__.startswith("3."):
            log.warning("pynetdicom %s: receive fast path not applied (written for 3.x)", pynetdicom.__version__)
            return False
        dul_cls = dul_mod.DULServiceProvider
        assoc_cls = assoc_mod.Association
        sock_cls = transport_mod.AssociationSocket
        if not all(
            hasattr(obj, name)
            for obj, name in (
                (dul_cls, "run_reactor"),
                (dul_cls, "send_pdu"),
                (assoc_cls, "_run_reactor"),
                (sock_cls, "recv"),
                (dul_mod, "time"),
                (assoc_mod, "time"),
            )
        ):
            log.warning("pynetdicom internals changed: receive fast path not applied")
            return False
        dul_code = dul_cls.run_reactor.__code__
        assoc_code = assoc_cls._run_reactor.__code__
        wakers: weakref.WeakKeyDictionary[Any, tuple[int, int]] = weakref.WeakKeyDictionary()

        def waker(dul: Any) -> tuple[int, int]:
            fds = wakers.get(dul)
            if fds is None:
                r, w = os.pipe()
                os.set_blocking(r, False)
                os.set_blocking(w, False)
                wakers[dul] = (r, w)
                weakref.finalize(dul, _close_fds, r, w)
                fds = (r, w)
            return fds

        def sleep(seconds: float) -> None:
            caller = sys._getframe(1).f_code
            thread = threading.current_thread()
            if caller is dul_code and isinstance(thread, dul_cls):
                _dul_wait(thread, waker(thread)[0], seconds)
            elif caller is assoc_code and isinstance(thread, assoc_cls):
                q = thread.dimse.msg_queue
                with q.not_empty:  # holds q.mutex: use the unlocked _qsize (qsize() would deadlock)
                    if not q._qsize():
                        q.not_empty.wait(seconds)
            else:
                _time.sleep(seconds)

        shim = types.ModuleType("time")
        shim.__dict__.update({k: v for k, v in vars(_time).items() if not k.startswith("__")})
        shim.sleep = sleep  # type: ignore[attr-defined]

        original_send_pdu = dul_cls.send_pdu

        def send_pdu(self: Any, primitive: Any) -> None:
            original_send_pdu(self, primitive)
            fds = wakers.get(self)
            if fds is not None:
                try:
                    os.write(fds[1], b"\0")
                except (BlockingIOError, OSError):
                    pass  # pipe full: the reactor is already due to wake up

        dul_mod.time = shim  # type: ignore[attr-defined]
        assoc_mod.time = shim  # type: ignore[attr-defined]
        dul_cls.send_pdu = send_pdu  # type: ignore[method-assign]
        sock_cls.recv = _recv  # type: ignore[method-assign]
        _installed = True
        log.debug("pynetdicom receive fast path installed")
        return True


def _close_fds(*fds: int) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


def _dul_wait(dul: Any, wake_fd: int, seconds: float) -> None:
    if dul.to_provider_queue.qsize() or not dul.event_queue.empty():
        return
    fds: list[Any] = [wake_fd]
    sock = getattr(dul.socket, "socket", None) if dul.socket is not None else None
    if sock is not None:
        try:
            if sock.fileno() >= 0:
                fds.append(sock)
        except OSError:
            pass
    try:
        ready, _, _ = select.select(fds, [], [], seconds)
    except (OSError, ValueError):
        _time.sleep(seconds)
        return
    if wake_fd in ready:
        try:
            while os.read(wake_fd, 4096):
                pass
        except (BlockingIOError, OSError):
            pass


def _recv(self: Any, nr_bytes: int) -> bytearray:
    """AssociationSocket.recv with one buffer and large reads (same contract as the original)."""
    buf = bytearray(nr_bytes)
    view = memoryview(buf)
    nr_read = 0
    sock = self.socket
    while nr_read < nr_bytes:
        n = sock.recv_into(view[nr_read:], min(nr_bytes - nr_read, 1 << 20))
        if not n:
            del view
            del buf[nr_read:]
            return buf
        nr_read += n
    del view
    return buf
