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

import logging
import signal
import threading
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TextIO

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
DICOM_LIBRARIES = ("pydicom", "highdicom", "pynetdicom")
WITHHELD = "text withheld: DICOM libraries quote data element values, patient names among them"


def setup_logging(level: str | int = "INFO", fmt: str = FORMAT) -> None:
    """Logging for one hexnode process: the root handler, quiet libraries, warnings routed."""
    logging.basicConfig(level=level.upper() if isinstance(level, str) else level, format=fmt)
    # pynetdicom's INFO/DEBUG output can include dataset summaries: keep it to warnings.
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    route_warnings()


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
