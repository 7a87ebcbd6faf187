"""Log lines of a short `hexnode node` run that analyses one series, by logger and level.

A synthetic head NCCT (`hexnode synth`, 1 series) is C-STOREd by dcmtk's storescu straight to
`hexnode node` (receive, route, worker, send); the destination (Debian's Orthanc) is down for the
first `--pacs-down` seconds, so the run includes delivery retries, then comes up and takes the
SEG, SR and SC. The node is stopped with SIGTERM once the series is delivered; its output (every
child's lines, as under systemd) is counted: lines in all, per logger and level, lines that are
not the start of a record (tracebacks, continuation), and lines per delivery retry.

    .venv/bin/python bench/logs.py [--pacs-down 8] [--pythonpath DIR] [--workdir DIR] [--json-logs]

``--pythonpath`` runs the `hexnode` package found in DIR (e.g. `git archive` of an older commit) with
the same harness, for a before/after figure. ``--json-logs`` sets `log_format = "json"` (and checks
that every line is one JSON object).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from hexnode.devtools.net import dcmtk_env, free_port, wait_port  # noqa: E402
from hexnode.devtools.orthanc import Orthanc, OrthancConfig  # noqa: E402

RECORD = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL) ([^:]+): ")


def count(lines: list[str], json_logs: bool) -> dict[str, object]:
    by_logger: collections.Counter[str] = collections.Counter()
    other = 0
    for line in lines:
        if json_logs:
            try:
                obj = json.loads(line)
                by_logger[f"{obj['level']} {obj['logger']}"] += 1
                continue
            except (ValueError, KeyError):
                other += 1
                continue
        m = RECORD.match(line)
        if m:
            by_logger[f"{m.group(1)} {m.group(2).split('[')[0]}"] += 1
        else:
            other += 1
    return {"lines": len(lines), "records": sum(by_logger.values()), "not_a_record": other,
            "by_logger": dict(by_logger.most_common())}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pacs-down", type=float, default=8.0, help="seconds the destination is down after the analysis")
    ap.add_argument("--pythonpath", default=None, help="run the hexnode package from this directory")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--json-logs", action="store_true")
    args = ap.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="hexnode-logs-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEXNODE_")}
    if args.pythonpath:
        env["PYTHONPATH"] = str(Path(args.pythonpath).resolve())
    env["PYTHONSAFEPATH"] = "1"

    data = work / "synth"
    if not (data / "case-0000").is_dir():
        subprocess.run([sys.executable, "-m", "hexnode.cli", "synth", "--n", "1", "--seed", "5", "--out", str(data)],
                       check=True, env=env, cwd=work, capture_output=True)
    series = sorted((data / "case-0000" / "series").glob("*.dcm"))

    dicom_port, pacs_port, pacs_http = free_port(), free_port(), free_port()
    node_dir = work / "node"
    cfg = work / "hexnode.toml"
    cfg.write_text(f"""data_dir = "{node_dir}"
{'log_format = "json"' if args.json_logs else ''}
[dicom]
port = {dicom_port}
min_free_disk_mb = 1
[[destinations]]
name = "pacs"
ae_title = "ORTHANC"
port = {pacs_port}
[series]
stable_seconds = 2.0
check_interval_seconds = 0.5
study_settle_seconds = 2.0
[models]
dir = "{REPO / 'models'}"
providers = ["CPUExecutionProvider"]
[send]
backoff_initial_seconds = 1.0
backoff_max_seconds = 2.0
""")
    log_path = work / "node.log"
    t0 = time.monotonic()
    with open(log_path, "wb") as out:
        node = subprocess.Popen([sys.executable, "-m", "hexnode.cli", "node", "--config", str(cfg)],
                                stdout=out, stderr=subprocess.STDOUT, env=env, cwd=work)
    orthanc: Orthanc | None = None
    try:
        wait_port(dicom_port, 120, node)  # type: ignore[arg-type]
        subprocess.run(["/usr/bin/storescu", "-aet", "SCANNER", "-aec", "HEXNODE", "127.0.0.1", str(dicom_port),
                        *map(str, series)], check=True, capture_output=True, env=dcmtk_env())
        db = node_dir / "hexnode.sqlite"

        def query(sql: str) -> list[tuple[object, ...]]:
            con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
            try:
                return con.execute(sql).fetchall()
            finally:
                con.close()

        deadline = time.monotonic() + 600
        while not query("SELECT 1 FROM outbox WHERE attempts > 0"):
            if time.monotonic() > deadline or node.poll() is not None:
                raise TimeoutError("no delivery attempted")
            time.sleep(0.5)
        time.sleep(args.pacs_down)
        orthanc = Orthanc.start(OrthancConfig(work / "orthanc", pacs_http, pacs_port))
        while query("SELECT 1 FROM outbox WHERE state != 'delivered'") or not query("SELECT 1 FROM outbox"):
            if time.monotonic() > deadline or node.poll() is not None:
                raise TimeoutError("results not delivered")
            time.sleep(0.5)
        attempts = query("SELECT SUM(attempts), COUNT(*) FROM outbox")[0]
        states = query("SELECT state, COUNT(*) FROM series GROUP BY state")
        time.sleep(1.0)
    finally:
        node.send_signal(signal.SIGTERM)
        try:
            node.wait(120)
        except subprocess.TimeoutExpired:
            node.kill()
        if orthanc is not None:
            orthanc.stop()
    wall = time.monotonic() - t0
    lines = log_path.read_text(errors="replace").splitlines()
    figures = count(lines, args.json_logs)
    retries = int(attempts[0]) - int(attempts[1])  # attempts beyond the first, per delivered object
    print(f"tree: {args.pythonpath or REPO}")
    print(f"series: {len(series)} instances, 1 analysed; series states: {dict(states)}; run {wall:.0f} s")
    print(f"deliveries: {attempts[1]} objects, {attempts[0]} attempts ({retries} retries)")
    print(f"log lines: {figures['lines']} ({figures['records']} records, {figures['not_a_record']} other lines)")
    for key, n in figures["by_logger"].items():  # type: ignore[attr-defined]
        print(f"  {n:5d}  {key}")
    print(f"log: {log_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
