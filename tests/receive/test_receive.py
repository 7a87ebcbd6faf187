"""Receive path against real dcmtk peers: spool + index, duplicates, transfer syntaxes, policies."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from plumbing_helpers import BOTH_RECEIVE_MODES, dcmtk_env, free_port, make_pki, storescu, write_ct
from pydicom import dcmread
from sqlalchemy import func, select

from hexnode.config import Config, TLSConfig
from hexnode.devtools.net import wait_for
from hexnode.receive.scp import Receiver
from hexnode.route.service import check_once
from hexnode.store import queue
from hexnode.store.db import Event, Instance, Series, open_store
from hexnode.store.spool import Spool, instance_relpath, safe_component

CT = "1.2.840.10008.5.1.4.1.1.2"


def wait_indexed(rx: Receiver, n: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with rx.store.transaction() as s:
            if s.execute(select(func.count()).select_from(Instance)).scalar_one() >= n:
                return
        time.sleep(0.05)
    raise AssertionError(f"fewer than {n} instances indexed after {timeout} s")


@BOTH_RECEIVE_MODES
def test_storescu_instances_spooled_indexed_and_duplicates_stored_once(make_receiver, tmp_path: Path) -> None:
    rx = make_receiver()
    files = write_ct(tmp_path / "in", 6)
    r = storescu(rx.dicom.port, files)
    assert r.returncode == 0, r.stderr
    r = storescu(rx.dicom.port, files)  # the same series again
    assert r.returncode == 0, r.stderr
    wait_indexed(rx, 6)
    time.sleep(0.3)
    with rx.store.transaction() as s:
        insts = s.execute(select(Instance)).scalars().all()
        series = s.execute(select(Series)).scalars().all()
    assert len(insts) == 6 and len(series) == 1
    assert series[0].instance_count == 6 and series[0].state == "received" and series[0].calling_ae == "STORESCU"
    assert rx.stored == 6 and rx.duplicates == 6
    spooled = sorted((tmp_path / "spool" / "instances").rglob("*.dcm"))
    assert len(spooled) == 6
    by_uid = {i.sop_instance_uid: i for i in insts}
    for f in files:
        src = dcmread(f)
        inst = by_uid[src.SOPInstanceUID]
        got = dcmread(rx.spool.path(inst.path))
        assert got.PixelData == src.PixelData and got.SeriesInstanceUID == src.SeriesInstanceUID
        assert inst.position == [float(v) for v in src.ImagePositionPatient]
        assert inst.rows == 64 and inst.instance_number == src.InstanceNumber
    assert not list((tmp_path / "spool" / "incoming").iterdir()), "no temporary file left behind"


def test_new_instance_after_completion_is_counted_and_route_reopens_the_series(make_receiver, tmp_path: Path) -> None:
    rx = make_receiver()
    files = write_ct(tmp_path / "a", 4, series_uid="1.2.826.0.1.3680043.10.999.1", study_uid="1.2.3.44")
    assert storescu(rx.dicom.port, files[:3]).returncode == 0
    wait_indexed(rx, 3)
    with rx.store.transaction() as s:
        ser = s.execute(select(Series)).scalar_one()
        queue.transition(s, ser, "complete", "stable")
        queue.enqueue_job(s, ser)
    assert storescu(rx.dicom.port, files[3:]).returncode == 0
    wait_indexed(rx, 4)
    with rx.store.transaction() as s:  # receive stores and counts; it decides nothing
        ser = s.execute(select(Series)).scalar_one()
        assert ser.state == "queued" and ser.revision == 0 and (ser.instance_count, ser.decided_count) == (4, 3)
    tick = check_once(rx.store, Config(), rx.spool)
    with rx.store.transaction() as s:
        ser = s.execute(select(Series)).scalar_one()
        assert tick.reopened == [ser.series_uid]
        assert ser.state == "received" and ser.revision == 1 and ser.instance_count == 4


def _convert(src: Path, dst: Path, kind: str) -> Path:
    tools = {
        "implicit": ["dcmconv", "+ti"], "bigendian": ["dcmconv", "+tb"], "deflate": ["dcmconv", "+td"],
        "jpegls": ["dcmcjpls"], "rle": ["dcmcrle"], "jpeglossless": ["dcmcjpeg"],
    }
    if kind in tools:
        subprocess.run([*tools[kind], str(src), str(dst)], check=True, capture_output=True)
        return dst
    ds = dcmread(src)  # JPEG 2000 lossless: pydicom + pylibjpeg-openjpeg (dcmtk has no J2K encoder)
    ds.compress("1.2.840.10008.1.2.4.90")
    ds.save_as(dst, enforce_file_format=True)
    return dst


@BOTH_RECEIVE_MODES
def test_compressed_and_uncommon_transfer_syntaxes_are_accepted_as_sent(make_receiver, tmp_path: Path) -> None:
    rx = make_receiver()
    base = write_ct(tmp_path / "src", 7)
    kinds = ["implicit", "bigendian", "deflate", "jpegls", "rle", "jpeglossless", "j2k"]
    sent = {}
    for kind, src in zip(kinds, base, strict=True):
        out = _convert(src, tmp_path / f"{kind}.dcm", kind)
        ds = dcmread(out)
        sent[ds.SOPInstanceUID] = (kind, str(ds.file_meta.TransferSyntaxUID), dcmread(src).pixel_array)
    # storescu proposes the file's own syntax only with the matching -x option; -R: only CT contexts
    propose = {"implicit": "-xi", "bigendian": "-xb", "deflate": "-xd", "jpegls": "-xt", "rle": "-xr",
               "jpeglossless": "-xs", "j2k": "-xv"}
    for kind in kinds:
        r = storescu(rx.dicom.port, [tmp_path / f"{kind}.dcm"], extra=["-R", propose[kind]])
        assert r.returncode == 0, f"{kind}: {r.stderr}"
        assert "Converting transfer syntax" not in r.stdout + r.stderr, kind
    wait_indexed(rx, len(kinds))
    with rx.store.transaction() as s:
        insts = {i.sop_instance_uid: i for i in s.execute(select(Instance)).scalars()}
    for uid, (kind, ts, pixels) in sent.items():
        inst = insts[uid]
        # deflate is inflated on arrival (hexnode.receive.admission): the same data set, uncompressed
        stored_ts = "1.2.840.10008.1.2.1" if kind == "deflate" else ts
        assert inst.transfer_syntax == stored_ts, kind
        got = dcmread(rx.spool.path(inst.path))
        assert str(got.file_meta.TransferSyntaxUID) == stored_ts, kind
        assert np.array_equal(got.pixel_array, pixels), f"{kind}: pixels differ after the round trip"
        if kind == "deflate":
            original = dcmread(tmp_path / "deflate.dcm")
            assert [e.tag for e in got] == [e.tag for e in original]  # no element lost or added
            assert got.SOPInstanceUID == original.SOPInstanceUID and got.PatientName == original.PatientName


def test_calling_and_called_ae_checks_reject_association(make_receiver, tmp_path: Path, caplog) -> None:
    caplog.set_level("WARNING", logger="hexnode.receive.scp")
    rx = make_receiver(allowed_calling_aes=["CT_SCANNER"])
    files = write_ct(tmp_path / "in", 1)
    r = storescu(rx.dicom.port, files, aet="INTRUDER")
    assert r.returncode != 0
    assert "Calling AE Title Not Recognized" in r.stderr + r.stdout
    r = storescu(rx.dicom.port, files, aet="CT_SCANNER", aec="SOMEONE_ELSE")
    assert r.returncode != 0
    assert "Called AE Title Not Recognized" in r.stderr + r.stdout
    # pynetdicom triggers EVT_REJECTED after the A-ASSOCIATE-RJ is sent: the line may follow storescu's exit
    wait_for(lambda: "called AE title is not HEXNODE" in caplog.text, 10.0, "the rejection logged", every=0.05)
    assert "(calling AE INTRUDER)" in caplog.text and "not in dicom.allowed_calling_aes" in caplog.text
    r = storescu(rx.dicom.port, files, aet="CT_SCANNER")
    assert r.returncode == 0, r.stderr
    wait_indexed(rx, 1)


def test_low_disk_aborts_at_the_first_fragment_and_stores_nothing(make_receiver, tmp_path: Path, caplog) -> None:
    """Free space below the floor: the transfer is aborted at its first dataset fragment, before a
    byte of it is written (hexnode.receive.limits), not answered 0xA700 after the whole file."""
    caplog.set_level("WARNING", logger="hexnode.receive.scp")
    rx = make_receiver(min_free_disk_mb=10**12)
    files = write_ct(tmp_path / "in", 2)
    r = storescu(rx.dicom.port, files, extra=["-v"])
    assert r.returncode != 0
    assert "Peer Aborted Association" in r.stderr, r.stderr
    assert not list((tmp_path / "spool" / "instances").rglob("*.dcm"))
    wait_for(lambda: not any((tmp_path / "spool" / "incoming").iterdir()), 5.0, "the partial file deleted",
             every=0.05)
    # the association's one line is written when pynetdicom closes it, after storescu has seen the abort
    wait_for(lambda: "would drop below dicom.min_free_disk_mb = 1000000000000 MB" in caplog.text, 10.0,
             "the refusal logged", every=0.05)


def test_echo(make_receiver) -> None:
    rx = make_receiver()
    r = subprocess.run(["/usr/bin/echoscu", "-aec", "HEXNODE", "127.0.0.1", str(rx.dicom.port)],
                       env=dcmtk_env(), capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr


def test_non_ct_series_is_kept_and_rejected_with_reason(make_receiver, tmp_path: Path) -> None:
    rx = make_receiver()
    mr = write_ct(tmp_path / "mr", 2, sop_class="1.2.840.10008.5.1.4.1.1.4", modality="MR")
    assert storescu(rx.dicom.port, mr).returncode == 0
    wait_indexed(rx, 2)
    with rx.store.transaction() as s:  # stored and indexed; the decision is route's
        assert s.execute(select(Series)).scalar_one().state == "received"
    check_once(rx.store, Config(), rx.spool)
    with rx.store.transaction() as s:
        ser = s.execute(select(Series)).scalar_one()
        assert ser.state == "rejected" and "MR Image Storage is not CT" in ser.reason
        assert ser.instance_count == 2
        ev = s.execute(select(Event).where(Event.entity == "series")).scalar_one()
        assert ev.to_state == "rejected"


def test_dataset_without_its_uids_is_refused_with_cannot_understand(make_receiver, tmp_path: Path) -> None:
    """As dcmtk's storescp: a data set without its UIDs is answered 0xC000 and nothing is stored
    (it used to be answered Success and quarantined by the indexer afterwards)."""
    from pynetdicom import AE

    rx = make_receiver()
    ds = dcmread(write_ct(tmp_path / "x", 1)[0])
    del ds.SeriesInstanceUID
    ae = AE("BADSCU")
    ae.add_requested_context(CT, "1.2.840.10008.1.2.1")
    assoc = ae.associate("127.0.0.1", rx.dicom.port, ae_title="HEXNODE")
    assert assoc.is_established
    status = assoc.send_c_store(ds)
    assoc.release()
    assert status.Status == 0xC000 and status.ErrorComment == "no SeriesInstanceUID"
    assert not list((tmp_path / "spool" / "instances").rglob("*.dcm"))
    wait_for(lambda: not any((tmp_path / "spool" / "incoming").iterdir()), 5.0, "the partial file deleted",
             every=0.05)


def test_unreadable_header_found_by_the_indexer_is_quarantined_with_an_event(make_receiver, tmp_path: Path) -> None:
    """A spooled file the indexer cannot index (received by an older version, or whose UIDs lay
    beyond what receive parses) is quarantined with the reason, and indexing goes on."""
    good, bad = write_ct(tmp_path / "x", 2)
    spool = Spool(tmp_path / "spool").prepare()
    ds = dcmread(bad)
    del ds.SeriesInstanceUID
    ds.save_as(spool.path(instance_relpath(str(ds.SOPInstanceUID))))
    dest = spool.path(instance_relpath(str(dcmread(good).SOPInstanceUID)))
    dest.write_bytes(good.read_bytes())
    rx = make_receiver()
    with rx.store.transaction() as s:
        ev = s.execute(select(Event).where(Event.entity == "instance")).scalar_one()
        assert s.execute(select(func.count()).select_from(Instance)).scalar_one() == 1
    assert "missing SeriesInstanceUID" in ev.detail and "quarantine/" in ev.detail
    assert [p.name for p in (tmp_path / "spool" / "quarantine").iterdir()] == [spool.path(
        instance_relpath(str(ds.SOPInstanceUID))).name]


def test_spool_names_never_come_from_raw_strings(tmp_path: Path) -> None:
    assert safe_component("1.2.840.113619.2.55") == "1.2.840.113619.2.55"
    for evil in ("../../etc/passwd", "1.2.3/../../x", "1." + "9" * 70, "01.2", "", "1.2\x00.3"):
        name = safe_component(evil)
        assert "/" not in name and ".." not in name and name.startswith("x") and len(name) == 41
    assert safe_component("1.2.3\x00") == "1.2.3"  # NUL padding of an even-length UID is legal
    rel = instance_relpath("../../../evil")
    spool = Spool(tmp_path)
    assert spool.path(rel).is_relative_to(tmp_path)
    with pytest.raises(ValueError):
        spool.path("../outside.dcm")


def test_file_spooled_but_not_indexed_is_recovered_at_start(make_receiver, tmp_path: Path) -> None:
    f = write_ct(tmp_path / "in", 1)[0]
    uid = str(dcmread(f).SOPInstanceUID)
    spool = Spool(tmp_path / "spool").prepare()
    dest = spool.path(instance_relpath(uid))
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_bytes(f.read_bytes())  # as if killed after the rename, before the index commit
    rx = make_receiver()
    with rx.store.transaction() as s:
        inst = s.execute(select(Instance)).scalar_one()
    assert inst.sop_instance_uid == uid


@BOTH_RECEIVE_MODES
def test_tls_with_dcmtk_storescu(make_receiver, tmp_path: Path) -> None:
    d = make_pki(tmp_path / "pki")
    tls = TLSConfig(enabled=True, cert_file=str(d / "server.crt"), key_file=str(d / "server.key"),
                    ca_file=str(d / "ca.crt"), require_client_cert=True)
    rx = make_receiver(tls=tls)
    files = write_ct(tmp_path / "in", 2)
    r = storescu(rx.dicom.port, files,
                 extra=["+tls", str(d / "client.key"), str(d / "client.crt"), "+cf", str(d / "ca.crt")])
    assert r.returncode == 0, r.stderr
    wait_indexed(rx, 2)
    r = storescu(rx.dicom.port, files)  # plain TCP to the TLS port: no association
    assert r.returncode != 0
    # a client certificate not signed by our CA is refused
    r = storescu(rx.dicom.port, files,
                 extra=["+tls", str(d / "rogue.key"), str(d / "rogue.crt"), "+cf", str(d / "ca.crt")])
    assert r.returncode != 0
    # hexnode's own sender over TLS (client certificate, server checked against the CA)
    from hexnode.config import Config, Destination
    from hexnode.send.scu import store_files

    dest = Destination(name="node", ae_title="HEXNODE", port=rx.dicom.port, tls=True, tls_ca_file=str(d / "ca.crt"),
                       tls_cert_file=str(d / "client.crt"), tls_key_file=str(d / "client.key"))
    extra = write_ct(tmp_path / "more", 1)
    uid = str(dcmread(extra[0]).SOPInstanceUID)
    out = store_files(dest, {uid: extra[0]}, Config().dicom.ae_title)
    assert out[uid].ok, out[uid].detail
    wait_indexed(rx, 3)
    rogue = dataclasses.replace(dest, tls_cert_file=str(d / "rogue.crt"), tls_key_file=str(d / "rogue.key"))
    assert not store_files(rogue, {uid: extra[0]}, "HEXNODE")[uid].ok


def test_hexnode_serve_process_receives_and_logs_no_patient_identifiers(tmp_path: Path) -> None:
    port = free_port()
    cfg = tmp_path / "hexnode.toml"
    cfg.write_text(f'data_dir = "{tmp_path / "var"}"\nlog_level = "DEBUG"\n'
                   f'[dicom]\nport = {port}\nmin_free_disk_mb = 1\n')
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    log = open(tmp_path / "serve.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen([str(Path(".venv/bin/hexnode").resolve()), "serve", "--config", str(cfg)],
                            stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        from plumbing_helpers import wait_port

        wait_port(port, 30)
        files = write_ct(tmp_path / "in", 3)
        r = storescu(port, files)
        assert r.returncode == 0, r.stderr
        store = open_store(f"sqlite:///{tmp_path / 'var' / 'hexnode.sqlite'}")
        deadline = time.monotonic() + 20
        n = 0
        while time.monotonic() < deadline and n < 3:
            with store.transaction() as s:
                n = s.execute(select(func.count()).select_from(Instance)).scalar_one()
            time.sleep(0.1)
        store.dispose()
        assert n == 3
    finally:
        proc.terminate()
        rc = proc.wait(20)
        log.close()
    assert rc == 0
    text = (tmp_path / "serve.log").read_text()
    assert "listening as HEXNODE" in text
    for secret in ("SECRET", "PID-SECRET-42", "19700101"):
        assert secret not in text


def test_fast_file_meta_is_byte_identical_to_pydicom() -> None:
    from io import BytesIO

    from pydicom.filewriter import write_file_meta_info
    from pynetdicom.dsutils import create_file_meta

    from hexnode.receive.fastpath import _Meta

    for sop in ("1.2.3.4", "1.2.840.113619.2.55.3.604688119.969.1268071029.320"):  # odd and even lengths
        args = dict(sop_class_uid=CT, sop_instance_uid=sop, transfer_syntax="1.2.840.10008.1.2.4.80")
        ref = BytesIO()
        write_file_meta_info(ref, create_file_meta(**args))  # type: ignore[arg-type]
        assert _Meta.create(**args).encode() == ref.getvalue()


def test_fast_store_response_is_byte_identical_to_pynetdicom() -> None:
    from pynetdicom.dimse_messages import C_STORE_RSP
    from pynetdicom.dimse_primitives import C_STORE

    from hexnode.receive.fastpath import encode_store_rsp

    for uid, status in (("1.2.3.4", 0x0000), ("1.2.840.113619.2.55.3.604688119.969.1268071029.32", 0xA700)):
        rsp = C_STORE()
        rsp.MessageIDBeingRespondedTo = 7
        rsp.AffectedSOPClassUID = CT
        rsp.AffectedSOPInstanceUID = uid
        rsp.Status = status
        msg = C_STORE_RSP()
        msg.primitive_to_message(rsp)
        (pdata,) = list(msg.encode_msg(1, 16384))
        ((cx, data),) = pdata.presentation_data_value_list
        assert data == b"\x03" + encode_store_rsp(rsp)
    rsp.ErrorComment = "details"
    assert encode_store_rsp(rsp) is None  # optional fields: pynetdicom's own encoder


@BOTH_RECEIVE_MODES
def test_large_instances_multi_pdu_arrive_byte_exact(make_receiver, fast_receive: bool, tmp_path: Path,
                                                     monkeypatch) -> None:
    import hexnode.receive.fastpath as fastpath

    fast_pdus = []
    original = fastpath._write_middle_fragments

    def counting(dul, body):
        done = original(dul, body)
        fast_pdus.append(done)
        return done

    monkeypatch.setattr(fastpath, "_write_middle_fragments", counting)
    rx = make_receiver()
    files = write_ct(tmp_path / "big", 3, size=512)  # 512 KiB each: several P-DATA PDUs per instance
    r = storescu(rx.dicom.port, files)
    assert r.returncode == 0, r.stderr
    wait_indexed(rx, 3)
    if fast_receive:
        assert sum(fast_pdus) >= 3, "middle fragments took the direct path"
    else:
        assert not fast_pdus, "fast_receive = false: every PDU takes pynetdicom's path"
    with rx.store.transaction() as s:
        insts = {i.sop_instance_uid: i for i in s.execute(select(Instance)).scalars()}
    for f in files:
        src = dcmread(f)
        got = dcmread(rx.spool.path(insts[src.SOPInstanceUID].path))
        assert got.PixelData == src.PixelData
        assert got.file_meta.MediaStorageSOPInstanceUID == src.SOPInstanceUID
        assert insts[src.SOPInstanceUID].size_bytes == rx.spool.path(insts[src.SOPInstanceUID].path).stat().st_size


def test_association_limit_refuses_the_extra_association(make_receiver, tmp_path: Path, caplog) -> None:
    from pynetdicom import AE

    caplog.set_level("WARNING", logger="hexnode.receive.scp")
    rx = make_receiver(max_associations=1)
    ae = AE("HOLDER")
    ae.add_requested_context(CT, "1.2.840.10008.1.2.1")
    held = ae.associate("127.0.0.1", rx.dicom.port, ae_title="HEXNODE")
    assert held.is_established
    try:
        r = storescu(rx.dicom.port, write_ct(tmp_path / "in", 1), extra=["-v"])
        assert r.returncode != 0
        assert "Local Limit Exceeded" in r.stderr, r.stderr
        assert "max_associations = 1" in caplog.text
    finally:
        held.release()
    r = storescu(rx.dicom.port, write_ct(tmp_path / "in2", 1))
    assert r.returncode == 0, r.stderr


def test_fast_receive_setting_patches_pynetdicom_only_while_its_receiver_runs(tmp_path: Path) -> None:
    import pynetdicom.dimse as dimse_provider_mod
    import pynetdicom.dimse_messages as dimse_mod
    import pynetdicom.dul as dul_mod
    import pynetdicom.transport as transport_mod

    from hexnode.config import load_config
    from hexnode.receive import fastpath

    def pynetdicom_state() -> list[object]:
        dul = dul_mod.DULServiceProvider
        return [dul_mod.time, dul.send_pdu, dul._read_pdu_data, transport_mod.AssociationSocket.recv,
                dimse_provider_mod.DIMSEServiceProvider.send_msg,
                dimse_mod.create_file_meta, dimse_mod.write_file_meta_info]

    original = pynetdicom_state()
    assert not fastpath.installed()
    cfg = tmp_path / "hexnode.toml"
    for setting, fast in (("fast_receive = false\n", False), ("", True)):
        cfg.write_text(f'data_dir = "{tmp_path / "var"}"\n[dicom]\nport = {free_port()}\nmin_free_disk_mb = 1\n'
                       + setting)
        dicom = load_config(cfg).dicom
        assert dicom.fast_receive is fast
        store = open_store(f"sqlite:///{tmp_path / 'hexnode.sqlite'}")
        rx = Receiver(dicom, store, Spool(tmp_path / "spool"))
        rx.start()
        try:
            assert fastpath.installed() is fast
            assert (pynetdicom_state() == original) is not fast
            assert (transport_mod.AssociationSocket.recv is fastpath._recv) is fast
            assert storescu(rx.dicom.port, write_ct(tmp_path / f"in-{fast}", 1)).returncode == 0
        finally:
            rx.stop()
            store.dispose()
        assert not fastpath.installed() and pynetdicom_state() == original, "stop() restores pynetdicom"


def test_a_stopped_receiver_gives_tempfiles_directory_back(make_receiver) -> None:
    """Chunked receive needs tempfile's directory in the spool while the receiver runs; after it
    stops, the rest of the process must not write temporary files into a spool that may be gone."""
    import tempfile

    before = tempfile.tempdir
    rx = make_receiver()
    assert tempfile.tempdir == str(rx.spool.incoming)
    rx.stop()
    assert tempfile.tempdir == before
