"""Crash safety: `kill -9` a random hexnode process at a random moment, restart it, count the results.

Real Debian Orthanc with the repository's auto-routing + `hexnode receive`, `route`, `worker` and
`send` as processes on loopback (the demo's `DemoStack`, so the same command lines the containers run). Each
run streams one synthetic head NCCT (hexnode.synth, 29-36 slices of 5 mm: a whole head, which the coverage
rule needs before any result) into Orthanc with dcmtk
`storescu`; Orthanc routes it to hexnode once stable; while the series travels through the node,
one process is killed with SIGKILL

* `receive` while instances arrive (between the first spooled file and the end of the association;
  its indexer child sees its pipe close and exits with it),
* `worker` while the series' job is running,
* `send`   while its results are being delivered (an outbox row is `sending`, or just delivered),
* or any of them (route too) at a uniformly random moment,

and restarted after a random pause. At the end every source series must have in Orthanc exactly
one SEG, one SR and one SC, identified by the SOP Instance UIDs hexnode derives from the series
(`hexnode.report.uids.derive_uid`, any revision). Anything else hexnode put into the study counts
as a duplicate. The last line printed is

    runs=N series=M lost=L duplicated=D

Usage: python bench/chaos.py --runs 20 [--seed S] [--models DIR] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from hexnode.devtools.demo import DemoStack, storescu, wait_port  # noqa: E402

PROCS = ("receive", "route", "worker", "send")
PHASES = ("receive", "job", "send", "random")
TARGET = {"receive": "receive", "job": "worker", "send": "send"}
# Short worker lease so a killed worker's job is reclaimed within the run (the default is minutes).
WORKER_LEASE_S = 8.0
OUTPUT_KINDS = ("seg", "sr", "sc")


@dataclass
class Source:
    study_uid: str
    series_uid: str
    slices: int


@dataclass
class RunLog:
    run: int
    phase: str
    target: str
    killed_at: str = ""  # what was happening when the kill landed
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)


class ChaosStack(DemoStack):
    """DemoStack with a short worker lease (the rest is the demo's configuration)."""

    def write_config(self) -> Path:
        path = super().write_config()
        text = path.read_text()
        if "lease_seconds = 60.0" not in text:
            raise RuntimeError("DemoStack's config no longer sets lease_seconds = 60.0; update bench/chaos.py")
        # a destination timeout of 10 s gives the sender its minimum lease (60 s) instead of 120 s
        path.write_text(text.replace("heartbeat_seconds = 2.0", "heartbeat_seconds = 1.0")
                        .replace("lease_seconds = 60.0", f"lease_seconds = {WORKER_LEASE_S}")
                        .replace('name = "orthanc"\n', 'name = "orthanc"\ntimeout_seconds = 10.0\n', 1))
        return path

    def kill9(self, name: str) -> None:
        proc = self.procs[name]
        if proc.poll() is None:
            proc.kill()  # SIGKILL: no handler, no cleanup
        proc.wait()

    def restart(self, name: str) -> None:
        proc = self.spawn(name)
        if name == "receive":
            wait_port(self.hexnode_port, 60, proc)


class Probe:
    """Read-only views of hexnode's database and spool, to aim the kill at a phase."""

    def __init__(self, stack: ChaosStack) -> None:
        from hexnode.config import load_config
        from hexnode.store.db import open_store

        self.cfg = load_config(stack.config_path, env={})
        self.store = open_store(self.cfg.database_url, create=False)

    def series_state(self, series_uid: str) -> dict[str, Any]:
        from sqlalchemy import select

        from hexnode.store.db import Job, Outbox, Result, Series

        with self.store.transaction() as s:
            ser = s.execute(select(Series).where(Series.series_uid == series_uid)).scalar_one_or_none()
            if ser is None:
                return {"instances": 0, "series": None, "jobs": [], "outbox": []}
            jobs = [j.state for j in s.execute(select(Job).where(Job.series_id == ser.id)).scalars()]
            outbox = [o.state for o in s.execute(select(Outbox).join(Result, Result.id == Outbox.result_id)
                                                 .where(Result.series_id == ser.id)).scalars()]
            return {"instances": ser.instance_count, "series": ser.state, "jobs": jobs, "outbox": outbox}

    def busy(self) -> bool:
        """Anything still to do anywhere in the node?"""
        from sqlalchemy import func, select

        from hexnode.store.db import Job, Outbox, Series

        with self.store.transaction() as s:
            n = s.execute(select(func.count()).select_from(Series)
                          .where(Series.state.in_(("received", "complete", "queued", "running")))).scalar_one()
            n += s.execute(select(func.count()).select_from(Job).where(Job.state.in_(("queued", "running")))).scalar_one()
            n += s.execute(select(func.count()).select_from(Outbox)
                           .where(Outbox.state.in_(("pending", "sending")))).scalar_one()
        return bool(n)

    def spooled(self) -> int:
        root = self.cfg.spool_path / "instances"
        return sum(1 for _ in root.glob("*/*.dcm")) if root.is_dir() else 0

    def close(self) -> None:
        self.store.dispose()


def make_source(workdir: Path, seed: int, index: int) -> tuple[Source, list[Path]]:
    from hexnode.synth.dicom import write_case
    from hexnode.synth.phantom import generate_case

    case = generate_case(seed, index)
    d = workdir / "series" / f"case{index:04d}"
    shutil.rmtree(d, ignore_errors=True)
    paths = write_case(case, d)
    truth = json.loads((d / "truth.json").read_text())
    return Source(truth["study_instance_uid"], truth["series_instance_uid"], len(paths)), paths


def wait_until(cond: Any, timeout: float, step: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(step)
    return False


def one_run(stack: ChaosStack, probe: Probe, rng: random.Random, run: int, phase: str, seed: int,
            workdir: Path, timeout: float) -> tuple[RunLog, Source]:
    target = TARGET.get(phase) or rng.choice(PROCS)
    log = RunLog(run, phase, target)
    src, paths = make_source(workdir, seed, run)
    assert stack.orthanc is not None
    t0 = time.monotonic()
    spooled_before = probe.spooled()
    sender = threading.Thread(target=storescu, args=(paths, stack.orthanc.cfg.dicom_port),
                              kwargs={"called": stack.orthanc.cfg.aet}, daemon=True)
    sender.start()

    def state() -> dict[str, Any]:
        return probe.series_state(src.series_uid)

    aimed = False
    if phase == "receive":
        # first file of this series in the spool, then kill within the few hundred ms receive takes
        aimed = wait_until(lambda: probe.spooled() > spooled_before, timeout, 0.005)
        time.sleep(rng.uniform(0.0, 0.15))
    elif phase == "job":
        aimed = wait_until(lambda: "running" in state()["jobs"], timeout, 0.05)
        time.sleep(rng.uniform(0.0, 2.0))
    elif phase == "send":
        aimed = wait_until(lambda: any(o in ("sending", "delivered") for o in state()["outbox"]), timeout, 0.01)
        time.sleep(rng.uniform(0.0, 0.05))
    else:
        time.sleep(rng.uniform(0.0, 12.0))
        aimed = True
    snap = state()
    log.killed_at = (f"series {snap['series']}, {snap['instances']}/{src.slices} instances indexed, "
                     f"jobs {snap['jobs']}, outbox {snap['outbox']}")
    if not aimed:
        log.notes.append(f"phase {phase} not observed within {timeout:.0f} s; killed anyway")
    stack.kill9(target)
    time.sleep(rng.uniform(0.0, 2.0))
    stack.restart(target)
    sender.join(120)
    # done when hexnode has nothing left to do and the series' results are in Orthanc
    ok = wait_until(lambda: stack.results(src.study_uid).complete and not probe.busy(), timeout, 0.5)
    if not ok:
        log.notes.append(f"no complete result set within {timeout:.0f} s (state: {state()})")
    log.seconds = time.monotonic() - t0
    return log, src


def count(stack: ChaosStack, sources: list[Source], model_version: str) -> tuple[int, int, list[str]]:
    """(lost, duplicated, details): per source series, per kind, objects in Orthanc by derived UID."""
    from hexnode.report.uids import derive_uid

    assert stack.orthanc is not None
    lost = dup = 0
    details = []
    for src in sources:
        expected = {kind: {derive_uid(src.series_uid, model_version, kind, rev): rev for rev in range(6)}
                    for kind in OUTPUT_KINDS}
        found: dict[str, list[int]] = {k: [] for k in OUTPUT_KINDS}
        unknown = 0
        for inst in stack.orthanc.find_instances(StudyInstanceUID=src.study_uid):
            tags = stack.orthanc.get(f"/instances/{inst['ID']}/simplified-tags")
            if str(tags.get("SeriesInstanceUID", "")) == src.series_uid:
                continue  # the source CT itself
            sop = str(tags.get("SOPInstanceUID", ""))
            for kind in OUTPUT_KINDS:
                if sop in expected[kind]:
                    found[kind].append(expected[kind][sop])
                    break
            else:
                unknown += 1
        n_ct = len(stack.orthanc.find_instances(SeriesInstanceUID=src.series_uid))
        for kind in OUTPUT_KINDS:
            if not found[kind]:
                lost += 1
            dup += max(0, len(found[kind]) - 1)
        dup += unknown
        details.append(f"series {src.series_uid[-12:]}: CT {n_ct}/{src.slices}, "
                       + ", ".join(f"{k.upper()} revisions {sorted(v)}" for k, v in found.items())
                       + (f", {unknown} unexpected objects" if unknown else ""))
    return lost, dup, details


def model_version(models_dir: Path) -> str:
    return str(json.loads((models_dir / "manifest.json").read_text())["version"])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--seed", type=int, default=int(time.time()) % 100000)
    ap.add_argument("--models", default=os.environ.get("HEXNODE_TEST_MODELS", str(REPO / "models")))
    ap.add_argument("--workdir", default=str(REPO / "bench" / "output" / "chaos"))
    ap.add_argument("--run-timeout", type=float, default=240.0, help="seconds per run before it counts as stuck")
    ap.add_argument("--phases", default=",".join(PHASES), help="cycle through these kill phases")
    args = ap.parse_args(argv)
    models_dir = Path(args.models).resolve()
    version = model_version(models_dir)
    workdir = Path(args.workdir).resolve()
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    rng = random.Random(args.seed)
    phases = [p for p in args.phases.split(",") if p]
    bad = set(phases) - set(PHASES)
    if bad:
        ap.error(f"unknown phases {sorted(bad)}; known: {PHASES}")
    print(f"chaos: {args.runs} runs, seed {args.seed}, models {version}, work dir {workdir}", flush=True)
    stack = ChaosStack(workdir=workdir, stable_seconds=3.0, orthanc_stable_age=1, models_dir=str(models_dir))
    sources: list[Source] = []
    t_all = time.monotonic()
    try:
        stack.start()
        probe = Probe(stack)
        for run in range(args.runs):
            phase = phases[run % len(phases)]
            log, src = one_run(stack, probe, rng, run, phase, args.seed, workdir, args.run_timeout)
            sources.append(src)
            print(f"run {run:2d}: kill -9 {log.target:<6} ({log.phase:<7}) at [{log.killed_at}] "
                  f"→ settled in {log.seconds:5.1f} s" + ("; " + "; ".join(log.notes) if log.notes else ""),
                  flush=True)
        # let anything late (Orthanc retries, reclaimed leases) finish before counting
        wait_until(lambda: not probe.busy(), args.run_timeout, 0.5)
        time.sleep(3.0)
        lost, dup, details = count(stack, sources, version)
        for line in details:
            print("  " + line)
        probe.close()
    finally:
        stack.stop()
    print(f"total {time.monotonic() - t_all:.0f} s; logs in {workdir / 'logs'}")
    print(f"runs={args.runs} series={len(sources)} lost={lost} duplicated={dup}", flush=True)
    return 0 if lost == 0 and dup == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
