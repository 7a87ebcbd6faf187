"""What a received dataset must show before it is stored, checked in the C-STORE handler.

* **Deflate** (Deflated Explicit VR Little Endian): inflated as a stream into a new file, at most
  ``[dicom] max_instance_mb`` and never below the free-disk floor, and stored as Explicit VR
  Little Endian (the same dataset, byte for byte, uncompressed). A 1 MB dataset can inflate to
  gigabytes, and every reader (pydicom's too) inflates it whole into memory first; past the cap
  the C-STORE is answered 0xA700 (Out of Resources), a corrupt stream 0xC000.
* **Identity**: SOP Class and SOP Instance UID of the dataset equal to those of the C-STORE
  command, else 0xA900 (Data Set does not match SOP Class), as dcmtk's storescp answers; the
  file is stored under the command's UID and indexed under the dataset's, so a mismatch would
  index one instance under another's name. Study, Series and SOP Instance UIDs made of digits
  and dots only, at most 64 characters (a trailing NUL or space is padding), else 0xC000
  (Cannot Understand), as is a dataset without them.

Only the first ``PREFIX_BYTES`` of the dataset are parsed here (the UIDs are in groups 0008 and
0020, within the first few KiB of every real header), so a hostile header cannot make the
receiving process allocate more than about that; when they are not complete within it, the
instance is accepted and the indexer, which reads the whole header in its own process, applies
the same checks and quarantines it (hexnode.receive.index).
"""

from __future__ import annotations

import functools
import os
import re
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from io import BytesIO
from typing import Any

from pydicom.dataset import FileMetaDataset
from pydicom.filereader import data_element_generator, read_dataset
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian

from hexnode.receive.limits import mb

STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_DOES_NOT_MATCH = 0xA900
STATUS_CANNOT_UNDERSTAND = 0xC000

PREFIX_BYTES = 64 * 1024
FIRST_READ = 16 * 1024
INFLATE_CHUNK = 1 << 20
_UID_BYTES = re.compile(rb"[0-9]+(\.[0-9]+)*")

SOP_CLASS = 0x00080016
SOP_INSTANCE = 0x00080018
STUDY = 0x0020000D
SERIES = 0x0020000E
_NAMES = {SOP_CLASS: "SOPClassUID", SOP_INSTANCE: "SOPInstanceUID", STUDY: "StudyInstanceUID",
          SERIES: "SeriesInstanceUID"}


@dataclass(frozen=True)
class Verdict:
    status: int = 0  # 0: store it
    reason: str = ""  # for the log and the response's Error Comment (at most 64 characters)

    @property
    def ok(self) -> bool:
        return self.status == 0


ACCEPT = Verdict()


def uid_text(raw: bytes | str | None) -> str | None:
    """A UID value without its padding (one trailing NUL, or spaces), None when it is not a valid UID
    string: digits and dots only, no empty component, at most 64 characters."""
    if raw is None:
        return None
    data = raw.encode("latin-1", "replace") if isinstance(raw, str) else bytes(raw)
    data = data.rstrip(b"\x00 ")
    if not 0 < len(data) <= 64 or not _UID_BYTES.fullmatch(data):
        return None
    return data.decode("ascii")


def dataset_offset(path: str) -> int:
    """Where the dataset starts in a file written by pynetdicom's chunked receive: after the
    128-byte preamble, "DICM" and the File Meta Information group (its group length is first)."""
    with open(path, "rb") as f:
        head = f.read(144)
    if len(head) < 144 or head[128:132] != b"DICM" or head[132:136] != b"\x02\x00\x00\x00":
        raise ValueError("not a file written by the receiver")
    (group_length,) = struct.unpack("<L", head[140:144])
    return 144 + group_length


class InflateError(ValueError):
    def __init__(self, verdict: Verdict) -> None:
        super().__init__(verdict.reason)
        self.verdict = verdict


def inflate(src: str, dst: str, max_bytes: int, min_free: int, free_bytes: Callable[[], int]) -> int:
    """Write `src` (a deflated dataset file) to `dst` inflated, as Explicit VR Little Endian.

    Raises InflateError (with the C-STORE status) past `max_bytes` inflated (0: no cap), when the
    spool's free space would drop below `min_free`, or for a corrupt stream. Returns the size."""
    offset = dataset_offset(src)
    meta = _file_meta(src, offset)
    meta.TransferSyntaxUID = UID(ExplicitVRLittleEndian)
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    written = 0
    since_check = INFLATE_CHUNK  # check free space before the first write
    with open(src, "rb") as f, open(dst, "wb") as out:
        out.write(b"\x00" * 128 + b"DICM")
        write_file_meta_info(out, meta, enforce_standard=False)  # type: ignore[arg-type]
        f.seek(offset)
        pending = b""
        while True:
            if not pending:
                pending = f.read(INFLATE_CHUNK)
                if not pending:
                    break
            try:
                chunk = inflater.decompress(pending, INFLATE_CHUNK)
            except zlib.error:
                raise InflateError(Verdict(STATUS_CANNOT_UNDERSTAND, "deflated data set is corrupt")) from None
            pending = inflater.unconsumed_tail
            written += len(chunk)
            if max_bytes and written > max_bytes:
                raise InflateError(Verdict(STATUS_OUT_OF_RESOURCES,
                                           f"inflates beyond dicom.max_instance_mb = {mb(max_bytes)}"))
            since_check += len(chunk)
            if min_free and since_check >= INFLATE_CHUNK:
                if free_bytes() - len(chunk) < min_free:
                    raise InflateError(Verdict(STATUS_OUT_OF_RESOURCES, "free disk below dicom.min_free_disk_mb"))
                since_check = 0
            out.write(chunk)
            if inflater.eof:
                break
        if not inflater.eof:
            raise InflateError(Verdict(STATUS_CANNOT_UNDERSTAND, "deflated data set is truncated"))
        out.write(inflater.flush())
    return os.path.getsize(dst)


def _file_meta(path: str, offset: int) -> FileMetaDataset:
    """The File Meta Information group exactly as its group length says (pydicom's reader goes on
    while the next bytes look like group 0002, and a deflate stream's first bytes can)."""
    with open(path, "rb") as f:
        f.seek(132)
        group = f.read(offset - 132)
    try:
        return FileMetaDataset(read_dataset(BytesIO(group), False, True))
    except Exception:
        raise InflateError(Verdict(STATUS_CANNOT_UNDERSTAND, "file meta information unreadable")) from None


def is_deflated(transfer_syntax: Any) -> bool:
    return str(transfer_syntax) == DeflatedExplicitVRLittleEndian


@functools.lru_cache(maxsize=64)
def _encoding(transfer_syntax: str) -> tuple[bool, bool]:
    uid = UID(transfer_syntax)
    return uid.is_implicit_VR, uid.is_little_endian


def check_identity(path: str, transfer_syntax: str, sop_class: str, sop_instance: str) -> Verdict:
    """The dataset's UIDs against the C-STORE command's (`path`: the received file, uncompressed
    or a compressed pixel syntax; deflate is inflated before). It runs for every instance on the
    response path: one read of the file's head (the first 16 KiB of the data set, 64 KiB when its
    UIDs are not complete in those), the elements parsed without building a Dataset."""
    try:
        with open(path, "rb") as f:
            head = f.read(144 + 512 + FIRST_READ)
            offset = _offset(head)
            prefix = head[offset:]
            whole = len(head) < 144 + 512 + FIRST_READ  # the file ended: the prefix is all of it
            verdict = None if whole else _judge(prefix, transfer_syntax, sop_class, sop_instance, complete=False)
            if verdict is None and not whole:
                f.seek(offset)
                prefix = f.read(PREFIX_BYTES)
                whole = len(prefix) < PREFIX_BYTES
    except (OSError, ValueError):
        return ACCEPT  # not ours to judge here: the indexer reads it, or quarantines it
    if verdict is not None:
        return verdict
    return _judge(prefix, transfer_syntax, sop_class, sop_instance, complete=whole) or ACCEPT


_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}


def scan_explicit_le(prefix: bytes) -> tuple[dict[int, bytes], bool] | None:
    """The four UIDs of an Explicit VR Little Endian data set's start, the common case, in one
    pass over defined-length elements (pydicom's element generator costs ~100 us per instance on
    the response path). Returns (complete values by tag, whether an element past (0020,000E) was
    reached), or None for anything it does not handle (an undefined length, a VR that is not two
    capitals) so that pydicom reads it; tests/receive/test_fuzz_receive.py checks the two agree."""
    found: dict[int, bytes] = {}
    pos, end = 0, len(prefix)
    unpack = struct.unpack_from
    while pos + 8 <= end:
        group, element = unpack("<HH", prefix, pos)
        tag = group << 16 | element
        if tag > SERIES:
            return found, True
        vr = prefix[pos + 4:pos + 6]
        if vr in _LONG_VRS:
            if pos + 12 > end:
                break
            (length,) = unpack("<L", prefix, pos + 8)
            start = pos + 12
        elif 0x41 <= vr[0] <= 0x5A and 0x41 <= vr[1] <= 0x5A:
            (length,) = unpack("<H", prefix, pos + 6)
            start = pos + 8
        else:
            return None
        if length == 0xFFFFFFFF:
            return None
        if tag in _NAMES and 0 < length and start + length <= end:  # an empty value is no value
            found[tag] = prefix[start:start + length]
        pos = start + length
    return found, False


def scan_pydicom(prefix: bytes, implicit: bool, little: bool) -> tuple[dict[int, bytes], bool] | None:
    """What scan_explicit_le returns, from pydicom's element generator (any transfer syntax);
    None when pydicom cannot parse the prefix."""
    seen_past = False

    def past_series(tag: Any, vr: Any, length: Any) -> bool:
        nonlocal seen_past
        if tag.real > SERIES:  # .real: the plain int (BaseTag's comparisons are Python code)
            seen_past = True
            return True
        return False

    found: dict[int, bytes] = {}
    try:
        for raw in data_element_generator(BytesIO(prefix), implicit, little, stop_when=past_series,
                                          specific_tags=list(_NAMES)):
            tell, length, value = getattr(raw, "value_tell", 0), getattr(raw, "length", 0), raw.value
            if raw.tag in _NAMES and isinstance(value, bytes) and value and tell + length <= len(prefix):
                found[raw.tag] = value  # else cut off by the prefix (or not a value at all)
    except Exception:  # a peer's bytes: any parser failure
        return None
    return found, seen_past


def _offset(head: bytes) -> int:
    if len(head) < 144 or head[128:132] != b"DICM" or head[132:136] != b"\x02\x00\x00\x00":
        raise ValueError("not a file written by the receiver")
    return 144 + struct.unpack("<L", head[140:144])[0]


def _judge(prefix: bytes, transfer_syntax: str, sop_class: str, sop_instance: str, *,
           complete: bool) -> Verdict | None:
    """A verdict from `prefix`, the start of the data set (`complete`: all of it); None when its
    UIDs are not all in it and it is not complete (read more, or leave it to the indexer)."""
    try:
        implicit, little = _encoding(transfer_syntax)
    except ValueError:
        return ACCEPT
    scanned = scan_explicit_le(prefix) if not implicit and little else None
    if scanned is None:
        scanned = scan_pydicom(prefix, implicit, little)
        if scanned is None:  # a peer's bytes pydicom cannot parse
            return Verdict(STATUS_CANNOT_UNDERSTAND, "data set cannot be parsed") if complete else None
    values, seen_past = scanned
    complete = complete or seen_past  # every element up to (0020,000E) was in the prefix
    missing = [name for tag, name in _NAMES.items() if tag not in values]
    if missing and not complete:
        return None
    if missing:
        return Verdict(STATUS_CANNOT_UNDERSTAND, f"no {', '.join(missing)}"[:64])
    uids = {tag: uid_text(values[tag]) for tag in _NAMES}
    for tag, uid in uids.items():
        if uid is None:
            return Verdict(STATUS_CANNOT_UNDERSTAND, f"{_NAMES[tag]} is not a valid UID")
    command_instance = uid_text(sop_instance)
    if command_instance is None:
        return Verdict(STATUS_CANNOT_UNDERSTAND, "command SOP Instance UID is not a valid UID")
    if uids[SOP_CLASS] != uid_text(sop_class):
        return Verdict(STATUS_DOES_NOT_MATCH, "SOP Class UID differs from the command's")
    if uids[SOP_INSTANCE] != command_instance:
        return Verdict(STATUS_DOES_NOT_MATCH, "SOP Instance UID differs from the command's")
    return ACCEPT
