"""Fixtures shared by the receive tests (tests/receive/test_receive.py, tests/receive/test_hostile.py)."""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from plumbing_helpers import free_port

from hexnode.config import DicomConfig
from hexnode.receive import fastpath
from hexnode.receive.scp import Receiver
from hexnode.store.db import open_store
from hexnode.store.spool import Spool


@pytest.fixture
def fast_receive() -> bool:
    """[dicom] fast_receive for make_receiver: the default, unless a test overrides it with
    plumbing_helpers.BOTH_RECEIVE_MODES (both modes)."""
    return DicomConfig().fast_receive


@pytest.fixture
def make_receiver(tmp_path: Path, fast_receive: bool) -> Iterator:
    started: list[Receiver] = []
    old_tempdir = tempfile.tempdir

    def make(**dicom_overrides) -> Receiver:
        """A started Receiver on a free port (SQLite store and spool under tmp_path); stopped after the test."""
        dicom = dataclasses.replace(DicomConfig(port=free_port(), min_free_disk_mb=1, fast_receive=fast_receive),
                                    **dicom_overrides)
        store = open_store(f"sqlite:///{tmp_path / 'hexnode.sqlite'}")
        rx = Receiver(dicom, store, Spool(tmp_path / "spool"))
        rx.start()
        started.append(rx)
        # the mode asked for is the mode running (the fast path is process-wide)
        assert fastpath.installed() == dicom.fast_receive
        return rx

    yield make
    for rx in reversed(started):  # each gives back the tempfile directory it found
        rx.stop()
        rx.store.dispose()
    assert tempfile.tempdir == old_tempdir, "a stopped receiver left tempfile's directory in its spool"
    assert not fastpath.installed(), "a stopped receiver left the fast path installed"
