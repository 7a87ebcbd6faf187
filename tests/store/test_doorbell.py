"""The doorbell between stages (hexnode.store.doorbell): a ring ends an idle wait at once; a bell
nobody hears, a dead process's socket or a path AF_UNIX cannot hold leave polling as it was."""

from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path

from hexnode.store.doorbell import Doorbell, bell_dir, ring


def test_a_ring_ends_the_wait_at_once(tmp_path: Path) -> None:
    stop = threading.Event()
    with Doorbell(tmp_path, "worker") as bell:
        assert bell.listening
        t0 = time.monotonic()
        assert bell.wait(stop, 0.2) is False  # nothing rang: the whole poll interval
        assert time.monotonic() - t0 >= 0.19
        timer = threading.Timer(0.05, lambda: ring(tmp_path, "worker"))
        timer.start()
        t0 = time.monotonic()
        assert bell.wait(stop, 5.0) is True
        assert time.monotonic() - t0 < 1.0  # woken by the ring, not by the 5 s poll
        timer.join()
        for _ in range(3):  # rings while busy are one wake-up, then the bell is quiet again
            assert ring(tmp_path, "worker") == 1
        assert bell.wait(stop, 1.0) is True
        assert bell.wait(stop, 0.05) is False
        assert ring(tmp_path, "send") == 0  # another stage's bell
    assert not bell.path.exists() and ring(tmp_path, "worker") == 0  # closed: nobody to ring


def test_a_dead_process_socket_is_removed_and_polling_is_the_fallback(tmp_path: Path) -> None:
    folder = bell_dir(tmp_path, "send")
    folder.mkdir(parents=True)
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    dead.bind(str(folder / "99999999.sock"))
    dead.close()  # the file stays, nobody listens
    assert ring(tmp_path, "send") == 0
    assert not (folder / "99999999.sock").exists()
    long_dir = tmp_path / ("d" * 120)  # over the 107 bytes a UNIX socket path may have
    stop = threading.Event()
    with Doorbell(long_dir, "worker") as bell:
        assert not bell.listening
        t0 = time.monotonic()
        assert bell.wait(stop, 0.1) is False
        assert time.monotonic() - t0 >= 0.09
        stop.set()
        t0 = time.monotonic()
        bell.wait(stop, 5.0)
        assert time.monotonic() - t0 < 1.0  # a stop is seen at once
    assert ring(long_dir, "worker") == 0


def test_the_bell_of_a_process_is_named_by_its_host_and_pid(tmp_path: Path) -> None:
    with Doorbell(tmp_path, "worker") as bell:
        assert bell.path == bell_dir(tmp_path, "worker") / f"{socket.gethostname()[:32]}-{os.getpid()}.sock"
        again = Doorbell(tmp_path, "worker")  # the same pid again (a restart in place): takes the name over
        try:
            assert again.listening and ring(tmp_path, "worker") == 1
        finally:
            again.close()
