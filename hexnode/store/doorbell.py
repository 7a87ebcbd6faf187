"""A stage's doorbell: the stage before it rings when it has queued work, so an idle worker or
sender starts at once instead of at its next poll (up to `poll_seconds` later; a quarter second on
average of the two hand-offs, route → worker and worker → send).

Each waiting process binds a UNIX datagram socket under ``data_dir/run/bells/<stage>/``; `ring`
sends one byte to every socket there and never blocks. The database stays the only source of
work: a bell only ends a wait early, and a bell nobody hears changes nothing (no such directory,
a socket path too long, a stage on another machine, a full queue, a dead process's socket, which
is removed). Polling every `poll_seconds` stays the fallback.
"""

from __future__ import annotations

import logging
import os
import select
import socket
import threading
from pathlib import Path

log = logging.getLogger(__name__)


def bell_dir(data_dir: Path, stage: str) -> Path:
    return data_dir / "run" / "bells" / stage


class Doorbell:
    """The bell of one waiting process of `stage` (worker | send)."""

    def __init__(self, data_dir: Path, stage: str) -> None:
        # host and pid: two containers sharing data_dir may each run a worker as pid 7
        self.path = bell_dir(data_dir, stage) / f"{socket.gethostname()[:32]}-{os.getpid()}.sock"
        self._sock: socket.socket | None = None
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.unlink(missing_ok=True)  # a process of this host that had this pid before us
            sock.bind(str(self.path))
            sock.setblocking(False)
        except OSError as exc:  # e.g. a path over the 107 bytes AF_UNIX allows: polling only
            sock.close()
            log.info("%s bell not available (%s): waiting by polling only", stage, exc)
            return
        self._sock = sock

    @property
    def listening(self) -> bool:
        return self._sock is not None

    def wait(self, stop: threading.Event, timeout: float) -> bool:
        """Until rung, `timeout` passes or `stop` is set (seen at least every `timeout`); True if rung."""
        if self._sock is None or stop.is_set():
            stop.wait(timeout)
            return False
        ready, _, _ = select.select([self._sock], [], [], timeout)
        if not ready:
            return False
        try:
            while self._sock.recv(64):  # several rings while busy: one wake-up
                pass
        except OSError:
            pass
        return True

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> Doorbell:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def ring(data_dir: Path, stage: str) -> int:
    """Wake every process waiting at `stage`'s bell; returns how many were rung."""
    try:
        bells = [p for p in bell_dir(data_dir, stage).iterdir() if p.suffix == ".sock"]
    except OSError:
        return 0
    if not bells:
        return 0
    rung = 0
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.setblocking(False)
        for path in bells:
            try:
                sock.sendto(b"\0", str(path))
                rung += 1
            except (ConnectionRefusedError, FileNotFoundError):
                path.unlink(missing_ok=True)  # its process is gone
            except OSError:
                pass  # its queue is full (it will wake anyway), or not ours to write to
    return rung
