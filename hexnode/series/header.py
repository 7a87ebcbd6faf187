"""One file's header, read the same way by route (a series indexed before receive kept its header),
the worker's volume loader and `hexnode run`: without pixel data, and a `VolumeError` saying why
when it is not a DICOM file the series can be read from. Receive's indexer reads other things
(hexnode.receive.index.index_header: only the indexed elements, bounded, into a typed row), which
is why it has a name of its own."""

from __future__ import annotations

from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

# The most images one series may have: the selection rules refuse more, and the loader stops
# before reading that many headers.
MAX_SLICES = 2000


class VolumeError(ValueError):
    """The files do not form one analysable volume; `reason` is for the not-analysed report."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def read_header(path: str | Path) -> Dataset:
    """The header of one file without its pixel data; `VolumeError` when it is not DICOM."""
    try:
        ds = pydicom.dcmread(str(path), stop_before_pixels=True)
    except (InvalidDicomError, EOFError, OSError, ValueError, KeyError, TypeError) as exc:
        raise VolumeError(f"unreadable DICOM file ({type(exc).__name__})") from None
    # pydicom reads a truncated file up to where it ends without complaint
    if not ds.get("SOPClassUID") or not ds.get("SOPInstanceUID"):
        raise VolumeError("unreadable DICOM file (truncated or incomplete header)")
    return ds
