"""Sender against a real Orthanc: C-STORE, STOW-RS (DICOMweb plugin), outage back-off, max age, resend."""

from __future__ import annotations

import argparse
import dataclasses
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from plumbing_helpers import Orthanc, free_port, start_orthanc, write_ct
from pydicom import dcmread
from sqlalchemy import select

from hexnode.config import Config, Destination, SendConfig
from hexnode.send.sender import Sender, run_resend
from hexnode.store import queue
from hexnode.store.db import Outbox, Series, Study, open_store
from hexnode.store.spool import Spool


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory) -> Iterator[Orthanc]:
    o = start_orthanc(tmp_path_factory.mktemp("orthanc"), dicomweb=True)
    yield o
    o.stop()


def _setup(tmp_path: Path, dest: Destination, n: int = 3, send: SendConfig | None = None):
    cfg = Config(data_dir=str(tmp_path / "var"), destinations=[dest], send=send or SendConfig())
    store = open_store(cfg.database_url)
    spool = Spool(cfg.spool_path).prepare()
    files = write_ct(tmp_path / "objs", n, size=16)
    with store.transaction() as s:
        study = Study(study_uid="1.2.3.9")
        s.add(study)
        s.flush()
        ser = Series(series_uid=str(dcmread(files[0]).SeriesInstanceUID), study_id=study.id, calling_ae="CT")
        s.add(ser)
        s.flush()
        queue.transition(s, ser, "complete")
        queue.enqueue_job(s, ser)
        job = queue.claim_job(s, "w", 60, max_attempts=3)
        uids = []
        for f in files:
            ds = dcmread(f)
            rel = spool.result_relpath(ser.series_uid, f.name)
            spool.write_bytes(rel, f.read_bytes())
            queue.add_result(s, job, "SC", str(ds.SOPInstanceUID), rel, [dest.name])
            uids.append(str(ds.SOPInstanceUID))
        queue.complete_job(s, job.id, "w")
    return cfg, store, Sender(cfg, store, spool, owner="test-sender"), uids


def _orthanc_has(o: Orthanc, uid: str) -> int:
    import json
    import urllib.request

    req = urllib.request.Request(o.url + "/tools/lookup", data=uid.encode(), method="POST")
    with urllib.request.urlopen(req, timeout=10) as r:
        return len(json.loads(r.read()))


def _states(store) -> list[str]:
    with store.transaction() as s:
        return [r.state for r in s.execute(select(Outbox).order_by(Outbox.id)).scalars()]


def test_cstore_to_orthanc_delivered_once_and_series_delivered(orthanc: Orthanc, tmp_path: Path) -> None:
    dest = Destination(name="pacs", kind="dicom", ae_title=orthanc.aet, port=orthanc.dicom_port)
    _, store, sender, uids = _setup(tmp_path, dest)
    assert sender.run_once() == 3
    assert _states(store) == ["delivered"] * 3
    assert sender.run_once() == 0
    for uid in uids:
        assert _orthanc_has(orthanc, uid) == 1
    with store.transaction() as s:
        assert s.execute(select(Series)).scalar_one().state == "delivered"
    assert all((Path(sender.spool.root) / "results").rglob("*.dcm")), "spool keeps delivered objects"


def test_stow_rs_to_orthanc_dicomweb(orthanc: Orthanc, tmp_path: Path) -> None:
    dest = Destination(name="web", kind="stow", url=orthanc.url + "/dicom-web")
    _, store, sender, uids = _setup(tmp_path, dest, n=2)
    assert sender.run_once() == 2
    assert _states(store) == ["delivered"] * 2
    for uid in uids:
        assert _orthanc_has(orthanc, uid) == 1


def test_stow_rs_http_error_backs_off(orthanc: Orthanc, tmp_path: Path) -> None:
    dest = Destination(name="web", kind="stow", url=orthanc.url + "/no-such-dicomweb-root")
    _, store, sender, _ = _setup(tmp_path, dest, n=1, send=SendConfig(backoff_initial_seconds=60))
    assert sender.run_once() == 1
    with store.transaction() as s:
        row = s.execute(select(Outbox)).scalar_one()
        assert row.state == "pending" and "HTTP 404" in row.last_error and row.attempts == 1


def test_destination_down_backs_off_then_delivers_when_back(tmp_path: Path) -> None:
    port = free_port()
    dest = Destination(name="pacs", ae_title="ORTHANC", port=port, timeout_seconds=5)
    send = SendConfig(backoff_initial_seconds=0.3, backoff_max_seconds=1.0, max_age_seconds=120)
    _, store, sender, uids = _setup(tmp_path, dest, n=2, send=send)
    t0 = time.monotonic()
    attempts = 0
    while time.monotonic() - t0 < 2.5:  # an outage of several retry periods
        attempts += sender.run_once()
        time.sleep(0.05)
    assert attempts >= 2 * 3, "retried with back-off during the outage"
    with store.transaction() as s:
        rows = s.execute(select(Outbox)).scalars().all()
        assert all(r.state == "pending" and "peer down" in r.last_error for r in rows)
        assert all(r.attempts < 12 for r in rows), "back-off, not a busy loop"
    o = start_orthanc(tmp_path / "orthanc", dicom_port=port)
    try:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and _states(store) != ["delivered"] * 2:
            sender.run_once()
            time.sleep(0.1)
        assert _states(store) == ["delivered"] * 2
        for uid in uids:
            assert _orthanc_has(o, uid) == 1
    finally:
        o.stop()


def test_past_max_age_fails_visibly_and_resend_delivers(tmp_path: Path) -> None:
    port = free_port()
    dest = Destination(name="pacs", ae_title="ORTHANC", port=port, timeout_seconds=5)
    send = SendConfig(backoff_initial_seconds=0.2, backoff_max_seconds=0.4, max_age_seconds=1.0)
    cfg, store, sender, uids = _setup(tmp_path, dest, n=1, send=send)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _states(store) != ["failed"]:
        sender.run_once()
        time.sleep(0.05)
    assert _states(store) == ["failed"]
    with store.transaction() as s:
        row = s.execute(select(Outbox)).scalar_one()
        assert row.last_error.startswith("gave up after") and "peer down" in row.last_error
    from hexnode.admin.status import collect

    st = collect(store)
    assert st["outbox"]["failed"] == 1 and st["failed_deliveries"][0]["id"] == row.id
    cfg_file = tmp_path / "hexnode.toml"
    cfg_file.write_text(f'data_dir = "{tmp_path / "var"}"\n')
    assert run_resend(argparse.Namespace(config=str(cfg_file), ids=[], all_failed=True)) == 0
    assert _states(store) == ["pending"]
    o = start_orthanc(tmp_path / "orthanc", dicom_port=port)
    try:
        sender.cfg = dataclasses.replace(cfg, send=dataclasses.replace(send, max_age_seconds=60))
        assert sender.run_once() == 1
        assert _states(store) == ["delivered"]
        assert _orthanc_has(o, uids[0]) == 1
    finally:
        o.stop()


def test_rows_held_by_a_killed_sender_are_sent_again_at_once(orthanc: Orthanc, tmp_path: Path, capsys) -> None:
    import json
    import socket
    import subprocess
    from datetime import timedelta

    from hexnode.admin.status import run_status
    from hexnode.store.db import utcnow

    dest = Destination(name="pacs", kind="dicom", ae_title=orthanc.aet, port=orthanc.dicom_port)
    cfg, store, sender, uids = _setup(tmp_path, dest, n=1)
    p = subprocess.Popen(["true"])
    p.wait()
    with store.transaction() as s:  # as if `hexnode send` was killed -9 in the middle of a C-STORE
        row = s.execute(select(Outbox)).scalar_one()
        queue.transition(s, row, "sending", "attempt 1")
        row.lease_owner = f"send@{socket.gethostname()}:{p.pid}"
        row.lease_until = utcnow() + timedelta(hours=1)
    assert sender.run_once() == 1
    assert _states(store) == ["delivered"]
    assert _orthanc_has(orthanc, uids[0]) == 1
    cfg_file = tmp_path / "hexnode.toml"
    cfg_file.write_text(f'data_dir = "{tmp_path / "var"}"\n')
    assert run_status(argparse.Namespace(config=str(cfg_file), json=True)) == 0
    st = json.loads(capsys.readouterr().out)
    assert st["outbox"] == {"delivered": 1} and st["series"] == {"delivered": 1}
    assert st["queue_depth"] == {"jobs": 0, "outbox": 0} and "delivery" in st["median_seconds"]
    assert run_status(argparse.Namespace(config=str(cfg_file), json=False)) == 0
    assert "deliveries:  delivered 1" in capsys.readouterr().out


def test_send_command_once_attempts_due_deliveries_and_exits(tmp_path: Path) -> None:
    from hexnode.send.sender import run_send

    port = free_port()
    dest = Destination(name="pacs", ae_title="ORTHANC", port=port, timeout_seconds=5)
    cfg, store, _, _ = _setup(tmp_path, dest, n=2, send=SendConfig(backoff_initial_seconds=600))
    cfg_file = tmp_path / "hexnode.toml"
    cfg_file.write_text(f'data_dir = "{tmp_path / "var"}"\n[[destinations]]\nname = "pacs"\nae_title = "ORTHANC"\n'
                        f'port = {port}\ntimeout_seconds = 5.0\n[send]\nbackoff_initial_seconds = 600.0\n')
    assert run_send(argparse.Namespace(config=str(cfg_file), once=True)) == 0
    with store.transaction() as s:
        rows = s.execute(select(Outbox)).scalars().all()
    assert [r.state for r in rows] == ["pending", "pending"] and all(r.attempts == 1 for r in rows)
