"""Loopback helpers shared by the demo, the benchmarks and the tests: free ports, waiting for a
listener or any condition, and the environment dcmtk's tools need to be measured fairly."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def free_port() -> int:
    """A TCP port free on loopback right now (the caller binds it soon after)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 30.0, proc: subprocess.Popen[bytes] | None = None) -> None:
    """Return once something accepts on 127.0.0.1:`port`; fail early if `proc` exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout:.0f} s")


def wait_for(cond: Callable[[], T], timeout: float, what: str, every: float = 0.2) -> T:
    """`cond()`'s first truthy value, polled every `every` seconds; TimeoutError naming `what`
    when none came within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(every)
    raise TimeoutError(f"{what} (not within {timeout:g} s)")


def dcmtk_env() -> dict[str, str]:
    # Without TCP_NODELAY dcmtk's small PDUs wait on Nagle's algorithm (40 ms each).
    return {**os.environ, "TCP_NODELAY": "1"}


def stop_processes(procs: dict[str, subprocess.Popen[bytes]], node_wait: float, other_wait: float) -> None:
    """SIGTERM to every process still running, then wait for each (`node_wait` for the one named
    "node", whose children stop first, `other_wait` for the rest) and kill what is still there."""
    for proc in procs.values():
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for name, proc in procs.items():
        try:
            proc.wait(node_wait if name == "node" else other_wait)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
