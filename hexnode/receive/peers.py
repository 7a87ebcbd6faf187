"""What the receiver says about refused and broken peers: one rate-limited line each, no tracebacks.

:class:`PeerLog` writes one WARNING line per refused or broken peer (address, calling AE when
known, a fixed reason) and at most one per address per interval. :class:`LibraryLog` takes
pynetdicom's own warnings and errors off the root handlers while the receiver runs: its PDU decoder
logs several lines and a traceback for every malformed PDU, and its messages may quote what a peer
sent. Each record is reduced to a fixed reason (:func:`classify`) that the receiver reports in its
one line for that association; the record itself goes to our DEBUG log, without its traceback.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from hexnode.runtime import WITHHELD

log = logging.getLogger(__name__)

# Kept only for logging: at most this many addresses are remembered by the rate limiter.
PEER_LOG_MAX_ADDRESSES = 4096


def printable(text: str, limit: int = 16) -> str:
    """An AE title as sent, safe for one log line (a peer chooses these bytes)."""
    out = "".join(c if 32 <= ord(c) < 127 else "?" for c in text.strip())[:limit]
    return out or "-"


class PeerLog:
    """One WARNING line per refused or broken peer, at most one per address per `interval` seconds.

    Lines are grouped by `kind` (malformed input, timeouts, limits ...), so a peer that is refused
    for two different reasons gets both said. The next line for that address and kind after the
    quiet interval says how many were not logged. Only
    addresses, AE titles and fixed reasons are written; never bytes a peer sent.
    """

    def __init__(self, logger: logging.Logger, interval: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._log = logger
        self.interval = interval
        self._clock = clock
        self._lock = threading.Lock()
        self._seen: OrderedDict[str, list[float]] = OrderedDict()  # address -> [last logged, suppressed]

    def warn(self, address: str, reason: str, calling_ae: str | None = None, kind: str | None = None) -> bool:
        """Log one line unless this address had one of this `kind` (default: the reason) recently."""
        now = self._clock()
        key = f"{address}\0{kind or reason}"
        with self._lock:
            entry = self._seen.get(key)
            if entry is not None and now - entry[0] < self.interval:
                entry[1] += 1
                return False
            suppressed = int(entry[1]) if entry is not None else 0
            self._seen[key] = [now, 0]
            self._seen.move_to_end(key)
            while len(self._seen) > PEER_LOG_MAX_ADDRESSES:
                self._seen.popitem(last=False)
        who = f"peer {address}" + (f" (calling AE {printable(calling_ae)})" if calling_ae is not None else "")
        more = f" [{suppressed} more like it from this address not logged in the last {self.interval:.0f} s]" if suppressed else ""
        self._log.warning("%s: %s%s", who, reason, more)
        return True


class WithholdText(logging.Filter):
    """On pydicom's logger: drop its warnings, keep that an error was logged and where, not its text.

    pydicom logs what it warns about as well (``warn_and_log``), with the offending value: a peer
    that sends a dataset with a broken length gets its next elements, patient name among them,
    quoted as a "UID" (found by tests/receive/test_hostile.py). hexnode.runtime withholds the text of
    the warnings; this does the same for the log records, in the receiving processes.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.ERROR:
            return False  # warn_and_log: the same text is a Python warning too, reported (withheld) there
        record.msg = f"{record.levelname.lower()} from pydicom ({record.module}:{record.lineno}); {WITHHELD}"
        record.args = None
        record.exc_info = None
        record.exc_text = None
        return True


def withhold_pydicom_text() -> None:
    logger = logging.getLogger("pydicom")
    if not any(isinstance(f, WithholdText) for f in logger.filters):
        logger.addFilter(WithholdText())


# pynetdicom's message (its start) -> what we say. Anything else: "protocol error".
_STALLED_IN_PDU = "stalled in the middle of a PDU: no data for dicom.network_timeout_seconds"
_LOST_IN_PDU = "connection lost in the middle of a PDU"
_REASONS = (
    ("PDU stalled", _STALLED_IN_PDU),
    ("Network timeout reached", "stalled: no data for dicom.network_timeout_seconds"),
    ("Connection closed before the entire PDU", _LOST_IN_PDU),
    ("The received PDU is shorter", "truncated PDU"),
    ("Unknown PDU type", "malformed PDU (unknown PDU type)"),
    ("Unable to decode the received PDU", "malformed PDU"),
    ("Received an invalid DIMSE message", "malformed DIMSE message"),
    ("Exception in DUL.run()", "protocol error"),
    ("Invalid event", "PDU not valid in the association's state"),
    ("DIMSE timeout", "no DIMSE message within the DIMSE timeout"),
    ("Invalid '", "a value pynetdicom refused (AE title, UID ...)"),
    ("Non-conformant '", "a non-conformant value (AE title, UID ...)"),
    ("Received unexpected", "unexpected DIMSE message"),
    ("State Machine received an exception", "PDU not valid in the association's state"),
    ("A-ASSOCIATE-RQ: Unsupported protocol version", "unsupported protocol version"),
)


def classify(message: str) -> str:
    for prefix, reason in _REASONS:
        if message.startswith(prefix):
            return reason
    return "protocol error"


class LibraryLog(logging.Handler):
    """Handler for the ``pynetdicom`` logger (which then stops propagating; see the module doc)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self._reasons: weakref.WeakKeyDictionary[Any, tuple[bool, str]] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()
        self._logger: logging.Logger | None = None
        self._propagate = True

    def install(self, name: str = "pynetdicom") -> None:
        self._logger = logging.getLogger(name)
        self._propagate = self._logger.propagate
        self._logger.addHandler(self)
        self._logger.propagate = False

    def uninstall(self) -> None:
        if self._logger is not None:
            self._logger.removeHandler(self)
            self._logger.propagate = self._propagate
            self._logger = None

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = str(record.msg)
        except Exception:
            text = ""
        reason = classify(text)
        # pynetdicom's own PDU reader ([dicom] fast_receive = false) says "Connection closed" for a
        # socket timeout too, then logs the exception: that one tells a stall from a lost connection.
        stalled = record.exc_info is not None and isinstance(record.exc_info[1], TimeoutError)
        if stalled:
            reason = _STALLED_IN_PDU
        thread = threading.current_thread()
        # the DUL thread knows its association; the association thread is one
        assoc = thread if hasattr(thread, "acceptor") else getattr(thread, "assoc", None)
        if assoc is not None:
            error = record.levelno >= logging.ERROR
            with self._lock:
                try:
                    # the first error is the cause; a warning only when nothing worse was said
                    old = self._reasons.get(assoc)
                    if old is None or (error and not old[0]) or (stalled and old[1] == _LOST_IN_PDU):
                        self._reasons[assoc] = (error, reason)
                except TypeError:
                    pass
        log.debug("pynetdicom %s in %s: %s", record.levelname, record.name, reason)

    def note(self, reason: str) -> None:
        """A limit of ours cut off the association this thread serves (hexnode.receive.limits):
        that is its reason, whatever pynetdicom says about the connection afterwards."""
        thread = threading.current_thread()
        assoc = thread if hasattr(thread, "acceptor") else getattr(thread, "assoc", None)
        if assoc is None:
            return
        with self._lock:
            try:
                self._reasons[assoc] = (True, reason)
            except TypeError:
                pass

    def thread_died(self, args: Any) -> bool:
        """For threading.excepthook: an exception that ended one of pynetdicom's reactor threads
        (a peer's bytes it did not expect) is that association's reason, not a traceback on
        stderr. Returns False for other threads (the caller passes those on)."""
        thread = args.thread
        assoc = thread if hasattr(thread, "acceptor") else getattr(thread, "assoc", None)
        if assoc is None or not type(thread).__module__.startswith("pynetdicom"):
            return False
        with self._lock:
            try:
                if not self._reasons.get(assoc, (False, ""))[0]:
                    self._reasons[assoc] = (True, f"protocol error ({args.exc_type.__name__} in pynetdicom)")
            except TypeError:
                pass
        log.debug("pynetdicom thread %s ended by %s", thread.name, args.exc_type.__name__)
        return True

    def reason(self, assoc: Any) -> str | None:
        with self._lock:
            try:
                got = self._reasons.pop(assoc, None)
            except TypeError:
                return None
        return None if got is None else got[1]
