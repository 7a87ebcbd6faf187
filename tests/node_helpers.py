"""A node for the through-the-SCP tests: `hexnode serve` as a process (the supervisor over receive
and route) + a worker in this process, sharing one SQLite store and spool, with the real ONNX models."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from plumbing_helpers import free_port, models_dir, storescu, wait_port
from sqlalchemy import func, select

from hexnode.config import load_config
from hexnode.store.db import Event, Instance, Job, Result, Series, Store, open_store
from hexnode.store.spool import Spool

DCIODVFY = "/usr/bin/dciodvfy"
CALLING = "SCANNER"


@dataclass
class Outcome:
    state: str
    reason: str
    kinds: list[str]
    paths: dict[str, Path] = field(default_factory=dict)
    job_error: str = ""

    def sr_text(self) -> str:
        return json.dumps(pydicom.dcmread(self.paths["SR"]).to_json_dict(), ensure_ascii=False)


class Node:
    """`hexnode serve` (process) + a worker in this process, sharing one SQLite store and spool."""

    def __init__(self, workdir: Path, series_extra: str = "", extra_toml: str = "") -> None:
        self.workdir = workdir
        self.port = free_port()
        self.config = workdir / "hexnode.toml"
        self.config.write_text(f"""data_dir = "{workdir / 'node'}"
log_level = "INFO"
[dicom]
ae_title = "HEXNODE"
port = {self.port}
min_free_disk_mb = 1
[[destinations]]
name = "pacs"
ae_title = "NOWHERE"
port = {free_port()}
[series]
stable_seconds = 3.0
check_interval_seconds = 0.2
study_settle_seconds = 3.0
{series_extra}
[models]
dir = "{models_dir()}"
providers = ["CPUExecutionProvider"]
[worker]
max_attempts = 2
heartbeat_seconds = 1.0
{extra_toml}
""")
        self.cfg = load_config(self.config, env={})
        self.log = workdir / "serve.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("HEXNODE_")}
        env["PYTHONSAFEPATH"] = "1"
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "hexnode.cli", "serve", "--config", str(self.config)],
                                         stdout=log, stderr=subprocess.STDOUT, env=env, cwd=workdir)
        wait_port(self.port, 90)
        self.store: Store = open_store(self.cfg.database_url, create=False)
        self.spool = Spool(self.cfg.spool_path)
        from hexnode.models.analyser import Models
        from hexnode.worker import Worker

        self.models = Models.load(self.cfg.models_path, ["CPUExecutionProvider"])
        self.worker = Worker(self.store, self.spool, self.cfg, self.models, owner="pytest-worker")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.store.dispose()

    def alive(self) -> bool:
        return self.proc.poll() is None

    # --- sending -------------------------------------------------------------------------------
    def storescu(self, files: list[Path] | Path, extra: list[str] | None = None) -> subprocess.CompletedProcess[str]:
        return storescu(self.port, files, aec="HEXNODE", aet=CALLING, extra=extra, timeout=300)

    def pynetdicom_send(self, paths: list[Path], syntaxes: list[str] | None = None) -> list[int | None]:
        """C-STORE each file as it is on disk (pynetdicom does not parse a dataset sent by path)."""
        from pynetdicom import AE, _config

        ae = AE(ae_title=CALLING)
        ae.add_requested_context("1.2.840.10008.5.1.4.1.1.2", syntaxes or ["1.2.840.10008.1.2.1"])
        assoc = ae.associate("127.0.0.1", self.port, ae_title="HEXNODE")
        assert assoc.is_established, "association with hexnode serve failed"
        out: list[int | None] = []
        chunked = _config.STORE_SEND_CHUNKED_DATASET
        _config.STORE_SEND_CHUNKED_DATASET = True  # send the file's bytes after the meta, unparsed
        try:
            for p in paths:
                status = assoc.send_c_store(p)
                out.append(int(status.Status) if status and "Status" in status else None)
        finally:
            _config.STORE_SEND_CHUNKED_DATASET = chunked
            assoc.release()
        return out

    # --- waiting and processing ------------------------------------------------------------------
    def wait_decided(self, series_uids: list[str], timeout: float = 90.0) -> None:
        """Until every series was completed and selected (queued, or closed as rejected)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.alive(), self.log.read_text()[-3000:]
            with self.store.transaction() as s:
                states = dict(s.execute(select(Series.series_uid, Series.state)
                                        .where(Series.series_uid.in_(series_uids))).all())
            if len(states) == len(set(series_uids)) and all(v not in ("received", "complete") for v in states.values()):
                return
            time.sleep(0.2)
        raise TimeoutError(f"series not decided within {timeout:.0f} s: {states}")

    def drain(self) -> None:
        while self.worker.run_once() is not None:
            pass

    def outcome(self, series_uid: str) -> Outcome:
        with self.store.transaction() as s:
            ser = s.execute(select(Series).where(Series.series_uid == series_uid)).scalar_one()
            results = list(s.execute(select(Result).where(Result.series_id == ser.id).order_by(Result.kind)).scalars())
            job = s.execute(select(Job).where(Job.series_id == ser.id).order_by(Job.id.desc())).scalars().first()
            return Outcome(ser.state, ser.reason or "", sorted(r.kind for r in results),
                           {r.kind: self.spool.path(r.path) for r in results}, (job.error or "") if job else "")

    def process(self, paths: list[Path], *, via: str = "storescu") -> Outcome:
        """Send one series, let the node decide, run the worker, return the series' outcome."""
        uid = series_uid_of(paths[0])
        if via == "storescu":
            proc = self.storescu(paths)
            assert proc.returncode == 0, proc.stderr[-2000:]
        else:
            assert all(s == 0 for s in self.pynetdicom_send(paths))
        self.wait_decided([uid])
        self.drain()
        return self.outcome(uid)

    def quarantined(self) -> list[str]:
        with self.store.transaction() as s:
            return [e.detail or "" for e in s.execute(
                select(Event).where(Event.entity == "instance", Event.to_state == "rejected").order_by(Event.id)).scalars()]

    def wait_quarantined(self, before: int, n: int, timeout: float = 30.0) -> list[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            q = self.quarantined()
            if len(q) >= before + n:
                return q[before:]
            time.sleep(0.1)
        raise TimeoutError(f"expected {n} quarantined instance(s); got {self.quarantined()[before:]}")

    def instance_count(self) -> int:
        with self.store.transaction() as s:
            return int(s.execute(select(func.count()).select_from(Instance)).scalar_one())


def series_uid_of(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).SeriesInstanceUID)


def dciodvfy_errors(path: Path) -> list[str]:
    proc = subprocess.run([DCIODVFY, str(path)], capture_output=True, text=True)
    return [line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("Error")]
