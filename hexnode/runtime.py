"""Process set-up every hexnode command shares: logging, Python warnings routed through it, and
the stop signals.

Stop signals: every long-running stage (receive, route, worker, send, web, node) and purge stops
the same way: SIGTERM (systemd, docker, `hexnode node`) or SIGINT (Ctrl-C) sets one
`threading.Event` (:func:`stop_on_signals`); the stage finishes what it is doing — the worker its
job, purge its series — and returns. Nothing is done inside the handler itself.

Why warnings need care: the DICOM libraries quote data element values in their warnings —
highdicom's `UserWarning` about a person name with a single component prints the name itself
(`SMITH`), pydicom's value-validation warnings print the offending value. Python prints warnings
to stderr, which is the journal or the container log. Here every warning goes through logging
instead (`py.warnings`), and the text of a `UserWarning` or of any warning raised inside pydicom,
highdicom or pynetdicom is withheld: only its category and where it was raised are logged.
Deprecation and numeric warnings of other libraries keep their text (they carry no data).
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import sys
import threading
import traceback
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
DICOM_LIBRARIES = ("pydicom", "highdicom", "pynetdicom")
WITHHELD = "text withheld: DICOM libraries quote data element values, patient names among them"
# Libraries whose INFO lines are noise for a site (alembic's "setup plugin ..." for every process
# that opens the database, APScheduler's job runs); pynetdicom's INFO/DEBUG output can include
# dataset summaries. hexnode logs what matters itself: a schema upgrade, a delivery's outcome.
# highdicom names every source dataset by its SOP Instance UID at INFO (logs name a series by a
# UID hash only); pykwalify announces each radiomics settings validation
QUIET_LIBRARIES = ("pynetdicom", "alembic", "apscheduler", "urllib3", "requests", "highdicom", "pykwalify")
# Spawned children (the receiver's indexer, started by multiprocessing) inherit the format through
# the environment. Not a HEXNODE_* name: it is no setting, and a stage's own children must not
# report it as an override the admin made.
LOG_FORMAT_ENV = "_HEXNODE_LOG_FORMAT"

# Control characters in DICOM-derived text (a series description with CR/LF, an ANSI colour
# escape in an AE title) would split a log line — a forged second line in a journal — or colour a
# terminal: they are written escaped, as Python writes them in a repr.
_CONTROL = {c: f"\\x{c:02x}" for c in (*range(0x00, 0x20), 0x7F, *range(0x80, 0xA0))}
_CONTROL.update({0x09: "\\t", 0x0A: "\\n", 0x0D: "\\r", 0x2028: "\\u2028", 0x2029: "\\u2029"})
_SUBJECTS = (("series", re.compile(r"\bseries ([0-9a-f]{10})\b")), ("study", re.compile(r"\bstudy ([0-9a-f]{10})\b")),
             ("job", re.compile(r"\bjob (\d+)\b")))


def one_line(text: str) -> str:
    """`text` with every control character (C0, DEL, C1, Unicode line separators) escaped."""
    return text.translate(_CONTROL)


def exception_lines(exc: BaseException) -> list[str]:
    """A traceback as lines, causes first, as Python prints it, except that each exception's own
    text (which may quote DICOM values) is one line with its control characters escaped."""
    return list(_lines(traceback.TracebackException.from_exception(exc), set()))


def _lines(te: traceback.TracebackException, seen: set[int]) -> Iterator[str]:
    seen.add(id(te))
    if te.__cause__ is not None and id(te.__cause__) not in seen:
        yield from _lines(te.__cause__, seen)
        yield "The above exception was the direct cause of the following exception:"
    elif te.__context__ is not None and not te.__suppress_context__ and id(te.__context__) not in seen:
        yield from _lines(te.__context__, seen)
        yield "During handling of the above exception, another exception occurred:"
    if te.stack:
        yield "Traceback (most recent call last):"
        for frame in te.stack.format():  # file names and source lines: the code's, not data
            yield from (one_line(line) for line in frame.rstrip("\n").split("\n"))
    for chunk in te.format_exception_only():
        yield one_line(chunk.rstrip("\n"))


class _Tracebacks(logging.Formatter):
    def formatException(self, ei: Any) -> str:
        return "\n".join(exception_lines(ei[1])) if ei and ei[1] is not None else super().formatException(ei)


class TextFormatter(_Tracebacks):
    """`time LEVEL logger: message`, the message on one line whatever it quotes. A traceback follows
    on lines of its own, each indented, so no line of it can pass for a record of its own."""

    def format(self, record: logging.LogRecord) -> str:
        record.message = one_line(record.getMessage())
        if self.usesTime():
            record.asctime = self.formatTime(record, self.datefmt)
        out = self.formatMessage(record)
        extra = _exception_text(self, record)
        if extra:
            out += "".join(f"\n    {one_line(line)}" for line in extra.splitlines())
        return out


class JsonFormatter(_Tracebacks):
    """One JSON object per record and line: ts (UTC), level, stage, logger, message, and the
    series / study hash and job id the message names (also as `extra={"series": ...}`); a
    traceback as `exc`. A log collector filters on the fields instead of parsing text."""

    def __init__(self, stage: str | None = None) -> None:
        super().__init__()
        self.stage = stage

    def format(self, record: logging.LogRecord) -> str:
        message = one_line(record.getMessage())
        ts = datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        obj: dict[str, Any] = {"ts": ts, "level": record.levelname, "stage": self.stage or _stage_of(record.name),
                               "logger": record.name, "message": message}
        for key, pattern in _SUBJECTS:
            given = getattr(record, key, None)
            found = pattern.search(message)
            if given is not None:
                obj[key] = given
            elif found:
                obj[key] = int(found.group(1)) if key == "job" else found.group(1)
        obj["pid"] = record.process
        extra = _exception_text(self, record)
        if extra:
            obj["exc"] = extra.splitlines()
        return json.dumps(obj, ensure_ascii=False)


def _exception_text(fmt: logging.Formatter, record: logging.LogRecord) -> str:
    if record.exc_info and not record.exc_text:
        record.exc_text = fmt.formatException(record.exc_info)
    text = record.exc_text or ""
    if record.stack_info:
        text = f"{text}\n{fmt.formatStack(record.stack_info)}" if text else fmt.formatStack(record.stack_info)
    return text


_STAGES = ("receive", "route", "worker", "send", "web", "node", "notify", "pipeline", "models", "store")


def _stage_of(logger: str) -> str | None:
    parts = logger.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "hexnode" and parts[1] in _STAGES else None


class LibraryLines(logging.Filter):
    """Drops pynetdicom's own records at the process's handler unless the level is DEBUG: hexnode
    logs one line per event with the reason (the sender's outcome, `hexnode echo`, the receiver's
    peer lines), where pynetdicom logs two or three ERROR lines for one refused connection."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == "pynetdicom" or record.name.startswith("pynetdicom."):
            return logging.getLogger().getEffectiveLevel() <= logging.DEBUG
        return True


class _HexnodeHandler(logging.StreamHandler[TextIO]):
    """The one handler setup_logging installs (found again by its type: set-up runs once).

    It writes to whatever sys.stderr is when a record comes, not the object it was made with: a
    caller that replaces stderr (pytest's capture, a daemon re-opening it) would otherwise leave
    the handler writing into a closed file."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


def setup_logging(level: str | int = "INFO", fmt: str = FORMAT, *, log_format: str | None = None,
                  stage: str | None = None) -> None:
    """Logging for one hexnode process: one handler on stderr, in `log_format` ("text", or "json":
    one object per line; default: what the parent process used, else text), libraries quiet, warnings
    routed. Called again (the command line sets up first, the stage after), it only sets the level."""
    root = logging.getLogger()
    root.setLevel(level.upper() if isinstance(level, str) else level)
    for name in QUIET_LIBRARIES:
        logging.getLogger(name).setLevel(logging.WARNING)
    route_warnings()
    if any(isinstance(h, _HexnodeHandler) for h in root.handlers):
        return
    if log_format is None:
        log_format = os.environ.get(LOG_FORMAT_ENV, "text")
    else:
        os.environ[LOG_FORMAT_ENV] = log_format
    handler = _HexnodeHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(stage) if log_format == "json" else TextFormatter(fmt))
    handler.addFilter(LibraryLines())
    root.addHandler(handler)


class LibraryErrors(logging.Handler):
    """What a library logged during one call, kept out of the log: see :func:`library_errors`."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = one_line(record.getMessage())
        except Exception:  # a library's broken format string must not break the caller
            text = str(record.msg)
        if text not in self.messages:
            self.messages.append(text)

    def reason(self) -> str:
        """The library's own explanation in one phrase, e.g. "[Errno 111] Connection refused"."""
        said = ("Association request failed", "Association Rejected", "Association Aborted")  # the caller says it
        keep = [m.split(": ", 1)[1] if m.startswith("TCP Initialisation Error: ") else m
                for m in self.messages if not m.startswith(said)]
        return "; ".join(keep[:3])


@contextmanager
def library_errors(name: str = "pynetdicom") -> Iterator[LibraryErrors]:
    """Collect what logger `name` logs at WARNING and above inside the block (from any thread:
    pynetdicom connects in its association thread), so the caller can put the reason into its
    own single line. The records still reach the process's handler, which drops pynetdicom's
    (LibraryLines) unless the level is DEBUG."""
    logger = logging.getLogger(name)
    collector = LibraryErrors()
    logger.addHandler(collector)
    try:
        yield collector
    finally:
        logger.removeHandler(collector)


STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def stop_on_signals(signals: Iterable[int] = STOP_SIGNALS) -> threading.Event:
    """An event that SIGTERM or SIGINT (or `signals`) sets; call from the main thread.

    A second signal while stopping changes nothing: the stage is already on its way out (a
    service manager escalates to SIGKILL when its own timeout runs out)."""
    stop = threading.Event()

    def _set(signum: int, _frame: object) -> None:
        stop.set()

    for sig in signals:
        signal.signal(sig, _set)
    return stop


def route_warnings() -> None:
    """Send every Python warning of this process through logging, without data values."""
    warnings.showwarning = show_warning


def _origin(filename: str) -> str | None:
    parts = Path(filename).parts
    return next((lib for lib in DICOM_LIBRARIES if lib in parts), None)


def warning_text(message: Warning | str, category: type[Warning], filename: str, lineno: int) -> str:
    """What is logged for one warning (see the module docstring for what is withheld)."""
    where = f"{Path(filename).name}:{lineno}"
    origin = _origin(filename)
    if origin is not None or issubclass(category, UserWarning):
        return f"{category.__name__} from {origin or where} ({where}); {WITHHELD}"
    return f"{category.__name__}: {message} ({where})"


def show_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                 file: TextIO | None = None, line: str | None = None, **_: Any) -> None:
    logging.getLogger("py.warnings").warning("%s", warning_text(message, category, filename, lineno))
