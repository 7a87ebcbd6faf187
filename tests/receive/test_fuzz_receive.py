"""A bounded, fixed-seed random mutator over what reads a peer's bytes, in-process (no sockets, so
thousands of inputs run in seconds; test_hostile.py and test_receive_limits.py send over real ones):

* the header reader and indexer (hexnode.receive.index: index_header, series_header, record_instance)
  and the C-STORE handler's checks (hexnode.receive.admission: check_identity, inflate), on mutated
  data sets of several shapes and transfer syntaxes;
* the PDU path: the stream guard (hexnode.receive.limits.PduGuard) under any chunking, the gate's
  first-PDU screening (hexnode.receive.gate.screen_request), and the fast path's PDU reader
  (hexnode.receive.fastpath._read_pdu_data) against pynetdicom's own P-DATA-TF decoder.

Nothing may escape but the documented refusals (HeaderError, Refused, a Verdict); what is indexed
must fit the database (32-bit integers, finite floats, column lengths, valid UIDs), and no series
header may hold group 0010, a private tag or a person name. Every finding of the mutator while
this was written is a regression test at the end of this file (test_found_*).
``HEXNODE_FUZZ_SCALE=10`` runs ten times the iterations, ``HEXNODE_FUZZ_SEED`` another seed (the
suite's run is sized to stay under ~30 s on the shared 2-core machine).
"""

from __future__ import annotations

import json
import os
import queue
import random
import struct
import zlib
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
from hostile_helpers import (
    associate_rq,
    associate_rq_mutations,
    empty_items_sequence,
    p_data,
    pdv,
    presentation_context,
    small_ct,
    store_command,
)

from hexnode.receive import admission, fastpath
from hexnode.receive.gate import screen_request
from hexnode.receive.index import (
    _CONTROL,
    INT32,
    HeaderError,
    _clean,
    index_header,
    record_instance,
    series_header,
)
from hexnode.receive.limits import PduGuard, ReceiveLimits, Refused
from hexnode.store.db import open_store
from hexnode.store.spool import Spool

SEED = int(os.environ.get("HEXNODE_FUZZ_SEED", "32"))
SOP = "1.2.826.0.1.3680043.10.999.32.1"
SCALE = float(os.environ.get("HEXNODE_FUZZ_SCALE", "1"))
EXPLICIT, IMPLICIT, BIG, DEFLATE = ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2", "1.2.840.10008.1.2.2",
                                    "1.2.840.10008.1.2.1.99")
INTERESTING_32 = (0, 1, 2, 0x7F, 0x80, 0xFF, 0xFFFF, 0x10000, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFE, 0xFFFFFFFF)
HOSTILE_TEXT = (b"1.2.3\x004", b"ABC", b"1." + b"9" * 80, b"NaN", b"inf", b"-1e400", b"99999999999999999999",
                b"\xff\xfe", b"\\" * 40, b"../../x", b"")


# --- seeds -------------------------------------------------------------------------------------------------

def _dataset_bytes(ds: Any, implicit: bool = False, little: bool = True) -> bytes:
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = little, implicit
    write_dataset(fp, ds)
    return fp.getvalue()


def _seeds() -> list[tuple[str, bytes]]:
    """(transfer syntax, data set bytes) of several shapes: plain CT, sequences at depth with
    identifiers, an enhanced-CT-like functional group, implicit and big endian, deflated."""
    from pydicom.dataset import Dataset

    plain = small_ct(SOP, size=4)  # the UID the file meta says it was sent under (_file)
    rich = small_ct(SOP, size=4)
    group, measures, orient = Dataset(), Dataset(), Dataset()
    measures.SliceThickness, measures.PixelSpacing = 5.0, [0.5, 0.5]
    orient.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    group.PixelMeasuresSequence, group.PlaneOrientationSequence = [measures], [orient]
    group.PerformingPhysicianName = "DR^DEEP"
    rich.SharedFunctionalGroupsSequence = [group]  # type: ignore[attr-defined]
    rich.PerFrameFunctionalGroupsSequence = [group, group]  # type: ignore[attr-defined]
    request = Dataset()
    request.PatientID, request.PatientBirthDate = "PID-SEQ", "19650303"
    rich.RequestAttributesSequence = [request]  # type: ignore[attr-defined]
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = "C1", "SRT", "IODINE"
    code.PatientName = "SEQ^NAME"
    rich.ContrastBolusAgentSequence = [code]  # type: ignore[attr-defined]
    rich.private_block(0x0029, "HEXNODE TEST", create=True).add_new(0x10, "LO", "PRIVATE")  # type: ignore[attr-defined]
    rich.ImageType, rich.SeriesDescription, rich.ImagesInAcquisition = ["ORIGINAL", "PRIMARY"], "Head", 12  # type: ignore[attr-defined]
    seeds = [(EXPLICIT, _dataset_bytes(plain)), (EXPLICIT, _dataset_bytes(rich)),
             (IMPLICIT, _dataset_bytes(rich, implicit=True)), (BIG, _dataset_bytes(plain, little=False))]
    z = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    seeds.append((DEFLATE, z.compress(_dataset_bytes(rich)) + z.flush()))
    # a short sequence of empty items before the UIDs' groups end (undefined lengths, nesting)
    raw = _dataset_bytes(plain)
    at = raw.index(b"\x20\x00\x0d\x00")  # (0020,000D): a sequence just before it
    seeds.append((EXPLICIT, raw[:at] + empty_items_sequence(3, (0x0018, 0x1012)) + raw[at:]))
    return seeds


def _file(path: Path, ts: str, dataset: bytes, sop: str = SOP) -> Path:
    from pydicom.dataset import FileMetaDataset
    from pydicom.filewriter import write_file_meta_info

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    meta.MediaStorageSOPInstanceUID = sop
    meta.TransferSyntaxUID = ts
    meta.ImplementationClassUID = "1.2.826.0.1.3680043.10.999.32"
    with open(path, "wb") as f:
        f.write(b"\x00" * 128 + b"DICM")
        write_file_meta_info(f, meta, enforce_standard=True)  # type: ignore[arg-type]
        f.write(dataset)
    return path


# --- mutations ---------------------------------------------------------------------------------------------

def mutate(rng: random.Random, data: bytes, others: list[bytes]) -> bytes:
    out = bytearray(data)
    for _ in range(rng.choice((1, 1, 1, 2, 3, 6))):
        if not out:
            out += rng.randbytes(rng.randrange(1, 64))
            continue
        op = rng.randrange(10)
        i = rng.randrange(len(out))
        if op == 0:  # flip bits
            out[i] ^= 1 << rng.randrange(8)
        elif op == 1:  # an interesting byte
            out[i] = rng.choice((0x00, 0xFF, 0x7F, 0x80, 0x20, 0x5C))
        elif op == 2 and len(out) > i + 4:  # an interesting 32-bit length
            fmt = rng.choice(("<L", ">L"))
            out[i:i + 4] = struct.pack(fmt, rng.choice(INTERESTING_32))
        elif op == 3 and len(out) > i + 2:  # an interesting 16-bit length
            out[i:i + 2] = struct.pack("<H", rng.choice((0, 1, 2, 0xFFFE, 0xFFFF, 64, 65)))
        elif op == 4:  # delete a span
            del out[i:i + rng.randrange(1, 256)]
        elif op == 5:  # duplicate a span
            j = rng.randrange(i, min(len(out), i + 512) + 1)
            out[j:j] = out[i:j]
        elif op == 6:  # insert random bytes
            out[i:i] = rng.randbytes(rng.randrange(1, 32))
        elif op == 7:  # truncate
            del out[rng.randrange(len(out)):]
        elif op == 8 and others:  # splice another seed's tail
            other = rng.choice(others)
            out[i:] = other[rng.randrange(len(other)):] if other else b""
        else:  # a hostile value where a value was (after a 2-byte length)
            text = rng.choice(HOSTILE_TEXT)
            if len(text) % 2:
                text += b"\x00"
            if len(out) > i + 2:
                out[i:i + 2] = struct.pack("<H", len(text))
                out[i + 2:i + 2] = text
    return bytes(out)


def _check_header(h: Any) -> None:
    """What the indexer records must fit the database (PostgreSQL's types and lengths too)."""
    for v in (h.series_number, h.instance_number, h.rows, h.columns, h.number_of_frames, h.images_in_acquisition):
        assert v is None or -INT32 <= v < INT32, v
    for v in [h.slice_thickness, *(h.position or []), *(h.orientation or [])]:
        assert v is None or (isinstance(v, float) and abs(v) != float("inf") and v == v), v
    assert h.modality is None or len(h.modality) <= 16
    for text in (h.modality, h.image_type, h.transfer_syntax):  # no neighbour's bytes in a row either
        assert text is None or not (set(text) & _CONTROL) and "SECRET" not in text and "PID" not in text
    for uid in (h.study_uid, h.series_uid, h.sop_instance_uid, h.sop_class_uid):
        assert admission.uid_text(uid) == uid, uid


# --- targets -------------------------------------------------------------------------------------------------

def _header_target(tmp: Path, store: Any, ts: str, data: bytes, n: int) -> str:
    path = _file(tmp / f"f{n % 8}.dcm", ts, data)
    size = path.stat().st_size
    verdict = admission.check_identity(str(path), ts if ts != DEFLATE else EXPLICIT,
                                       "1.2.840.10008.5.1.4.1.1.2", SOP)
    assert isinstance(verdict, admission.Verdict)
    if ts == DEFLATE:
        try:
            admission.inflate(str(path), str(tmp / "inflated.dcm"), 8 << 20, 0, lambda: 1 << 40)
        except admission.InflateError:
            pass
    try:
        header = index_header(path, max_bytes=8 << 20)
    except HeaderError:
        return "refused"
    _check_header(header)
    js = series_header(header.dataset)
    if js is not None:
        assert _clean(js)
        json.dumps(js, allow_nan=False)
        text = json.dumps(js)
        assert "PID-SEQ" not in text and "SEQ^NAME" not in text and "DR^DEEP" not in text and "PRIVATE" not in text
    with store.transaction() as s:
        record_instance(s, header, f"instances/00/f{n}.dcm", size, "FUZZ", __import__("datetime").datetime(2026, 1, 1))
    return "indexed"


def test_fuzz_the_header_reader_and_the_handlers_checks(tmp_path: Path) -> None:
    rng = random.Random(SEED)
    seeds = _seeds()
    others = [d for _, d in seeds]
    store = open_store(f"sqlite:///{tmp_path / 'fuzz.sqlite'}")
    Spool(tmp_path / "spool").prepare()
    outcomes: dict[str, int] = {}
    failures: list[str] = []
    cases = list(seeds)
    iterations = int(1200 * SCALE)
    for n in range(len(cases) + iterations):
        if n < len(cases):
            ts, data = cases[n]
        else:
            ts, seed = rng.choice(seeds)
            data = mutate(rng, seed, others)
            if ts == DEFLATE and rng.random() < 0.5:  # mutate what is inside the deflate stream too
                inner = mutate(rng, zlib.decompress(seed, -zlib.MAX_WBITS), others)
                z = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
                data = z.compress(inner) + z.flush()
        try:
            got = _header_target(tmp_path, store, ts, data, n)
        except Exception as exc:  # the finding: kept with its input for a regression case
            failures.append(f"{type(exc).__name__}: {exc} [ts {ts}, input {data[:64]!r}... {len(data)} bytes]")
            (tmp_path / f"crash{len(failures)}.bin").write_bytes(ts.encode() + b"\n" + data)
            continue
        outcomes[got] = outcomes.get(got, 0) + 1
    store.dispose()
    print(f"header fuzz: {iterations} mutations + {len(cases)} seeds, outcomes {outcomes}")
    assert not failures, "\n".join(failures[:10])
    assert outcomes.get("indexed", 0) > 50 and outcomes.get("refused", 0) > 50  # both paths exercised


def test_fuzz_the_stream_guard_under_any_chunking() -> None:
    """The guard raises nothing but Refused, and refuses a P-DATA PDU longer than the maximum exactly
    when a plain reference parse of the same stream finds one."""
    rng = random.Random(SEED + 1)
    cmd = store_command("1.2.3.4")
    base = p_data(pdv(1, 0x03, cmd)) + p_data(pdv(1, 0x00, bytes(3000))) + p_data(pdv(1, 0x02, bytes(500)))
    refused = 0
    for _ in range(int(3000 * SCALE)):
        stream = mutate(rng, base, [base]) if rng.random() < 0.8 else rng.randbytes(rng.randrange(200))
        guard = PduGuard(ReceiveLimits(max_pdu=4096, max_instance=1 << 20, min_free=0, spool="/"))
        try:
            pos = 0
            while pos < len(stream):
                step = rng.choice((1, 2, 5, 6, 7, 100, 4096, 1 << 20))
                guard.feed(memoryview(stream)[pos:pos + step])
                pos += step
            got = None
        except Refused as exc:
            got = str(exc)
            refused += 1
        want = _reference_refusal(stream, 4096)
        if want is not None:
            assert got is not None, (want, stream[:40])
        if got is not None and "P-DATA-TF" in got:
            assert want is not None, (got, stream[:40])
    assert refused > 100


def _reference_refusal(stream: bytes, max_pdu: int) -> str | None:
    pos = 0
    while pos + 6 <= len(stream):
        kind, _, length = struct.unpack(">BBL", stream[pos:pos + 6])
        if kind == 0x04 and length > max_pdu:
            return "pdata"
        if kind != 0x04 and length > 1 << 20:
            return "other"
        pos += 6 + length
    return None


def test_fuzz_the_gates_first_pdu_screening() -> None:
    """Whatever a connection sends first: a decision, never an exception; a hand-over with a
    calling AE only for a request pynetdicom's own decoder reads."""
    from pynetdicom.pdu import A_ASSOCIATE_RQ

    rng = random.Random(SEED + 2)
    structured = associate_rq_mutations()
    good = associate_rq(contexts=[presentation_context(1), presentation_context(3)])
    actions: dict[str, int] = {}
    for _ in range(int(3000 * SCALE)):
        r = rng.random()
        head = (rng.choice(structured)(rng) if r < 0.4 else mutate(rng, good, [good]) if r < 0.9
                else rng.randbytes(rng.randrange(1, 400)))
        if not head:
            continue
        verdict = screen_request(head[:48 * 1024])
        actions[verdict.action] = actions.get(verdict.action, 0) + 1
        if verdict.action == "hand_over" and verdict.calling_ae is not None:
            length = struct.unpack(">L", head[2:6])[0]
            rq = A_ASSOCIATE_RQ()
            rq.decode(head[:length + 6])
            assert rq.to_primitive().presentation_context_definition_list
    assert actions.get("drop", 0) > 100 and actions.get("hand_over", 0) > 100, actions


class _FakeSocket:
    def __init__(self, data: bytes) -> None:
        self.data = BytesIO(data)

    def recv(self, n: int) -> bytearray:
        return bytearray(self.data.read(n))


class _FakeMessage:
    def __init__(self) -> None:
        self._data_set_file = BytesIO()


class _FakeDimse:
    def __init__(self) -> None:
        self.message = _FakeMessage()
        self.finals: list[Any] = []

    def receive_primitive(self, primitive: Any) -> None:
        self.finals.append(primitive)


class _FakeDul:
    """What fastpath._read_pdu_data uses of pynetdicom's DULServiceProvider."""

    def __init__(self, data: bytes) -> None:
        self.socket = _FakeSocket(data)
        self.event_queue: queue.Queue[str] = queue.Queue()
        self._recv_pdu: queue.Queue[Any] = queue.Queue()
        self.state_machine = type("SM", (), {"current_state": "Sta6"})()
        self.assoc = type("A", (), {"dimse": _FakeDimse()})()

    def _decode_pdu(self, bytestream: bytearray) -> tuple[Any, str]:
        from pynetdicom.pdu import PDU_TYPES

        cls = {v: k for k, v in PDU_TYPES.items()}[bytestream[0]]
        pdu = cls()
        pdu.decode(bytes(bytestream))
        return pdu, f"Evt{bytestream[0]}"


def test_fuzz_the_fast_paths_pdu_reader_against_pynetdicoms_decoder() -> None:
    """fastpath._read_pdu_data on mutated P-DATA-TF PDUs: never an exception; when it writes the
    fragments itself, exactly the bytes pynetdicom's P_DATA_TF decoder finds in the same PDU."""
    from pynetdicom.pdu import P_DATA_TF

    rng = random.Random(SEED + 3)
    base = p_data(pdv(1, 0x00, bytes(range(256)) * 4), pdv(1, 0x00, b"xy" * 100), pdv(1, 0x02, b"end!"))
    direct = 0
    for _ in range(int(3000 * SCALE)):
        data = mutate(rng, base, [base, p_data(pdv(1, 0x03, store_command("1.2.3")))])
        dul = _FakeDul(data)
        fastpath._read_pdu_data(dul)
        written = dul.assoc.dimse.message._data_set_file.getvalue()
        events = [dul.event_queue.get_nowait() for _ in range(dul.event_queue.qsize())]
        assert len(events) <= 1
        if written:
            direct += 1
            assert not events  # written directly: no PDU event for pynetdicom
            body = data[6:6 + struct.unpack(">L", data[2:6])[0]]
            pdu = P_DATA_TF()
            pdu.decode(data[:6 + len(body)])
            expect = b"".join(bytes(v.presentation_data_value[1:]) for v in pdu.presentation_data_value_items)
            assert written == expect
        else:
            assert len(events) == 1
    assert direct > 300


# --- what the mutator found (each failed before its fix) ---------------------------------------------------

def test_found_non_finite_numbers_never_reach_the_series_header(tmp_path: Path) -> None:
    """A DS of "NaN" or "1e400" became a float NaN/inf in the DICOM JSON: not JSON, and PostgreSQL
    refuses the row (the old indexer then retried the same batch forever)."""
    ds = small_ct(SOP, size=4)
    ds.SliceThickness, ds.KVP = "NaN", "1e400"  # type: ignore[attr-defined]
    path = _file(tmp_path / "nan.dcm", EXPLICIT, _dataset_bytes(ds))
    header = index_header(path)
    assert header.slice_thickness is None
    js = series_header(header.dataset)
    assert js is not None and "00180050" not in js and "00180060" not in js
    json.dumps(js, allow_nan=False)


def test_found_a_broken_length_does_not_carry_the_next_elements_into_the_header(tmp_path: Path) -> None:
    """An allowed text element whose length was made to run over the elements after it (here
    Modality over the Patient module) kept their bytes, patient name among them, as its value."""
    ds = small_ct(SOP, size=4)
    raw = bytearray(_dataset_bytes(ds))
    at = raw.index(b"\x08\x00\x60\x00CS")  # (0008,0060) Modality, 2-byte length after the VR
    resume = raw.index(b"\x18\x00\x50\x00DS")  # (0018,0050): after the Patient module
    raw[at + 6:at + 8] = struct.pack("<H", resume - (at + 8))  # "CT" + the Patient module's bytes
    header = index_header(_file(tmp_path / "long.dcm", EXPLICIT, bytes(raw)))
    assert header.slice_thickness == 5.0  # the elements after it were read as usual
    assert header.modality is None  # the instance row does not take it either
    js = series_header(header.dataset)
    assert js is not None and "00080060" not in js and "SECRET" not in json.dumps(js)


def test_found_a_deflate_stream_that_looks_like_file_meta_is_refused_cleanly(tmp_path: Path) -> None:
    """pydicom's file-meta reader goes on while the next bytes look like group 0002; a deflate
    stream starting with them made it return a stray element that could not be written back
    (TypeError out of the C-STORE handler). The meta is now read to its group length only."""
    from pydicom.filereader import read_file_meta_info

    stray = b"\x02\x00\xdb\x8a\x01\x00\x00\x00\x04\x00\x00\x00abcd" + bytes(64)
    path = _file(tmp_path / "stray.dcm", DEFLATE, stray)
    assert 0x00028ADB in read_file_meta_info(path)  # what the old code read
    with pytest.raises(admission.InflateError):
        admission.inflate(str(path), str(tmp_path / "out.dcm"), 1 << 20, 0, lambda: 1 << 40)
    with pytest.raises(HeaderError):
        index_header(path)


def test_found_values_postgresql_refuses_are_never_recorded(tmp_path: Path) -> None:
    """On PostgreSQL: an Instance Number past 32 bits, a 20-character Modality and an infinite
    position made it refuse the batch (integer out of range, value too long, NaN/Infinity in JSON),
    and the old indexer retried that batch forever while nothing after it was indexed."""
    from datetime import datetime

    from plumbing_helpers import PG_URL, pg_available, pg_schema
    from sqlalchemy import select

    from hexnode.receive.indexer import Indexer, Item
    from hexnode.store.db import Instance, Series
    from hexnode.store.spool import instance_relpath

    if not pg_available():
        pytest.skip("PostgreSQL not running on 127.0.0.1:5432")
    with pg_schema() as schema:
        store = open_store(PG_URL, schema=schema)
        try:
            spool = Spool(tmp_path / "spool").prepare()
            items = []
            for i, changes in enumerate(({"Modality": "CT" * 10}, {"InstanceNumber": "99999999999"},
                                         {"ImagePositionPatient": ["inf", "0", "NaN"], "SliceThickness": "1e400"},
                                         {})):
                ds = small_ct(f"{SOP}.{i}", size=4, series_uid=f"{SOP}.100", study_uid=f"{SOP}.200")
                for k, v in changes.items():
                    setattr(ds, k, v)
                ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID  # type: ignore[attr-defined]
                rel = instance_relpath(str(ds.SOPInstanceUID))  # type: ignore[attr-defined]
                ds.save_as(spool.path(rel), enforce_file_format=True)  # type: ignore[attr-defined]
                items.append(Item(rel, "FUZZ", datetime(2026, 1, 1), -1))
            Indexer(store, spool, fsync=False)._index_with_retry(items)
            with store.transaction() as s:
                rows = s.execute(select(Instance.instance_number, Instance.position)).all()
                modality = s.execute(select(Series.modality)).scalar_one()
            assert len(rows) == 4 and {r[0] for r in rows} == {None, 1} and all(r[1] is None or None not in r[1]
                                                                                  for r in rows)
            assert modality is not None and len(modality) <= 16  # the column holds 16
        finally:
            store.dispose()


def test_fuzz_the_fast_uid_scan_agrees_with_pydicom() -> None:
    """admission.scan_explicit_le (the response path's common case) against pydicom's element
    generator on the same mutated Explicit VR Little Endian prefixes: whenever the fast scan
    answers, it finds the same UID values, and it never misses the end of the UIDs' groups."""
    rng = random.Random(SEED + 4)
    seeds = [d for ts, d in _seeds() if ts == EXPLICIT]
    answered = 0
    for _ in range(int(4000 * SCALE)):
        data = mutate(rng, rng.choice(seeds), seeds)[:rng.choice((64, 300, 2000, 1 << 16))]
        fast = admission.scan_explicit_le(data)
        if fast is None:
            continue
        answered += 1
        ref = admission.scan_pydicom(data, False, True)
        if ref is None:
            continue  # pydicom gives up; the fast scan's answer is then judged on its own
        assert fast[0] == ref[0], (fast, ref, data[:80])
        assert fast[1] or not ref[1], (fast, ref, data[:80])
    assert answered > 1000
