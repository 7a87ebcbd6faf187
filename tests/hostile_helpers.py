"""A raw DICOM Upper Layer peer for the hostile-peer tests: PDUs built byte by byte, so that they can be
broken on purpose, and structured mutations of A-ASSOCIATE-RQ, P-DATA-TF and C-STORE datasets."""

from __future__ import annotations

import random
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

CT = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
APP_CONTEXT = "1.2.840.10008.3.1.1.1"
IMPL_UID = "1.2.826.0.1.3680043.10.999.22"


def _uid(value: str) -> bytes:
    raw = value.encode("ascii", "replace")
    return raw + (b"\0" if len(raw) % 2 else b"")


def item(kind: int, body: bytes) -> bytes:
    return struct.pack(">BBH", kind, 0, len(body)) + body


def pdu(kind: int, body: bytes) -> bytes:
    return struct.pack(">BBL", kind, 0, len(body)) + body


def ae(title: str | bytes) -> bytes:
    raw = title if isinstance(title, bytes) else title.encode("ascii", "replace")
    return raw[:16].ljust(16, b" ")


def presentation_context(cx_id: int, abstract: str = CT, syntaxes: tuple[str, ...] = (EXPLICIT_LE,)) -> bytes:
    body = struct.pack(">BBBB", cx_id, 0, 0, 0) + item(0x30, _uid(abstract))
    body += b"".join(item(0x40, _uid(ts)) for ts in syntaxes)
    return item(0x20, body)


def user_info(max_length: int = 0) -> bytes:
    return item(0x50, item(0x51, struct.pack(">L", max_length)) + item(0x52, _uid(IMPL_UID)))


def associate_rq(calling: str | bytes = "FUZZER", called: str | bytes = "HEXNODE",
                 contexts: list[bytes] | None = None, version: int = 1) -> bytes:
    fixed = struct.pack(">HH", version, 0) + ae(called) + ae(calling) + bytes(32)
    items = item(0x10, APP_CONTEXT.encode()) + b"".join(contexts if contexts is not None else [presentation_context(1)])
    return pdu(0x01, fixed + items + user_info())


def release_rq() -> bytes:
    return pdu(0x05, bytes(4))


def abort() -> bytes:
    return pdu(0x07, bytes(4))


def pdv(cx_id: int, control: int, data: bytes) -> bytes:
    return struct.pack(">LBB", len(data) + 2, cx_id, control) + data


def p_data(*pdvs: bytes) -> bytes:
    return pdu(0x04, b"".join(pdvs))


def _elem(tag: int, value: bytes) -> bytes:
    return struct.pack("<HHL", 0x0000, tag, len(value)) + value


def store_command(sop_instance: str, message_id: int = 1, sop_class: str = CT) -> bytes:
    """A C-STORE-RQ command set, implicit VR little endian."""
    body = (_elem(0x0002, _uid(sop_class)) + _elem(0x0100, struct.pack("<H", 0x0001))
            + _elem(0x0110, struct.pack("<H", message_id)) + _elem(0x0700, struct.pack("<H", 0))
            + _elem(0x0800, struct.pack("<H", 0x0001)) + _elem(0x1000, _uid(sop_instance)))
    return _elem(0x0000, struct.pack("<L", len(body))) + body


def dataset_of(path: Path) -> tuple[str, bytes]:
    """(SOP Instance UID, the dataset's bytes as stored: explicit VR little endian, no file meta)."""
    from pydicom import dcmread

    raw = path.read_bytes()
    (group_length,) = struct.unpack("<L", raw[140:144])
    return str(dcmread(path, stop_before_pixels=True).SOPInstanceUID), raw[144 + group_length:]


class Peer:
    """One raw connection to the SCP."""

    def __init__(self, port: int, source: str = "127.0.0.1", timeout: float = 10.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout, source_address=(source, 0))

    def send(self, data: bytes) -> bool:
        try:
            self.sock.sendall(data)
            return True
        except OSError:
            return False

    def read_pdu(self) -> tuple[int, bytes] | None:
        head = self._read(6)
        if head is None:
            return None
        kind, _, length = struct.unpack(">BBL", head)
        body = self._read(length)
        return None if body is None else (kind, body)

    def _read(self, n: int) -> bytes | None:
        buf = bytearray()
        while len(buf) < n:
            try:
                chunk = self.sock.recv(n - len(buf))
            except OSError:
                return None
            if not chunk:
                return None
            buf += chunk
        return bytes(buf)

    def associate(self, rq: bytes | None = None) -> int | None:
        """Send an A-ASSOCIATE-RQ; the accepted presentation context ID, or None if not accepted."""
        if not self.send(rq or associate_rq()):
            return None
        got = self.read_pdu()
        if got is None or got[0] != 0x02:
            return None
        body, pos = got[1], 68
        while pos + 4 <= len(body):
            kind, _, length = struct.unpack(">BBH", body[pos:pos + 4])
            if kind == 0x21 and body[pos + 6] == 0:
                return body[pos + 4]
            pos += 4 + length
        return None

    def store(self, cx_id: int, sop_instance: str, dataset: bytes, message_id: int = 1,
              fragment: int = 16384) -> int | None:
        """C-STORE one dataset; its status, or None if the connection ended first."""
        self.send(p_data(pdv(cx_id, 0x03, store_command(sop_instance, message_id))))
        for i in range(0, len(dataset), fragment):
            last = i + fragment >= len(dataset)
            if not self.send(p_data(pdv(cx_id, 0x02 if last else 0x00, dataset[i:i + fragment]))):
                return None
        return self.read_status()

    def read_status(self) -> int | None:
        got = self.read_pdu()
        if got is None or got[0] != 0x04:
            return None
        data = got[1][6:]  # one PDV: length, context, control
        pos = 0
        while pos + 8 <= len(data):
            group, elem, length = struct.unpack("<HHL", data[pos:pos + 8])
            if (group, elem) == (0x0000, 0x0900):
                return int(struct.unpack("<H", data[pos + 8:pos + 10])[0])
            pos += 8 + length
        return None

    def wait_closed(self, timeout: float) -> float | None:
        """Seconds until the node closed the connection (reading and discarding), None if it did not."""
        t0 = time.monotonic()
        self.sock.settimeout(0.2)
        while time.monotonic() - t0 < timeout:
            try:
                if not self.sock.recv(65536):
                    return time.monotonic() - t0
            except TimeoutError:
                continue
            except OSError:
                return time.monotonic() - t0
        return None

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


# --- structured mutations -----------------------------------------------------------------------------

def flip(rng: random.Random, data: bytes, n: int | None = None, start: int = 0) -> bytes:
    out = bytearray(data)
    for _ in range(n or rng.randint(1, 8)):
        i = rng.randrange(start, len(out))
        out[i] = rng.randrange(256)
    return bytes(out)


def set_u32(data: bytes, offset: int, value: int) -> bytes:
    return data[:offset] + struct.pack(">L", value & 0xFFFFFFFF) + data[offset + 4:]


def associate_rq_mutations() -> list[Callable[[random.Random], bytes]]:
    """Broken A-ASSOCIATE-RQs (each: rng -> bytes to send as the first thing on a connection)."""
    good = associate_rq()
    return [
        lambda r: flip(r, good, start=6),  # random bytes of the body
        lambda r: good[:r.randrange(1, len(good))],  # truncated (then silence)
        lambda r: set_u32(good, 2, len(good) - 6 + r.choice([-60, -1, 1, 100, 2**31, 2**32 - 1])),
        lambda r: good[:74] + bytes([0x10, 0]) + struct.pack(">H", r.choice([0, 1, 0xFFFF])) + good[78:],
        lambda r: bytes([r.choice([0x00, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0xFF])]) + good[1:],
        lambda r: r.randbytes(r.randrange(0, 3000)),
        lambda r: associate_rq(contexts=[]),  # no presentation context
        lambda r: associate_rq(contexts=[presentation_context(2 * r.randrange(128) + 1) for _ in range(200)]),
        lambda r: associate_rq(contexts=[presentation_context(2)]),  # even context ID
        lambda r: associate_rq(version=r.choice([0, 2, 0xFFFF])),
        lambda r: associate_rq(calling=b"EVIL\nWARNING x", called=r.choice([b"HEXNODE", b"\x00" * 16, b"\x1b[31m"])),
        lambda r: associate_rq(contexts=[presentation_context(1, abstract="1." * 40, syntaxes=("x" * 70,))]),
        lambda r: pdu(0x01, good[6:74]),  # only the fixed fields
        lambda r: good + r.randbytes(r.randrange(1, 500)),  # garbage right after a valid request
    ]


def p_data_mutations(dataset: bytes, sop_instance: str) -> list[Callable[[random.Random, int], bytes]]:
    """Broken traffic after a valid association (rng, accepted context ID -> bytes)."""
    cmd = store_command(sop_instance)
    return [
        lambda r, cx: pdu(0x04, struct.pack(">LBB", r.choice([0, 1, 2**31]), cx, 0x03) + cmd),  # PDV length
        lambda r, cx: p_data(pdv(cx + 2, 0x03, cmd)),  # context not negotiated
        lambda r, cx: p_data(pdv(cx, 0x02, dataset[:2000])),  # dataset before any command
        lambda r, cx: p_data(pdv(cx, 0x03, flip(r, cmd))),  # mutated command set
        lambda r, cx: p_data(pdv(cx, 0x03, cmd[:r.randrange(1, len(cmd))])),  # truncated command
        lambda r, cx: p_data(pdv(cx, r.choice([0x04, 0x10, 0xFF, 0x01]), cmd)),  # control header
        lambda r, cx: set_u32(p_data(pdv(cx, 0x03, cmd)), 2, r.choice([2**20, 2**32 - 1])),  # PDU longer than sent
        lambda r, cx: r.choice([associate_rq(), pdu(0x02, bytes(68)), pdu(0x09, bytes(10)), pdu(0x06, bytes(4))]),
        lambda r, cx: p_data(pdv(cx, 0x03, cmd)) + p_data(pdv(cx, 0x00, dataset[:3000])),  # then silence
        lambda r, cx: p_data(pdv(cx, 0x03, cmd)) + p_data(pdv(cx, 0x02, dataset[:5000]))[:3000],  # cut in a PDU
    ]


def dataset_mutations(dataset: bytes) -> list[Callable[[random.Random], bytes]]:
    """Broken datasets sent with a valid C-STORE-RQ command."""
    return [
        lambda r: dataset[:r.randrange(1, 2000)],  # truncated in the header
        lambda r: flip(r, dataset[:2000], r.randint(1, 30)) + dataset[2000:],  # header bytes
        lambda r: _bad_length(r, dataset),
        lambda r: b"\x08\x00\x05\x00CS\x0a\x00ISO_IR 100" + struct.pack("<HH", 0x0008, 0x1140) + b"SQ\0\0"
        + b"\xff\xff\xff\xff" + b"\xfe\xff\x00\xe0\xff\xff\xff\xff" * r.randint(1, 200),  # unterminated sequences
        lambda r: r.randbytes(r.randrange(0, 4000)),
        lambda r: b"",  # empty dataset
    ]


def _bad_length(r: random.Random, dataset: bytes) -> bytes:
    # explicit VR little endian, short form: tag(4) VR(2) length(2); set one element's length to nonsense
    pos = 0
    out = bytearray(dataset)
    for _ in range(r.randint(1, 20)):
        if pos + 8 > len(out):
            break
        vr = bytes(out[pos + 4:pos + 6])
        if vr in (b"OB", b"OW", b"SQ", b"UN", b"UT", b"OF", b"UC", b"UR"):
            (length,) = struct.unpack("<L", out[pos + 8:pos + 12])
            pos += 12 + (length if length != 0xFFFFFFFF else 0)
        else:
            (length,) = struct.unpack("<H", out[pos + 6:pos + 8])
            pos += 8 + length
    if pos + 8 <= len(out):
        out[pos + 6:pos + 8] = struct.pack("<H", r.choice([0xFFFF, 0xFFFE, 1, 3]))
    return bytes(out)


@dataclass
class Outcome:
    kind: str
    closed_after: float | None


def run_mutation(port: int, source: str, rng: random.Random, kind: str, good_dataset: bytes, sop: str,
                 hold: float) -> Outcome:
    """One connection: `kind` says which family; the node must close it within `hold` seconds."""
    try:
        peer = Peer(port, source, timeout=5)
    except OSError:
        return Outcome(kind + ":connect-refused", 0.0)
    try:
        if kind == "associate":
            fns = associate_rq_mutations()
            peer.send(rng.choice(fns)(rng))
            return Outcome(kind, peer.wait_closed(hold))
        cx = peer.associate()
        if cx is None:
            return Outcome(kind + ":not-associated", peer.wait_closed(hold))
        if kind == "pdata":
            fns2 = p_data_mutations(good_dataset, sop)
            peer.send(rng.choice(fns2)(rng, cx))
            return Outcome(kind, peer.wait_closed(hold))
        # a mutated dataset behind a valid command, then release or abort or just leave
        ds = rng.choice(dataset_mutations(good_dataset))(rng)
        instance = rng.choice([f"1.2.826.0.1.3680043.10.999.22.{rng.randrange(10**9)}", "../../../etc/passwd",
                               "9" * 200, ""])
        peer.store(cx, instance, ds)
        ending = rng.choice([release_rq(), abort(), b""])
        if ending:
            peer.send(ending)
        return Outcome(kind, peer.wait_closed(hold))
    finally:
        peer.close()


# --- hostile data sets (shared with bench/hostile.py) ----------------------------------------------

PRIVATE_BOMB_TAG = 0x00091001  # (0009,1001) OB, private creator (0009,0010): before the Pixel Data


def small_ct(sop_instance: str | None = None, *, series_uid: str | None = None, study_uid: str | None = None,
             size: int = 16, number: int = 1) -> object:
    """A CT slice (pydicom Dataset with file meta, explicit VR little endian) with patient identifiers."""
    import numpy as np
    from plumbing_helpers import ct_slice
    from pydicom.uid import generate_uid

    ds = ct_slice(number=number, position=[-4.0, -4.0, 5.0 * number], size=size, sop_instance=sop_instance,
                  study_uid=study_uid or generate_uid(), series_uid=series_uid or generate_uid())
    ds.add_new(0x7FE00010, "OW", np.full((size, size), 1000, dtype=np.uint16).tobytes())  # VR explicit: split-encodable
    return ds


def _encode(ds: object) -> bytes:
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, False
    write_dataset(fp, ds)  # type: ignore[arg-type]
    return fp.getvalue()


def deflate_bomb(out: Path, inflated_mib: int, ds: object | None = None) -> Path:
    """`ds` (a small CT) as Deflated Explicit VR Little Endian with a private OB element of
    `inflated_mib` MiB of zeros before its Pixel Data: a few hundred KiB on disk. Written as a
    stream: building it never holds the inflated bytes."""
    import zlib

    from pydicom.dataset import Dataset
    from pydicom.filewriter import write_file_meta_info
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    ds = ds or small_ct()
    low, high = Dataset(), Dataset()
    for elem in ds:  # type: ignore[attr-defined]
        (low if elem.tag.group < 0x0009 else high).add(elem)
    meta = ds.file_meta  # type: ignore[attr-defined]
    meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    creator = b"HEXNODE TEST"
    private = (struct.pack("<HH2sH", 0x0009, 0x0010, b"LO", len(creator)) + creator
               + struct.pack("<HH2sHL", 0x0009, 0x1001, b"OB", 0, inflated_mib << 20))
    out.parent.mkdir(parents=True, exist_ok=True)
    z = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    zeros = bytes(1 << 20)
    with open(out, "wb") as f:
        f.write(b"\x00" * 128 + b"DICM")
        write_file_meta_info(f, meta, enforce_standard=True)  # type: ignore[arg-type]
        f.write(z.compress(_encode(low) + private))
        for _ in range(inflated_mib):
            f.write(z.compress(zeros))
        f.write(z.compress(_encode(high)))
        f.write(z.flush())
    return out


def with_elements(out: Path, ds: object, encoded: bytes) -> Path:
    """`ds` written explicit VR little endian with `encoded` (elements already encoded, explicit VR
    little endian, in tag order) spliced in where its first tag belongs."""
    from pydicom.dataset import Dataset
    from pydicom.filewriter import write_file_meta_info

    group, element = struct.unpack("<HH", encoded[:4])
    first = group << 16 | element
    low, high = Dataset(), Dataset()
    for elem in ds:  # type: ignore[attr-defined]
        (low if elem.tag < first else high).add(elem)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "wb") as f:
        f.write(b"\x00" * 128 + b"DICM")
        write_file_meta_info(f, ds.file_meta, enforce_standard=True)  # type: ignore[attr-defined]
        f.write(_encode(low) + encoded + _encode(high))
    return out


def empty_items_sequence(n: int, tag: tuple[int, int] = (0x5200, 0x9229)) -> bytes:
    """An undefined-length sequence (default Shared Functional Groups) of `n` empty items: 16 bytes
    each on the wire, ~0.7 KiB each once pydicom has parsed it."""
    item = struct.pack("<HHL", 0xFFFE, 0xE000, 0xFFFFFFFF) + struct.pack("<HHL", 0xFFFE, 0xE00D, 0)
    return (struct.pack("<HH2sHL", tag[0], tag[1], b"SQ", 0, 0xFFFFFFFF) + item * n
            + struct.pack("<HHL", 0xFFFE, 0xE0DD, 0))


def oversized_nested_value(declared: int = 0xFFFFFFF0) -> bytes:
    """Shared Functional Groups with one item whose private OB declares `declared` bytes and holds
    none: a reader that allocates what a length says asks for that much memory."""
    inner = struct.pack("<HH2sHL", 0x0009, 0x1001, b"OB", 0, declared)
    return (struct.pack("<HH2sHL", 0x5200, 0x9229, b"SQ", 0, 0xFFFFFFFF)
            + struct.pack("<HHL", 0xFFFE, 0xE000, 0xFFFFFFFF) + inner)


PHI = ("SECRET^PATIENT", "PID-SECRET-42", "19700101", "PID-SEQ-SECRET", "19650303", "PRIVATE-SECRET", "DR^DEEP",
       "OTHER-PID-SECRET", "SEQ^NAME")


def phi_in_sequences(tmp_path: Path, n: int = 2) -> list[Path]:
    """CT slices with patient identifiers at the top level, inside sequences (one that route reads,
    one it does not), in a private element and in a person name inside a sequence."""
    from pydicom.dataset import Dataset
    from pydicom.uid import generate_uid

    series, study, paths = generate_uid(), generate_uid(), []
    tmp_path.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        ds = small_ct(series_uid=series, study_uid=study, number=i + 1)
        request = Dataset()
        request.PatientID, request.PatientBirthDate = "PID-SEQ-SECRET", "19650303"
        request.RequestedProcedureID, request.ScheduledProcedureStepDescription = "RP1", "CT HEAD"
        ds.RequestAttributesSequence = [request]  # type: ignore[attr-defined]
        other = Dataset()
        other.PatientID = "OTHER-PID-SECRET"
        ds.OtherPatientIDsSequence = [other]  # type: ignore[attr-defined]
        code = Dataset()
        code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = "C-B0300", "SRT", "IODINE"
        code.PatientName, code.PatientID = "SEQ^NAME", "PID-SEQ-SECRET"  # where no one should put them
        ds.ContrastBolusAgentSequence = [code]  # type: ignore[attr-defined]
        measures = Dataset()
        measures.SliceThickness = 5.0
        group = Dataset()
        group.PixelMeasuresSequence = [measures]
        group.PerformingPhysicianName = "DR^DEEP"
        ds.SharedFunctionalGroupsSequence = [group]  # type: ignore[attr-defined]
        ds.private_block(0x0029, "HEXNODE TEST", create=True).add_new(0x10, "LO", "PRIVATE-SECRET")  # type: ignore[attr-defined]
        ds.SeriesDescription, ds.BodyPartExamined, ds.StationName = "Head 5mm", "HEAD", "CT-STROKE"  # type: ignore[attr-defined]
        p = tmp_path / f"phi{i}.dcm"
        ds.save_as(p, enforce_file_format=True)  # type: ignore[attr-defined]
        paths.append(p)
    return paths
