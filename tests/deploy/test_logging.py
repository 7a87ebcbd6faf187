"""Logs an admin can trust: one line per record whatever DICOM text it quotes (CR/LF, ANSI
escapes), JSON lines as an option, libraries quiet (hexnode/runtime.py). The end-to-end case sends
a study whose Series Description and Convolution Kernel carry CR/LF and ESC through dcmtk's
storescu to a real `hexnode serve` (receive + route), whose log quotes them."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from plumbing_helpers import free_port, storescu, wait_port
from pydicom.uid import generate_uid
from series_helpers import write_series

from hexnode.runtime import JsonFormatter, TextFormatter, library_errors, one_line

FORGED = "2026-01-01 00:00:00,000 ERROR hexnode.forged: an injected line"
HOSTILE = f"Head\x1b[31m 5mm\r\n{FORGED}\x1b[0m\x85\u2028end"
ESCAPED = "Head\\x1b[31m 5mm\\r\\n" + FORGED + "\\x1b[0m\\x85\\u2028end"


def _record(msg: str, *args: object, exc: bool = False) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise ValueError(f"bad value {HOSTILE}")
        except ValueError:
            exc_info = sys.exc_info()
    return logging.LogRecord("hexnode.route.stable", logging.INFO, __file__, 1, msg, args, exc_info)


def test_control_characters_never_split_or_colour_a_line() -> None:
    assert one_line("a\r\nb\x1b[31mc\x00\x7f\x9b\u2028\td") == "a\\r\\nb\\x1b[31mc\\x00\\x7f\\x9b\\u2028\\td"
    text = TextFormatter("%(levelname)s %(name)s: %(message)s").format(
        _record("series %s rejected: %s", "3544bb64f7", HOSTILE))
    assert "\n" not in text and "\r" not in text and "\x1b" not in text and "\x85" not in text
    assert text == "INFO hexnode.route.stable: series 3544bb64f7 rejected: " + ESCAPED
    # a traceback keeps its lines, each indented: none can pass for a record of its own
    tb = TextFormatter("%(levelname)s %(name)s: %(message)s").format(_record("job 3 failed", exc=True))
    first, *rest = tb.split("\n")
    assert first == "INFO hexnode.route.stable: job 3 failed" and rest
    assert all(line.startswith("    ") for line in rest) and "\x1b" not in tb
    assert rest[-1] == "    ValueError: bad value " + ESCAPED  # the exception's own text on one line


def test_json_lines_carry_level_stage_logger_and_the_series() -> None:
    fmt = JsonFormatter(stage="route")
    line = fmt.format(_record("series %s rejected without report: %s", "3544bb64f7", HOSTILE))
    assert "\n" not in line and "\x1b" not in line
    obj = json.loads(line)
    assert obj["level"] == "INFO" and obj["stage"] == "route" and obj["logger"] == "hexnode.route.stable"
    assert obj["series"] == "3544bb64f7" and re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$", obj["ts"])
    assert obj["message"].endswith(ESCAPED)
    job = json.loads(JsonFormatter().format(_record("job %d: study %s done", 12, "2382d58a10", exc=True)))
    assert (job["job"], job["study"], job["stage"]) == (12, "2382d58a10", "route")  # stage from the logger
    assert isinstance(job["exc"], list) and job["exc"][-1] == "ValueError: bad value " + ESCAPED


def test_a_library_error_becomes_the_callers_reason() -> None:
    before = list(logging.getLogger("pynetdicom").handlers)
    with library_errors("pynetdicom") as lib:
        logging.getLogger("pynetdicom.transport").error("Association request failed: unable to connect to remote")
        logging.getLogger("pynetdicom.transport").error("TCP Initialisation Error: [Errno 111] Connection refused")
    assert lib.reason() == "[Errno 111] Connection refused"
    assert logging.getLogger("pynetdicom").handlers == before  # removed again


def _serve(work: Path, port: int, log_format: str) -> tuple[subprocess.Popen[bytes], Path]:
    cfg = work / "hexnode.toml"
    cfg.write_text(f"""data_dir = "{work / 'var'}"
log_format = "{log_format}"
[dicom]
port = {port}
min_free_disk_mb = 1
[series]
stable_seconds = 1.0
check_interval_seconds = 0.2
study_settle_seconds = 1.0
""")
    log = work / "serve.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HEXNODE_", "_HEXNODE_"))}
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "hexnode.cli", "serve", "--config", str(cfg)],
                                stdout=out, stderr=subprocess.STDOUT, env=env, cwd=work)
    wait_port(port, 90)
    return proc, log


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_hostile_dicom_text_through_receive_and_route_stays_on_its_line(tmp_path: Path, log_format: str) -> None:
    study = generate_uid()
    chosen = write_series(tmp_path / "a", n=12, dz=5.0, study_uid=study, SeriesNumber=2, SeriesDescription=HOSTILE)
    # a thinner soft-kernel series of the same study: passed over, and its reason quotes the chosen
    # one's description; its own kernel carries the escapes too
    other = write_series(tmp_path / "b", n=12, dz=2.0, study_uid=study, SeriesNumber=3,
                         SeriesDescription=HOSTILE, ConvolutionKernel="H30s\r\nFORGED\x1b[2J")
    port = free_port()
    proc, log = _serve(tmp_path, port, log_format)
    try:
        r = storescu(port, chosen + other, aet="SCANNER")
        assert r.returncode == 0, r.stderr
        deadline = time.monotonic() + 60
        while "rejected without report" not in log.read_text(errors="replace"):
            assert time.monotonic() < deadline and proc.poll() is None, log.read_text(errors="replace")
            time.sleep(0.3)
        time.sleep(0.5)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    raw = log.read_bytes()
    assert b"\x1b" not in raw and b"\r" not in raw and b"\xc2\x85" not in raw and "\u2028".encode() not in raw
    lines = raw.decode().splitlines()
    assert not any(line.startswith(("2026-01-01", "FORGED")) for line in lines), raw.decode()
    if log_format == "json":
        records = [json.loads(line) for line in lines]  # every line is one JSON object
        quoted = [r for r in records if "rejected without report" in r["message"]]
        assert quoted and quoted[0]["stage"] == "route" and re.fullmatch(r"[0-9a-f]{10}", quoted[0]["series"])
        assert {r["stage"] for r in records} >= {"serve", "receive", "route"}
        assert any(r["logger"] == "hexnode.receive.index" for r in records)  # the spawned indexer, in JSON too
        message = quoted[0]["message"]
    else:
        quoted_lines = [line for line in lines if "rejected without report" in line]
        assert len(quoted_lines) == 1
        message = quoted_lines[0]
        assert all(re.match(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR) ", line)
                   for line in lines), raw.decode()
        # each process first says which settings and database it uses
        from hexnode import __version__

        said = f"config {tmp_path / 'hexnode.toml'}; database sqlite:///{tmp_path / 'var' / 'hexnode.sqlite'}"
        assert lines[0].endswith(f" INFO hexnode: hexnode {__version__} serve: {said}")
        for stage in ("receive", "route"):
            assert sum(line.endswith(f"hexnode {__version__} {stage}: {said}") for line in lines) == 1
    # the DICOM text is there, escaped, on the one line (the reason quotes the first 50 characters)
    assert ESCAPED[:60] in message
    assert "alembic" not in raw.decode() and "setup plugin" not in raw.decode()
