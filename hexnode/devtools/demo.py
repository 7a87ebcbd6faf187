"""`hexnode demo` (= `make demo`): Orthanc + hexnode on loopback, a synthetic head NCCT in, SEG/SR/SC back.

Starts Debian's Orthanc with `orthanc/orthanc.json` (free ports, folders under --workdir), and
`hexnode node` — the supervisor a one-machine site runs, which starts receive, route, worker and
send as its children. Then synthesises a head NCCT with a hematoma, C-STOREs it to Orthanc with dcmtk's
`/usr/bin/storescu` (as a scanner would), and waits until Orthanc's auto-routing has sent it to
hexnode and the SEG, SR and SC are back in Orthanc. Prints the volume, probability and risk read
from the SR that Orthanc stored, where to look, and how long each stage took.

`DemoStack` is also what the end-to-end tests, `bench/chaos.py` and `bench/latency.py` start: by
default with each stage a process of its own (`hexnode receive`, `route`, `worker`, `send` — the
command lines the containers run), each with its own log, so a test can kill exactly one of them;
`supervised=True` is the demo's single `hexnode node`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset

from hexnode.devtools.net import free_port, stop_processes, wait_port
from hexnode.devtools.orthanc import Orthanc, OrthancConfig
from hexnode.viewer import ViewerServer, ohif_installed

STORESCU = "/usr/bin/storescu"
SEG_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
SR_CLASSES = {"1.2.840.10008.5.1.4.1.1.88.34", "1.2.840.10008.5.1.4.1.1.88.33", "1.2.840.10008.5.1.4.1.1.88.22"}
SC_CLASSES = {"1.2.840.10008.5.1.4.1.1.7", "1.2.840.10008.5.1.4.1.1.7.4"}
RESULT_TIMEOUT_S = 300.0


def storescu(paths: list[Path], port: int, *, calling: str = "SCANNER", called: str = "ORTHANC",
             options: tuple[str, ...] = ()) -> float:
    """C-STORE files with dcmtk's storescu (not pynetdicom's script of the same name); seconds taken.

    `options`: e.g. ("-xt",) to propose JPEG-LS lossless for files stored that way (storescu
    proposes uncompressed syntaxes only unless told).
    """
    t = time.perf_counter()
    subprocess.run([STORESCU, *options, "-aet", calling, "-aec", called, "127.0.0.1", str(port), *map(str, paths)],
                   check=True, capture_output=True, env={**os.environ, "TCP_NODELAY": "1"})
    return time.perf_counter() - t


def sr_summary(ds: Dataset) -> dict[str, Any]:
    """Volume (ml), probability, risk, status and comments from a hexnode TID 1500 SR."""
    out: dict[str, Any] = {"comments": []}

    def walk(items: Any) -> None:
        for item in items or []:
            name = item.ConceptNameCodeSequence[0] if "ConceptNameCodeSequence" in item else None
            code = str(name.CodeValue) if name is not None else ""
            vtype = str(item.get("ValueType", ""))
            if vtype == "NUM" and "MeasuredValueSequence" in item and item.MeasuredValueSequence:
                value = float(item.MeasuredValueSequence[0].NumericValue)
                unit = str(item.MeasuredValueSequence[0].MeasurementUnitsCodeSequence[0].CodeValue)
                if code == "118565006" and "volume_ml" not in out:
                    # the hemorrhage's own group comes first; the findings' groups after it carry
                    # the intraventricular blood's and the oedema's volumes under the same concept
                    out["volume_ml"] = value if unit in ("cm3", "ml", "mL") else value / 1000.0
                elif code in ("HE-P", "HE-THR"):
                    # a fraction whatever the unit: "%" now, "1" in older reports
                    out["probability" if code == "HE-P" else "threshold"] = value / 100.0 if unit == "%" else value
            elif vtype == "CODE" and "ConceptCodeSequence" in item:
                meaning = str(item.ConceptCodeSequence[0].CodeMeaning)
                if code == "HE-RISK":
                    out["risk"] = meaning
                elif code == "HE-STATUS":
                    out["status"] = meaning
            elif vtype == "TEXT":
                out["comments"].append(str(item.get("TextValue", "")))
            walk(item.get("ContentSequence"))

    walk(ds.get("ContentSequence"))
    return out


@dataclass
class ResultSet:
    """hexnode's objects for one study as Orthanc stores them."""

    seg: list[str] = field(default_factory=list)  # Orthanc instance ids
    sr: list[str] = field(default_factory=list)
    sc: list[str] = field(default_factory=list)
    sop_uids: set[str] = field(default_factory=set)

    @property
    def complete(self) -> bool:
        return bool(self.sr and self.sc and self.seg)

    @property
    def counts(self) -> tuple[int, int, int]:
        return len(self.seg), len(self.sr), len(self.sc)


@dataclass
class DemoStack:
    """Orthanc (auto-routing) + hexnode's stages on loopback, in `workdir`.

    `supervised`: one `hexnode node` process (log: logs/node.log) instead of one process per stage
    (logs/receive.log, route.log, worker.log, send.log)."""

    workdir: Path
    database_url: str = ""
    workers: int = 1
    stable_seconds: float = 1.0
    orthanc_stable_age: int = 1
    models_dir: str = ""
    extra_toml: str = ""
    supervised: bool = False
    orthanc: Orthanc | None = None
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    hexnode_port: int = 0

    @property
    def config_path(self) -> Path:
        return self.workdir / "hexnode.toml"

    @property
    def data_dir(self) -> Path:
        return self.workdir / "hexnode"

    def write_config(self) -> Path:
        assert self.orthanc is not None
        db = f'url = "{self.database_url}"' if self.database_url else 'url = ""'
        models = f'dir = "{self.models_dir}"' if self.models_dir else 'dir = ""'
        self.config_path.write_text(f"""# written by hexnode demo
data_dir = "{self.data_dir}"
log_level = "INFO"

[dicom]
ae_title = "HEXNODE"
port = {self.hexnode_port}
min_free_disk_mb = 64

[[destinations]]
name = "orthanc"
ae_title = "{self.orthanc.cfg.aet}"
host = "127.0.0.1"
port = {self.orthanc.cfg.dicom_port}

[database]
{db}

[series]
stable_seconds = {self.stable_seconds}
study_settle_seconds = {self.stable_seconds}
check_interval_seconds = 0.25

[models]
{models}

[worker]
poll_seconds = 0.2
heartbeat_seconds = 2.0
lease_seconds = 60.0

[send]
poll_seconds = 0.2
backoff_initial_seconds = 0.5
{self.extra_toml}
""")
        return self.config_path

    def start(self) -> DemoStack:
        for sub in ("orthanc", "hexnode", "logs"):
            shutil.rmtree(self.workdir / sub, ignore_errors=True)
        (self.workdir / "logs").mkdir(parents=True, exist_ok=True)
        self.hexnode_port = free_port()
        ocfg = OrthancConfig(workdir=self.workdir / "orthanc", http_port=free_port(), dicom_port=free_port(),
                             hexnode_port=self.hexnode_port, stable_age=self.orthanc_stable_age)
        self.orthanc = Orthanc.start(ocfg)
        self.write_config()
        if self.supervised:
            wait_port(self.hexnode_port, 90, self.spawn("node", extra=("--workers", str(self.workers))))
            return self
        # receive first: it creates the database the others then open
        wait_port(self.hexnode_port, 60, self.spawn("receive"))
        self.spawn("route")
        for i in range(self.workers):
            self.spawn("worker", f"worker{i}" if self.workers > 1 else "worker")
        self.spawn("send")
        return self

    def spawn(self, command: str, name: str | None = None, extra: tuple[str, ...] = ()) -> subprocess.Popen[bytes]:
        name = name or command
        log = open(self.workdir / "logs" / f"{name}.log", "ab")  # noqa: SIM115 - the child keeps it
        env = {k: v for k, v in os.environ.items() if not k.startswith("HEXNODE_")}
        # `-m` puts the cwd first on sys.path, and the data dir `workdir/hexnode` then shadows the
        # (editable-installed) package as an empty namespace package once it exists: every process
        # spawned after serve created it (worker, send, any restart) died on import.
        env["PYTHONSAFEPATH"] = "1"
        # a session of its own: Ctrl-C in the terminal reaches the whole foreground process group,
        # and children that stop on their own race the demo's liveness check ("serve exited");
        # the demo alone takes the signal and stops them in order
        proc = subprocess.Popen([sys.executable, "-m", "hexnode.cli", command, "--config", str(self.config_path), *extra],
                                stdout=log, stderr=subprocess.STDOUT, env=env, cwd=self.workdir,
                                start_new_session=True)
        log.close()
        self.procs[name] = proc
        return proc

    def stop(self) -> None:
        stop_processes(self.procs, node_wait=30, other_wait=15)  # node: its children stop first
        if self.orthanc is not None:
            self.orthanc.stop()

    def check_alive(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                log = (self.workdir / "logs" / f"{name}.log").read_text(errors="replace")[-3000:]
                raise RuntimeError(f"hexnode {name} exited with {proc.returncode}:\n{log}")

    def send(self, paths: list[Path], calling: str = "SCANNER", options: tuple[str, ...] = ()) -> float:
        assert self.orthanc is not None
        return storescu(paths, self.orthanc.cfg.dicom_port, calling=calling, called=self.orthanc.cfg.aet,
                        options=options)

    def results(self, study_uid: str) -> ResultSet:
        assert self.orthanc is not None
        out = ResultSet()
        for inst in self.orthanc.find_instances(StudyInstanceUID=study_uid):
            tags = self.orthanc.get(f"/instances/{inst['ID']}/simplified-tags")
            cls = str(tags.get("SOPClassUID", ""))
            if cls == SEG_CLASS:
                out.seg.append(inst["ID"])
            elif cls in SR_CLASSES:
                out.sr.append(inst["ID"])
            elif cls in SC_CLASSES:
                out.sc.append(inst["ID"])
            else:
                continue
            out.sop_uids.add(str(tags.get("SOPInstanceUID", "")))
        return out

    def wait_results(self, study_uid: str, timeout: float = RESULT_TIMEOUT_S, *, want_seg: bool = True) -> ResultSet:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            res = self.results(study_uid)
            if res.sr and res.sc and (res.seg or not want_seg):
                return res
            time.sleep(0.25)
        raise TimeoutError(f"no SEG+SR+SC in Orthanc within {timeout:.0f} s; logs in {self.workdir / 'logs'}")

    def instance(self, orthanc_id: str) -> Dataset:
        assert self.orthanc is not None
        import io

        return pydicom.dcmread(io.BytesIO(self.orthanc.get_bytes(f"/instances/{orthanc_id}/file")))

    def stage_times(self, series_uid: str) -> list[tuple[str, float]]:
        """Seconds per stage from hexnode's database (events, job timings, outbox)."""
        from sqlalchemy import select

        from hexnode.config import load_config
        from hexnode.store.db import Event, Job, Outbox, Result, Series, open_store

        cfg = load_config(self.config_path, env={})
        store = open_store(cfg.database_url, create=False)
        try:
            with store.transaction() as s:
                series = s.execute(select(Series).where(Series.series_uid == series_uid)).scalar_one_or_none()
                if series is None:
                    return []
                events = s.execute(select(Event).where(Event.entity == "series", Event.entity_id == series.id)
                                   .order_by(Event.id)).scalars().all()
                first_at: dict[str, datetime] = {}
                for e in events:
                    first_at.setdefault(e.to_state, e.at)
                job = s.execute(select(Job).where(Job.series_id == series.id).order_by(Job.id.desc())).scalars().first()
                delivered = s.execute(select(Outbox.delivered_at).join(Result, Result.id == Outbox.result_id)
                                      .where(Result.series_id == series.id)).scalars().all()
                out: list[tuple[str, float]] = []

                def span(name: str, a: datetime | None, b: datetime | None) -> None:
                    if a is not None and b is not None:
                        out.append((name, (b - a).total_seconds()))

                span("receive (first → last instance)", series.first_instance_at, series.last_instance_at)
                span("completion wait (stable / provably whole)", series.last_instance_at, first_at.get("complete"))
                span("select + queue", first_at.get("complete"), first_at.get("queued"))
                span("queue wait", job.created_at if job else None, job.started_at if job else None)
                for stage, seconds in (job.timings or {}).items() if job else []:
                    out.append((f"  worker: {stage}", float(seconds)))
                done = [d for d in delivered if d is not None]
                span("send to PACS (job done → last delivered)", job.finished_at if job else None,
                     max(done) if done else None)
                span("total (last instance → last delivered)", series.last_instance_at, max(done) if done else None)
                return out
        finally:
            store.dispose()


def _pick_case(seed: int) -> Any:
    """A synthetic case with a clearly visible hematoma (so the demo has something to show)."""
    from hexnode.synth.phantom import generate_case

    for index in range(20):
        case = generate_case(seed, index)
        if 8.0 <= case.truth.volume_ml <= 60.0:
            return case
    return case


def run_demo(args: argparse.Namespace) -> int:
    for tool in ("/usr/sbin/Orthanc", STORESCU):
        if not Path(tool).exists():
            print(f"hexnode demo: {tool} is missing; run `make install` (as root) first", file=sys.stderr)
            return 2
    workdir = Path(args.workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    once = bool(getattr(args, "once", False))
    stack = DemoStack(workdir=workdir, stable_seconds=1.0, orthanc_stable_age=1, supervised=True)
    t_start = time.perf_counter()

    def _interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    # `kill`, a closed terminal or a service manager must stop Orthanc and the hexnode processes
    # too, as Ctrl-C does; by default they would end this process alone and orphan its children.
    # SIGINT is set as well: started from a non-interactive shell's background job, Python inherits
    # it ignored and never raises KeyboardInterrupt (seen under `make test` run with `&`).
    previous = {sig: signal.signal(sig, _interrupt) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    viewer: ViewerServer | None = None
    try:
        print("starting Orthanc and hexnode node (receive, route, worker, send) on loopback ...", flush=True)
        stack.start()
        assert stack.orthanc is not None
        if ohif_installed():
            viewer = ViewerServer(stack.orthanc.cfg.url, port=int(getattr(args, "viewer_port", 0) or 0)).start()
        t_up = time.perf_counter()
        from hexnode.synth.dicom import write_case

        case = _pick_case(int(getattr(args, "seed", 0) or 0))
        shutil.rmtree(workdir / "synth", ignore_errors=True)
        paths = write_case(case, workdir / "synth")
        truth = json.loads((workdir / "synth" / "truth.json").read_text())
        print(f"synthesised a head NCCT: {len(paths)} slices of {case.geometry.slice_thickness_mm:g} mm, "
              f"hematoma {case.truth.volume_ml:.1f} ml (ground truth)", flush=True)
        send_s = stack.send(paths)
        t_sent = time.perf_counter()
        print(f"sent to Orthanc with {STORESCU} in {send_s:.1f} s; waiting for Orthanc to route it and for the results ...",
              flush=True)
        res = stack.wait_results(truth["study_instance_uid"], RESULT_TIMEOUT_S)
        t_done = time.perf_counter()
        summary = sr_summary(stack.instance(res.sr[0]))
        print()
        print("result (read back from the SR stored in Orthanc):")
        if "volume_ml" in summary:
            found = "" if summary["volume_ml"] > 0 else " — no hemorrhage detected"
            print(f"  hematoma volume:        {summary['volume_ml']:.1f} ml{found} (ground truth {case.truth.volume_ml:.1f} ml)")
        if "probability" in summary:
            thr = summary.get("threshold")
            print(f"  expansion probability:  {summary['probability']:.1%}" + (f" (threshold {thr:.1%})" if thr is not None else ""))
        print(f"  risk:                   {summary.get('risk', summary.get('status', '?'))}")
        print("  synthetic-trained demonstration model: not for clinical use")
        study = stack.orthanc.lookup(truth["study_instance_uid"])
        study_id = next((x["ID"] for x in study if x.get("Type") == "Study"), "")
        print()
        if viewer is not None:
            print(f"read it:    {viewer.study_url(truth['study_instance_uid'])}")
            print("            (OHIF: double-click the SEG or the SR in the series list; the SR opens on the key slice)")
        else:
            print("read it:    OHIF is not installed (run `make install`); Orthanc's explorer below")
        print(f"look at it: {stack.orthanc.cfg.url}/app/explorer.html#study?uuid={study_id}")
        print(f"            (SEG, SR and SC next to the CT; logs in {workdir / 'logs'})")
        print()
        print("time per stage:")
        print(f"  start-up (Orthanc + hexnode)                  {t_up - t_start:6.2f} s")
        print(f"  storescu → Orthanc                            {send_s:6.2f} s")
        print(f"  Orthanc stable + routing + hexnode + back     {t_done - t_sent:6.2f} s")
        for name, seconds in stack.stage_times(truth["series_instance_uid"]):
            print(f"    {name:<44}{seconds:6.2f} s")
        sys.stdout.flush()
        if once:
            return 0
        print("\nrunning; press Ctrl-C to stop", flush=True)
        while True:
            stack.check_alive()
            time.sleep(1.0)
    except KeyboardInterrupt:
        return 0
    except (TimeoutError, RuntimeError, subprocess.CalledProcessError) as exc:
        print(f"hexnode demo: {exc}", file=sys.stderr)
        return 1
    finally:
        print("stopping ...", flush=True)
        if viewer is not None:
            viewer.stop()
        stack.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
