"""What one crafted input may cost the receiver, with real peers (dcmtk storescu, raw sockets,
pynetdicom): PDU length, instance size, free-disk floor while fragments arrive, deflate bombs,
command/dataset UID mismatch and non-UID characters, patient identifiers at any depth of a header."""

from __future__ import annotations

import os
import struct
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from hostile_helpers import (
    PHI,
    Peer,
    dataset_of,
    deflate_bomb,
    p_data,
    pdv,
    phi_in_sequences,
    release_rq,
    small_ct,
    store_command,
)
from plumbing_helpers import BOTH_RECEIVE_MODES, storescu, write_ct
from pydicom import dcmread
from sqlalchemy import func, select

from hexnode.devtools.net import wait_for
from hexnode.receive.limits import ReceiveLimits
from hexnode.store.db import Event, Instance, Series

CT = "1.2.840.10008.5.1.4.1.1.2"
MR = "1.2.840.10008.5.1.4.1.1.4"


def _indexed(rx: Any) -> int:
    with rx.store.transaction() as s:
        return int(s.execute(select(func.count()).select_from(Instance)).scalar_one())


def _spooled(rx: Any) -> list[Path]:
    return list((rx.spool.root / "instances").rglob("*.dcm"))


def _no_partial_files(rx: Any) -> bool:
    return not [n for n in os.listdir(rx.spool.incoming) if n.endswith(".dcm")]


# --- PDU length ------------------------------------------------------------------------------------

@BOTH_RECEIVE_MODES
def test_a_pdu_longer_than_advertised_is_aborted_before_its_body(make_receiver, tmp_path: Path, caplog) -> None:
    """One P-DATA-TF header claiming 0x7FFFFFF0 bytes: A-ABORT at once, nothing buffered (the body
    never has to arrive), the node still receives; a release claiming 2 GiB likewise."""
    caplog.set_level("WARNING", logger="hexnode.receive.scp")
    rx = make_receiver()
    assert rx.dicom.max_pdu_size == 4 * 1024 * 1024  # the documented default
    for source, header in (("127.0.0.90", struct.pack(">BBL", 0x04, 0, 0x7FFFFFF0)),
                           ("127.0.0.91", struct.pack(">BBL", 0x05, 0, 0x80000000))):
        peer = Peer(rx.dicom.port, source)
        try:
            cx = peer.associate()
            assert cx is not None
            peer.send(header + bytes(64 * 1024))  # the start of the claimed body
            got = peer.read_pdu()
            assert got is not None and got[0] == 0x07, got  # A-ABORT
            assert got[1][2:4] == b"\x02\x06"  # service provider, invalid PDU parameter value
            assert peer.wait_closed(5.0) is not None
        finally:
            peer.close()
    assert storescu(rx.dicom.port, write_ct(tmp_path / "ok", 2)).returncode == 0
    wait_for(lambda: _indexed(rx) == 2, 20.0, "the series after the oversize PDUs indexed", every=0.05)
    wait_for(lambda: "above the maximum length we advertised (dicom.max_pdu_size = 4194304)" in caplog.text,
             20.0, "the refusal logged", every=0.05)
    assert "PDU of type 0x05 claiming 2147483648 bytes" in caplog.text
    assert _no_partial_files(rx)


def test_pdus_up_to_the_advertised_length_are_received(make_receiver, tmp_path: Path) -> None:
    """A sender that uses all of max_pdu_size (pynetdicom fills its PDUs to the peer's maximum)."""
    from pynetdicom import AE

    rx = make_receiver(max_pdu_size=65536)
    ae = AE("PYNETDICOM")
    ae.add_requested_context(CT, "1.2.840.10008.1.2.1")
    assoc = ae.associate("127.0.0.1", rx.dicom.port, ae_title="HEXNODE", max_pdu=0)
    assert assoc.is_established and assoc.acceptor.maximum_length == 65536
    files = write_ct(tmp_path / "big", 2, size=256)  # 128 KiB each: several full PDUs
    statuses = [assoc.send_c_store(dcmread(f)).Status for f in files]
    assoc.release()
    assert statuses == [0, 0]
    wait_for(lambda: _indexed(rx) == 2, 20.0, "indexed", every=0.05)


# --- instance size and free disk ----------------------------------------------------------------------

@BOTH_RECEIVE_MODES
def test_an_instance_over_max_instance_mb_is_aborted_as_it_crosses(make_receiver, tmp_path: Path, caplog) -> None:
    caplog.set_level("WARNING", logger="hexnode.receive.scp")
    rx = make_receiver(max_instance_mb=1)
    big = write_ct(tmp_path / "big", 1, size=1024)  # 2 MiB of pixels
    r = storescu(rx.dicom.port, big, extra=["-v"])
    # A-ABORT, then the connection is closed: a sender in the middle of writing sees it broken
    assert r.returncode != 0 and "Store Failed" in r.stderr, r.stderr
    assert "Peer Aborted Association" in r.stderr or "Broken pipe" in r.stderr or "reset" in r.stderr, r.stderr
    assert _spooled(rx) == []
    wait_for(lambda: _no_partial_files(rx), 5.0, "partial file deleted", every=0.05)
    wait_for(lambda: "dataset larger than dicom.max_instance_mb = 1 MB" in caplog.text, 5.0, "logged", every=0.05)
    assert storescu(rx.dicom.port, write_ct(tmp_path / "small", 2, size=512)).returncode == 0  # 0.5 MiB each
    wait_for(lambda: _indexed(rx) == 2, 20.0, "indexed", every=0.05)


def _tmpfs(path: Path, mb: int) -> bool:
    if os.geteuid() != 0:
        return False
    path.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={mb}m", "tmpfs", str(path)], capture_output=True)
    return r.returncode == 0


def test_the_free_disk_floor_holds_while_fragments_are_written(tmp_path: Path, fast_receive: bool) -> None:
    """Two 16 MiB instances at once into a 64 MiB file system with a 40 MiB floor: not both are
    stored, what crosses the floor is aborted before it does (never 0 MiB free), and one alone fits
    only while nothing else is stored (on a tmpfs when run as root, else
    against a floor relative to the free space of tmp_path's file system)."""
    import dataclasses

    from hexnode.config import DicomConfig
    from hexnode.devtools.net import free_port
    from hexnode.receive.scp import Receiver
    from hexnode.store.db import open_store
    from hexnode.store.spool import Spool

    spool_dir = tmp_path / "spool"
    mounted = _tmpfs(spool_dir, 64)
    try:
        st = os.statvfs(spool_dir if mounted else tmp_path)
        free_mb = st.f_bavail * st.f_frsize >> 20
        floor = 40 if mounted else free_mb - 24
        dicom = dataclasses.replace(DicomConfig(port=free_port(), fast_receive=fast_receive), min_free_disk_mb=floor)
        store = open_store(f"sqlite:///{tmp_path / 'hexnode.sqlite'}")
        rx = Receiver(dicom, store, Spool(spool_dir))
        rx.start()
        lowest = [free_mb]
        done = threading.Event()

        def watch() -> None:
            while not done.is_set():
                st = os.statvfs(spool_dir)
                lowest[0] = min(lowest[0], st.f_bavail * st.f_frsize >> 20)
                time.sleep(0.002)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        try:
            a, b = write_ct(tmp_path / "a", 1, size=2896), write_ct(tmp_path / "b", 1, size=2896)  # 16 MiB each
            with_b: list[subprocess.CompletedProcess[str]] = []
            tb = threading.Thread(target=lambda: with_b.append(storescu(dicom.port, b)))
            tb.start()
            ra = storescu(dicom.port, a)
            tb.join()
            results = [ra.returncode, with_b[0].returncode]
            wait_for(lambda: _no_partial_files(rx), 5.0, "partial files deleted", every=0.05)
            stored = len(_spooled(rx))
            alone = storescu(dicom.port, a if ra.returncode else b)  # what did not fit, now alone
        finally:
            done.set()
            watcher.join()
            rx.stop()
            store.dispose()
        assert results.count(0) <= 1 and results.count(0) == stored, results  # not both: each checks the floor
        assert lowest[0] >= floor - 2, f"free space fell to {lowest[0]} MiB, floor {floor} MiB"
        if mounted:  # 64 MiB: one 16 MiB instance fits above the 40 MiB floor, a second one does not
            assert (alone.returncode == 0) == (stored == 0), (stored, alone.stderr)
        else:
            assert alone.returncode == 0 or stored == 1, alone.stderr
        assert _no_partial_files(rx)
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(spool_dir)], check=False)


def test_the_guard_counts_declared_fragments_not_only_what_arrived() -> None:
    """Unit check of the stream accounting (the fuzz test drives it with mutations)."""
    from hexnode.receive.limits import PduGuard, Refused

    free = [100 << 20]
    guard = PduGuard(ReceiveLimits(max_pdu=1 << 20, max_instance=3 << 20, min_free=10 << 20, spool="/"),
                     free_bytes=lambda: free[0])
    stream = p_data(pdv(1, 0x03, store_command("1.2.3")))
    for _ in range(3):
        stream += p_data(pdv(1, 0x00, bytes((1 << 20) - 100)))
    for i in range(0, len(stream), 4099):  # any chunking
        guard.feed(stream[i:i + 4099])
    with pytest.raises(Refused, match="max_instance_mb = 3 MB"):  # at the 4th fragment's header
        guard.feed(p_data(pdv(1, 0x00, bytes((1 << 20) - 100)))[:12])
    guard = PduGuard(ReceiveLimits(max_pdu=1 << 22, max_instance=0, min_free=10 << 20, spool="/"),
                     free_bytes=lambda: free[0])
    free[0] = (10 << 20) + 1000
    guard.feed(p_data(pdv(1, 0x03, store_command("1.2.3"))))
    with pytest.raises(Refused, match="min_free_disk_mb") as refused:
        guard.feed(p_data(pdv(1, 0x02, bytes(2000)))[:12])  # refused at its header, before its data
    assert refused.value.abort_reason == 0  # A-ABORT reason "not specified": a limit of ours, not the PDU


# --- deflate ---------------------------------------------------------------------------------------------

def test_a_deflate_bomb_is_refused_and_a_small_one_indexed_with_bounded_memory(make_receiver, tmp_path: Path,
                                                                                caplog) -> None:
    """A 0.2 MiB deflated instance inflating past max_instance_mb is answered 0xA700 and nothing
    stored; one under the cap is stored inflated (Explicit VR Little Endian) and indexed without
    the indexer reading its large private element (peak RSS of the indexer process)."""
    caplog.set_level("WARNING", logger="hexnode.receive.scp")
    rx = make_receiver(max_instance_mb=64)
    bomb = deflate_bomb(tmp_path / "bomb.dcm", 200)
    assert bomb.stat().st_size < 1 << 20
    r = storescu(rx.dicom.port, [bomb], extra=["-R", "-xd", "-v"])
    assert "Refused: OutOfResources" in r.stderr, r.stderr
    assert _spooled(rx) == [] and _no_partial_files(rx)
    inside = deflate_bomb(tmp_path / "inside.dcm", 48)
    r = storescu(rx.dicom.port, [inside], extra=["-R", "-xd"])
    assert r.returncode == 0, r.stderr
    wait_for(lambda: _indexed(rx) == 1, 20.0, "indexed", every=0.05)
    (stored,) = _spooled(rx)
    assert stored.stat().st_size > 48 << 20
    assert str(dcmread(stored, stop_before_pixels=True, defer_size=1024).file_meta.TransferSyntaxUID) == \
        "1.2.840.10008.1.2.1"
    status = Path(f"/proc/{rx.indexer.pid}/status").read_text()
    peak_mb = int(next(ln for ln in status.splitlines() if ln.startswith("VmHWM")).split()[1]) >> 10
    assert peak_mb < 160, f"the indexer peaked at {peak_mb} MiB for a 48 MiB private element"
    wait_for(lambda: "(the first with 0xA700: inflates beyond dicom.max_instance_mb = 64)" in caplog.text, 5.0, "logged", every=0.05)


# --- UIDs -------------------------------------------------------------------------------------------------

def test_command_and_dataset_uids_must_agree_and_be_uids(make_receiver, tmp_path: Path) -> None:
    """As dcmtk's storescp: 0xA900 when the data set's SOP Instance or Class UID is not the
    command's, 0xC000 for a UID with a NUL inside, letters or over 64 characters. The genuine
    instance sent afterwards is stored and indexed under its own name."""
    rx = make_receiver()
    genuine = small_ct()
    other = small_ct(series_uid=str(genuine.SeriesInstanceUID), study_uid=str(genuine.StudyInstanceUID))  # type: ignore[attr-defined]
    files = {}
    for name, ds in (("genuine", genuine), ("other", other)):
        files[name] = tmp_path / f"{name}.dcm"
        ds.save_as(files[name], enforce_file_format=True)  # type: ignore[attr-defined]
    _, other_bytes = dataset_of(files["other"])
    genuine_uid, genuine_bytes = dataset_of(files["genuine"])

    def raw(sop_in_command: str, data: bytes, sop_class: str = CT) -> int | None:
        peer = Peer(rx.dicom.port, "127.0.0.95")
        try:
            cx = peer.associate()
            assert cx is not None
            peer.send(p_data(pdv(cx, 0x03, store_command(sop_in_command, sop_class=sop_class))))
            peer.send(p_data(pdv(cx, 0x02, data)))
            status = peer.read_status()
            peer.send(release_rq())
            peer.read_pdu()
            return status
        finally:
            peer.close()

    assert raw(genuine_uid, other_bytes) == 0xA900  # the other instance's data under the genuine UID
    mr = small_ct(genuine_uid)
    mr.SOPClassUID = MR  # type: ignore[attr-defined]
    mr.save_as(tmp_path / "mr.dcm", enforce_file_format=True)  # type: ignore[attr-defined]
    assert raw(genuine_uid, dataset_of(tmp_path / "mr.dcm")[1]) == 0xA900  # CT command, MR data set
    for keyword, bad in (("SOPInstanceUID", "1.2.3\x004.5"), ("SOPInstanceUID", "1.2.ABC.4"),
                         ("StudyInstanceUID", "1." + "2" * 70), ("SeriesInstanceUID", "1.2..3")):
        ds = small_ct()
        setattr(ds, keyword, bad)
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID  # type: ignore[attr-defined]
        ds.save_as(tmp_path / "bad.dcm", enforce_file_format=True)  # type: ignore[attr-defined]
        assert raw(str(ds.SOPInstanceUID), dataset_of(tmp_path / "bad.dcm")[1]) == 0xC000, repr(bad)  # type: ignore[attr-defined]
    # over 64 characters in the command itself: pynetdicom refuses the command (the association ends)
    long_uid = "1." + "2" * 70
    assert raw(long_uid, dataset_of(files["genuine"])[1]) is None
    assert _spooled(rx) == []
    assert raw(genuine_uid, genuine_bytes) == 0  # the genuine one, later: stored and indexed
    wait_for(lambda: _indexed(rx) == 1, 20.0, "indexed", every=0.05)
    with rx.store.transaction() as s:
        assert s.execute(select(Instance.sop_instance_uid)).scalar_one() == genuine_uid
    assert len(_spooled(rx)) == 1


# --- patient identifiers at any depth ------------------------------------------------------------------------

def test_no_patient_identifier_from_any_depth_reaches_the_database(make_receiver, tmp_path: Path) -> None:
    rx = make_receiver()
    paths = phi_in_sequences(tmp_path / "phi")
    assert storescu(rx.dicom.port, paths).returncode == 0
    wait_for(lambda: _indexed(rx) == 2, 20.0, "indexed", every=0.05)
    with rx.store.transaction() as s:
        header = s.execute(select(Series.header)).scalar_one()
    assert header is not None
    # what route reads is there, at depth too
    assert header["00080060"]["Value"] == ["CT"] and header["00081010"]["Value"] == ["CT-STROKE"]
    shared = header["52009229"]["Value"][0]  # SharedFunctionalGroupsSequence > PixelMeasuresSequence
    assert shared["00289110"]["Value"][0]["00180050"]["Value"] == [5.0]
    assert header["00180012"]["Value"][0]["00080104"]["Value"] == ["IODINE"]  # ContrastBolusAgentSequence
    text = str(header)
    for key in ("00400275", "00101002", "00291010", "00100020", "00100010", "00081050"):
        assert key not in text, key
    rx.store.dispose()
    db = b"".join(p.read_bytes() for p in (tmp_path).glob("hexnode.sqlite*"))
    leaked = [v for v in PHI if v.encode() in db]
    assert leaked == [], f"in the database file: {leaked}"


# --- the indexer: memory and deaths --------------------------------------------------------------------------

def test_a_header_needing_more_than_indexer_memory_mb_is_quarantined(make_receiver, tmp_path: Path) -> None:
    """A header whose nested element claims 4 GiB: the indexer process (256 MiB beyond its footprint) gets a
    MemoryError, the file is quarantined with the reason, and the next instance is indexed."""
    from hostile_helpers import oversized_nested_value, with_elements

    from hexnode.store.spool import Spool, instance_relpath

    spool = Spool(tmp_path / "spool").prepare()
    ds = small_ct()
    with_elements(spool.path(instance_relpath(str(ds.SOPInstanceUID))), ds, oversized_nested_value())  # type: ignore[attr-defined]
    rx = make_receiver(indexer_memory_mb=256)
    with rx.store.transaction() as s:
        ev = s.execute(select(Event).where(Event.entity == "instance")).scalar_one()
    assert "MemoryError" in ev.detail and "quarantine/" in ev.detail, ev.detail
    assert rx.indexer.alive()
    assert storescu(rx.dicom.port, write_ct(tmp_path / "next", 2)).returncode == 0
    wait_for(lambda: _indexed(rx) == 2, 20.0, "the next series indexed", every=0.05)


def _indexer_pids(pid: int) -> list[int]:
    """The indexer child of a `hexnode receive` process (not multiprocessing's resource tracker)."""
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            children = [int(c) for c in (task / "children").read_text().split()]
        except FileNotFoundError:
            continue
        for child in children:
            try:
                if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes():
                    out.append(child)
            except FileNotFoundError:
                continue
    return out


def test_a_file_that_kills_the_indexer_is_quarantined_and_receive_never_stops(tmp_path: Path) -> None:
    """`hexnode receive` with a spooled file whose header the indexer dies reading (here: killed
    while it parses a 50,000-item sequence, as the kernel's OOM killer would kill it): receive starts
    and receives anyway, the file is read alone once more, then quarantined; nothing else is lost."""
    import signal
    import sys

    from hostile_helpers import empty_items_sequence, with_elements

    from hexnode.devtools.net import free_port, wait_port
    from hexnode.store.db import open_store
    from hexnode.store.spool import Spool, instance_relpath

    data = tmp_path / "node"
    spool = Spool(data / "spool").prepare()
    ds = small_ct()
    killer_rel = instance_relpath(str(ds.SOPInstanceUID))  # type: ignore[attr-defined]
    with_elements(spool.path(killer_rel), ds, empty_items_sequence(50_000))
    port = free_port()
    cfg = tmp_path / "hexnode.toml"
    cfg.write_text(f'data_dir = "{data}"\nlog_level = "INFO"\n[dicom]\nport = {port}\nmin_free_disk_mb = 1\n'
                   "indexer_memory_mb = 0\n[series]\nstable_seconds = 3600\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEXNODE_")}
    log = tmp_path / "receive.log"
    marker = spool.root / "indexing"
    kills, killed_at = 0, ""
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "hexnode.cli", "receive", "--config", str(cfg)],
                                stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 90
        while kills < 2 and time.monotonic() < deadline:
            try:
                named = marker.read_text()
            except FileNotFoundError:
                named = ""
            # a new attempt (the marker is rewritten with its try count) at the killer file
            if killer_rel in named and named != killed_at:
                for child in _indexer_pids(proc.pid):
                    os.kill(child, signal.SIGKILL)
                kills += 1
                killed_at = named
            time.sleep(0.01)
        assert kills >= 2, log.read_text()[-3000:]
        wait_port(port, 60, proc)  # type: ignore[arg-type]
        files = write_ct(tmp_path / "next", 3)
        assert storescu(port, files).returncode == 0
        store = open_store(f"sqlite:///{data / 'hexnode.sqlite'}", create=False)
        try:
            wait_for(lambda: _count(store) == 3, 60, "the series after the killer file indexed", every=0.05)
            with store.transaction() as s:
                ev = s.execute(select(Event).where(Event.entity == "instance")).scalar_one()
        finally:
            store.dispose()
        assert "died reading its header 2 times" in ev.detail, ev.detail
        assert (spool.root / "quarantine" / Path(killer_rel).name).exists()
        assert proc.poll() is None, "hexnode receive exited"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _count(store: Any) -> int:
    with store.transaction() as s:
        return int(s.execute(select(func.count()).select_from(Instance)).scalar_one())

