"""orthanc/orthanc.json + hexnode_routing.py in Debian's real Orthanc: stable CT series are routed,
series that came from hexnode's AE (its own results) never are — no loops."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
from series_helpers import write_series

from hexnode.devtools.net import free_port
from hexnode.devtools.orthanc import ORTHANC_BIN, Orthanc, OrthancConfig

pytestmark = pytest.mark.skipif(not Path(ORTHANC_BIN).exists(), reason="Debian orthanc not installed")


def storescu(paths: list[Path], port: int, calling: str, called: str = "ORTHANC") -> None:
    subprocess.run(["/usr/bin/storescu", "-aet", calling, "-aec", called, "127.0.0.1", str(port),
                    *map(str, paths)], check=True, capture_output=True, env={"TCP_NODELAY": "1"})


def test_routing_sends_stable_ct_and_skips_hexnode_results(tmp_path: Path) -> None:
    sink_port = free_port()
    received = tmp_path / "received"
    received.mkdir()
    sink = subprocess.Popen(["/usr/bin/storescp", "-aet", "SINK", "-od", str(received), "--sort-on-study-uid", "st",
                             str(sink_port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    cfg = OrthancConfig(workdir=tmp_path / "orthanc", http_port=free_port(), dicom_port=free_port(), stable_age=1)
    orthanc = Orthanc.start(cfg, route_to=("SINK", "127.0.0.1", sink_port))
    try:
        ct = write_series(tmp_path / "ct", n=4, rows=32, cols=32, SeriesDescription="Head routed")
        own = write_series(tmp_path / "own", n=3, rows=32, cols=32, SeriesDescription="from hexnode")
        storescu(ct, cfg.dicom_port, "SCANNER")
        storescu(own, cfg.dicom_port, "HEXNODE")  # as if hexnode had sent a CT-modality object back
        deadline = time.monotonic() + 40
        files: list[Path] = []
        while time.monotonic() < deadline:
            files = [p for p in received.rglob("*") if p.is_file()]
            if len(files) >= 4:
                break
            time.sleep(0.3)
        assert len(files) == 4, (cfg.workdir / "orthanc.log").read_text()[-3000:]
        time.sleep(3)  # both series are stable by now; nothing more may arrive
        files = [p for p in received.rglob("*") if p.is_file()]
        assert len(files) == 4
        assert len(orthanc.get("/series")) == 2
        log = (cfg.workdir / "orthanc.log").read_text()
        assert "sent to hexnode" in log
    finally:
        orthanc.stop()
        sink.terminate()
        sink.wait(10)


def test_routing_retries_until_hexnode_is_back(tmp_path: Path) -> None:
    sink_port = free_port()  # nothing listens here yet: hexnode is "down"
    cfg = OrthancConfig(workdir=tmp_path / "orthanc", http_port=free_port(), dicom_port=free_port(), stable_age=1)
    orthanc = Orthanc.start(cfg, route_to=("SINK", "127.0.0.1", sink_port))
    received = tmp_path / "received"
    received.mkdir()
    sink = None
    try:
        storescu(write_series(tmp_path / "ct", n=3, rows=32, cols=32), cfg.dicom_port, "SCANNER")
        log = cfg.workdir / "orthanc.log"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and "send failed" not in log.read_text(errors="replace"):
            time.sleep(0.2)
        assert "send failed" in log.read_text(errors="replace")
        sink = subprocess.Popen(["/usr/bin/storescp", "-aet", "SINK", "-od", str(received), str(sink_port)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline and len(list(received.iterdir())) < 3:
            time.sleep(0.3)
        assert len(list(received.iterdir())) == 3
    finally:
        orthanc.stop()
        if sink is not None:
            sink.terminate()
            sink.wait(10)
