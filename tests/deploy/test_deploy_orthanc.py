"""orthanc/orthanc.json + hexnode_routing.py in Debian's real Orthanc: stable CT series are routed,
series that came from hexnode's AE (its own results) never are — no loops; only registered AEs may
store, at Orthanc's own AE title, and nothing is overwritten; the routing queue outlives a long
hexnode outage and an Orthanc restart in the middle of it."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pydicom
import pytest
from series_helpers import write_series

from hexnode.devtools.net import free_port, wait_for
from hexnode.devtools.orthanc import ORTHANC_BIN, Orthanc, OrthancConfig

pytestmark = pytest.mark.skipif(not Path(ORTHANC_BIN).exists(), reason="Debian orthanc not installed")


def storescu(paths: list[Path], port: int, calling: str, called: str = "ORTHANC") -> subprocess.CompletedProcess[str]:
    return subprocess.run(["/usr/bin/storescu", "-aet", calling, "-aec", called, "127.0.0.1", str(port),
                           *map(str, paths)], capture_output=True, text=True, env={"TCP_NODELAY": "1"})


def sink(port: int, folder: Path) -> subprocess.Popen[bytes]:
    folder.mkdir(exist_ok=True)
    return subprocess.Popen(["/usr/bin/storescp", "-aet", "SINK", "-od", str(folder), str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def test_routing_sends_stable_ct_and_skips_hexnode_results(tmp_path: Path) -> None:
    sink_port = free_port()
    received = tmp_path / "received"
    peer = sink(sink_port, received)
    cfg = OrthancConfig(workdir=tmp_path / "orthanc", http_port=free_port(), dicom_port=free_port(), stable_age=1)
    orthanc = Orthanc.start(cfg, route_to=("SINK", "127.0.0.1", sink_port))
    try:
        ct = write_series(tmp_path / "ct", n=4, rows=32, cols=32, SeriesDescription="Head routed")
        own = write_series(tmp_path / "own", n=3, rows=32, cols=32, SeriesDescription="from hexnode")
        assert storescu(ct, cfg.dicom_port, "SCANNER").returncode == 0
        assert storescu(own, cfg.dicom_port, "HEXNODE").returncode == 0  # as if hexnode had sent a CT object back
        files = wait_for(lambda: len(f := [p for p in received.rglob("*") if p.is_file()]) >= 4 and f, 40,
                         (cfg.workdir / "orthanc.log").read_text()[-3000:])
        time.sleep(3)  # both series are stable by now; nothing more may arrive
        files = [p for p in received.rglob("*") if p.is_file()]
        assert len(files) == 4
        assert len(orthanc.get("/series")) == 2
        assert "sent to hexnode" in (cfg.workdir / "orthanc.log").read_text()
        assert orthanc.get("/hexnode/routing") == {}  # nothing left in the queue
    finally:
        orthanc.stop()
        peer.terminate()
        peer.wait(10)


def test_only_registered_senders_store_and_nothing_is_overwritten(tmp_path: Path) -> None:
    cfg = OrthancConfig(workdir=tmp_path / "orthanc", http_port=free_port(), dicom_port=free_port(), stable_age=1)
    orthanc = Orthanc.start(cfg, route_to=("NOBODY", "127.0.0.1", 1))
    try:
        ct = write_series(tmp_path / "ct", n=2, rows=32, cols=32)
        intruder = storescu(ct, cfg.dicom_port, "INTRUDER")
        assert intruder.returncode != 0 and orthanc.get("/instances") == []
        wrong_called = storescu(ct, cfg.dicom_port, "SCANNER", called="ANY-SCP")
        assert wrong_called.returncode != 0 and "Called AE Title Not Recognized" in wrong_called.stderr
        assert storescu(ct, cfg.dicom_port, "SCANNER").returncode == 0
        # the same SOP Instance UID with other content: stored once, the first copy kept
        ds = pydicom.dcmread(ct[0])
        ds.SeriesDescription = "TAMPERED"
        forged = tmp_path / "forged.dcm"
        ds.save_as(forged)
        assert storescu([forged], cfg.dicom_port, "SCANNER").returncode == 0  # Success: already stored
        [found] = orthanc.lookup(str(ds.SOPInstanceUID))
        tags = orthanc.get(f"/instances/{found['ID']}/simplified-tags")
        assert tags["SeriesDescription"] != "TAMPERED"
        log = (cfg.workdir / "orthanc.log").read_text()
        assert 'Rejected Store request from remote DICOM modality with AET "INTRUDER"' in log
    finally:
        orthanc.stop()


def test_routing_outlives_a_long_outage_and_an_orthanc_restart(tmp_path: Path) -> None:
    """hexnode down; series A fails over and over, series B arrives and Orthanc is stopped before B
    is stable; Orthanc starts again; A keeps being retried past the 20 attempts after which the old
    in-memory queue gave up; hexnode comes back: A and B both arrive, once, and the queue is empty.
    (Back-off shortened to 0.2-0.5 s so that 20 attempts take seconds, not 15 minutes.)"""
    sink_port = free_port()  # nothing listens here yet: hexnode is "down"
    cfg = OrthancConfig(workdir=tmp_path / "orthanc", http_port=free_port(), dicom_port=free_port(), stable_age=2,
                        routing={"RetryInitialSeconds": 0.2, "RetryMaxSeconds": 0.5, "PollSeconds": 0.2})
    route_to = ("SINK", "127.0.0.1", sink_port)
    orthanc = Orthanc.start(cfg, route_to=route_to)
    peer = None
    received = tmp_path / "received"
    try:
        a = write_series(tmp_path / "a", n=3, rows=32, cols=32)
        b = write_series(tmp_path / "b", n=2, rows=32, cols=32)
        assert storescu(a, cfg.dicom_port, "SCANNER").returncode == 0
        queued = wait_for(lambda: [s for s in orthanc.get("/hexnode/routing").values() if s["attempts"] >= 3], 40,
                          "series A was never retried")
        assert queued[0]["stage"] == "queued" and queued[0]["error"]
        assert storescu(b, cfg.dicom_port, "SCANNER").returncode == 0
        orthanc.stop()  # within B's StableAge: Orthanc itself forgets that B was not yet stable
        log_before = (cfg.workdir / "orthanc.log").read_text()
        assert log_before.count("sent to hexnode") == 0

        orthanc = Orthanc.start(cfg, route_to=route_to)  # the same storage: the queue comes back with it
        queue = orthanc.get("/hexnode/routing")
        assert len(queue) == 2 and {s["stage"] for s in queue.values()} <= {"queued", "waiting"}, queue
        wait_for(lambda: max(s["attempts"] for s in orthanc.get("/hexnode/routing").values()) > 20, 60,
                 "retries stopped: the queue gave up")
        assert len(orthanc.get("/series")) == 2

        peer = sink(sink_port, received)  # hexnode is back
        wait_for(lambda: len(list(received.iterdir())) == 5 and orthanc.get("/hexnode/routing") == {}, 60,
                 f"not delivered after the outage: {orthanc.get('/hexnode/routing')}")
        time.sleep(2)
        assert len(list(received.iterdir())) == 5  # each instance once
        log = (cfg.workdir / "orthanc.log").read_text()
        assert "queue read back: " in log and log.count("sent to hexnode after") == 2
        jobs = orthanc.get("/jobs?expand")
        assert any(j["Type"] == "DicomModalityStore" and j["State"] == "Success" for j in jobs)
    finally:
        orthanc.stop()
        if peer is not None:
            peer.terminate()
            peer.wait(10)
