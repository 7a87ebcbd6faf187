"""`hexnode demo` as IT runs it: started, results back, then stopped by a signal with nothing left behind."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest


def _processes_mentioning(text: str) -> list[str]:
    found = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == os.getpid():
            continue
        try:
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmd:
            found.append(f"{d.name}: {cmd}")
    return found


def _pids(work: Path) -> list[int]:
    return [int(entry.split(":", 1)[0]) for entry in _processes_mentioning(str(work))]


def _kill_all(work: Path) -> None:
    for pid in _pids(work):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _check_viewer_url(text: str) -> None:
    """The printed OHIF URL serves OHIF, isolated (COOP/COEP), with Orthanc's DICOMweb at the same
    origin holding the demo's study (the browser test, tests/web/test_viewer.py, opens it for real)."""
    match = re.search(r"read it: +(http://127\.0\.0\.1:\d+)/viewer\?StudyInstanceUIDs=([0-9.]+)", text)
    assert match, text[-3000:]
    origin, study = match.groups()
    with urllib.request.urlopen(origin + "/viewer", timeout=10) as resp:
        assert b"OHIF Viewer" in resp.read()
        assert resp.headers["Cross-Origin-Opener-Policy"] == "same-origin"
        assert resp.headers["Cross-Origin-Embedder-Policy"] == "require-corp"
    with urllib.request.urlopen(origin + "/app-config.js", timeout=10) as resp:
        assert b"window.location.origin + '/dicom-web'" in resp.read()
    req = urllib.request.Request(f"{origin}/dicom-web/studies/{study}/series", headers={"Accept": "application/dicom+json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        modalities = {s["00080060"]["Value"][0] for s in json.loads(resp.read())}
    assert {"CT", "SEG", "SR"} <= modalities, modalities


def _look_in_ohif(text: str, tmp_path: Path) -> None:
    """The printed OHIF URL in chromium: the SEG overlay and the SR's outline with its label show,
    with no page error (the geometry itself is measured in tests/web/test_viewer.py)."""
    import playwright.sync_api as pw_api  # installed by `make install`
    from report_helpers import OUTPUT
    from viewer_helpers import launch, open_ohif

    url = re.search(r"read it: +(\S+)", text)
    assert url, text[-3000:]
    shots = OUTPUT / "demo"
    shots.mkdir(parents=True, exist_ok=True)
    errors: list[str] = []
    with pw_api.sync_playwright() as pw:
        browser = launch(pw)
        try:
            page = open_ohif(browser, url.group(1), errors)
            page.get_by_text("hexnode hematoma SEG").dblclick()
            page.get_by_role("button", name="Yes").click(timeout=30_000)
            page.wait_for_timeout(5000)
            page.screenshot(path=str(shots / "ohif-seg.png"))
            png = page.screenshot()
            page.get_by_text("hexnode HE risk SR").first.dblclick()
            page.locator("svg.svg-layer polyline").first.wait_for(timeout=60_000)
            page.wait_for_timeout(1000)
            page.screenshot(path=str(shots / "ohif-sr.png"))
            label = " ".join(page.locator("svg.svg-layer text").all_text_contents())
        finally:
            browser.close()
    import io

    import numpy as np
    from PIL import Image

    rgb = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)[60:, 290:]  # the viewport
    assert ((rgb[..., 0] - rgb[..., 2] > 60) & (rgb[..., 1] - rgb[..., 2] > 40)).sum() > 50, "no SEG overlay"
    assert "Volume:" in label and "Probability of hematoma expansion:" in label and " %" in label, label
    assert errors == []


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_demo_stopped_by_a_signal_stops_orthanc_and_hexnode(tmp_path, sig):
    work = tmp_path / "demo"
    proc = subprocess.Popen([sys.executable, "-m", "hexnode.cli", "demo", "--workdir", str(work)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            # a fresh session: SIGINT is not ignored as in a background job
                            start_new_session=True)
    out = []
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 300
        for line in proc.stdout:
            out.append(line)
            if "press Ctrl-C to stop" in line or time.monotonic() > deadline:
                break
        text = "".join(out)
        assert "press Ctrl-C to stop" in text, text[-3000:]
        assert "hematoma volume:" in text and "risk:" in text
        _check_viewer_url(text)
        if sig == signal.SIGTERM:  # once: the real pipeline's SEG and SR in a real browser
            _look_in_ohif(text, tmp_path)
        spans = re.findall(r"^ {2,}(\S.*?)\s+(-?\d+\.\d+) s$", text, re.M)
        assert any(name.startswith("queue wait") for name, _ in spans), text[-3000:]
        assert all(float(v) >= 0 for _, v in spans), spans  # a negative span means clocks read out of order
        children = [pid for pid in _pids(work) if pid != proc.pid]
        # Orthanc, hexnode node and its receive, route, worker and send
        assert len(children) >= 6, "the demo's Orthanc, node, receive, route, worker and send should be running"
        # a terminal's Ctrl-C reaches the demo's whole process group; the children must not get it, or
        # they stop on their own while the demo still watches them (seen: "serve exited with 0")
        assert all(os.getsid(pid) != os.getsid(proc.pid) for pid in children)
        if sig == signal.SIGINT:  # Ctrl-C: the terminal signals the whole foreground process group
            os.killpg(proc.pid, sig)
        else:
            proc.send_signal(sig)
        rest, _ = proc.communicate(timeout=60)
    except BaseException:
        if proc.poll() is None:
            proc.kill()
        _kill_all(work)
        raise
    try:
        assert proc.returncode == 0, rest[-3000:]
        assert "stopping ..." in rest and "exited with" not in rest, rest[-3000:]
        deadline = time.monotonic() + 10
        while _processes_mentioning(str(work)) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _processes_mentioning(str(work)) == []
    finally:  # a failure must not leave an Orthanc and three hexnode processes to later tests
        _kill_all(work)
