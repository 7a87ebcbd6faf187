"""Latency with the shipped settings: last instance received → results delivered, per stage.

hexnode's four stages as processes (`hexnode receive`, `route`, `worker`, `send`) with
`deploy/hexnode.toml` as shipped — only the data folder, the ports and the destination changed
(`stable_seconds` and `study_settle_seconds` 10 s, checks every 0.5 s, worker and sender polling every
0.25 s). dcmtk's `storescu` sends a synthetic 32-slice head NCCT (512², 5 mm) as a scanner or PACS
would; dcmtk's `storescp` is the PACS the results go to. Each run is a new study; the figures are
read from hexnode's database (one clock): last instance (C-STORE time of the newest instance) →
series complete → job started → reported (job done) → delivered (newest outbox row delivered).
Each stage's CPU seconds from sending to delivered (its process tree, /proc) are printed beside
them: what the other stages take from the worker's two cores.

Three kinds of series: `whole` carries Images in Acquisition (0020,1002), so it is provably whole as
soon as the last instance is in; `unproven` leaves it out (completion then needs the contiguous
coverage proof, half the stable time, or the stable time); `held` is provably whole but names no
convolution kernel, so a better (soft-kernel) series of the study could still come: analysed at
once, its answer held until the study settles. The worker's own stages (load, models, report,
write: the job's timings) are printed too.

    .venv/bin/python bench/latency.py [--runs 5] [--kinds whole,unproven,held] [--src PATH --label before]

`--src`: run the stages from another checkout (e.g. a worktree of main, for the figures before a
change) with this checkout's environment. Target (issue 37): ≤ 3 s from the last instance to the
last delivered for the provably whole series on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from hexnode.devtools.net import free_port, wait_port  # noqa: E402

STORESCU, STORESCP = "/usr/bin/storescu", "/usr/bin/storescp"
STAGES = ("receive", "route", "worker", "send")
SPANS = ("last instance → complete", "complete → job started", "job started → reported",
         "reported → delivered", "last instance → delivered")
# Run the stage from `src` instead of the installed (editable) package: the editable finder is
# dropped so that `src` is the one `hexnode` on the path.
LAUNCH = ("import runpy, sys; sys.meta_path[:] = [f for f in sys.meta_path if 'editable' not in repr(f)]; "
          "sys.path.insert(0, {src!r}); sys.argv[0] = 'hexnode'; runpy.run_module('hexnode.cli', run_name='__main__')")


def shipped_config(work: Path, port: int, pacs_port: int) -> Path:
    """deploy/hexnode.toml with the data folder, our port and the destination changed, nothing else."""
    text = (REPO / "deploy" / "hexnode.toml").read_text()
    subs = [(r'(?m)^data_dir = "var"$', f'data_dir = "{work / "data"}"'),
            (r"(?m)^port = 11112$", f"port = {port}"),
            (r'(?m)^ae_title = "ORTHANC"$', 'ae_title = "PACS"'),
            (r"(?m)^port = 4242$", f"port = {pacs_port}"),
            (r"(?m)^min_free_disk_mb = 1024$", "min_free_disk_mb = 256")]
    for pattern, repl in subs:
        text, n = re.subn(pattern, repl, text)
        if n != 1:
            raise SystemExit(f"deploy/hexnode.toml changed: {pattern!r} matched {n} times")
    path = work / "hexnode.toml"
    path.write_text(text)
    return path


def process_times() -> dict[int, tuple[int, float]]:
    """Every process's (parent pid, CPU seconds used so far: user + system), from /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[int, tuple[int, float]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone since listed
            continue
        out[int(entry.name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / tick)
    return out


class Stack:
    def __init__(self, work: Path, src: Path | None) -> None:
        self.work, self.src = work, src
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self) -> Stack:
        shutil.rmtree(self.work, ignore_errors=True)
        (self.work / "logs").mkdir(parents=True)
        (self.work / "pacs").mkdir()
        self.port, pacs_port = free_port(), free_port()
        self.config = shipped_config(self.work, self.port, pacs_port)
        self._spawn("pacs", [STORESCP, "-pm", "+xa", "-aet", "PACS", "-od", str(self.work / "pacs"), str(pacs_port)])
        wait_port(pacs_port, 30, self.procs[-1])
        for stage in STAGES:
            if self.src is None:
                cmd = [sys.executable, "-m", "hexnode.cli"]
            else:
                cmd = [sys.executable, "-c", LAUNCH.format(src=str(self.src))]
            self._spawn(stage, [*cmd, stage, "--config", str(self.config)])
            if stage == "receive":  # it creates the database the others open
                wait_port(self.port, 90, self.procs[-1])
        return self

    def _spawn(self, name: str, cmd: list[str]) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("HEXNODE_")}
        env["PYTHONSAFEPATH"] = "1"
        with open(self.work / "logs" / f"{name}.log", "ab") as log:
            self.procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=self.work,
                                               start_new_session=True))

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    def cpu_seconds(self) -> dict[str, float]:
        """CPU seconds (user + system) used so far by each stage's process and its descendants (the
        receiver's indexer child included), read from /proc: what the stages spend beside the
        worker while a series is analysed."""
        procs = process_times()
        names = {p.pid: name for p, name in zip(self.procs, ("pacs", *STAGES), strict=True)}
        out = dict.fromkeys(names.values(), 0.0)
        for pid, (_, cpu) in procs.items():
            up = pid
            while up > 1 and up not in names:
                up = procs.get(up, (0, 0.0))[0]
            if up in names:
                out[names[up]] += cpu
        return out

    def alive(self) -> None:
        for p in self.procs:
            if p.poll() is not None:
                raise SystemExit(f"{p.args!r} exited with {p.returncode}; logs in {self.work / 'logs'}")

    def send(self, paths: list[Path]) -> None:
        subprocess.run([STORESCU, "-aet", "SCANNER", "-aec", "HEXNODE", "127.0.0.1", str(self.port), *map(str, paths)],
                       check=True, capture_output=True)

    def spans(self, series_uid: str, timeout: float = 180.0) -> dict[str, float]:
        """The stage times of the series once its results are all delivered."""
        from sqlalchemy import select

        from hexnode.store.db import Event, Job, Outbox, Result, Series, open_store

        store = open_store(f"sqlite:///{self.work / 'data' / 'hexnode.sqlite'}", create=False)
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                self.alive()
                # columns, not rows: `--src` checkouts may have an older schema than this one's models
                with store.transaction() as s:
                    series = s.execute(select(Series.id, Series.last_instance_at)
                                       .where(Series.series_uid == series_uid)).first()
                    job = None if series is None else s.execute(
                        select(Job.id, Job.started_at, Job.finished_at, Job.timings)
                        .where(Job.series_id == series[0], Job.state == "done")).first()
                    rows = [] if job is None else s.execute(
                        select(Outbox.delivered_at).join(Result, Result.id == Outbox.result_id)
                        .where(Result.job_id == job[0])).scalars().all()
                    if series is None or job is None or len(rows) < 3 or None in rows:
                        complete = None
                    else:
                        complete = s.execute(select(Event.at).where(
                            Event.entity == "series", Event.entity_id == series[0], Event.to_state == "complete")
                            .order_by(Event.id)).scalars().first()
                if complete is not None and job is not None and series is not None:
                    marks: list[datetime] = [m for m in (series[1], complete, job[1], job[2], max(r for r in rows if r))
                                             if m is not None]
                    steps = [(b - a).total_seconds() for a, b in zip(marks, marks[1:], strict=False)]
                    out = dict(zip(SPANS, [*steps, (marks[-1] - marks[0]).total_seconds()], strict=True))
                    out.update({f"  worker: {k}": float(v) for k, v in (job[3] or {}).items()})
                    return out
                time.sleep(0.2)
        finally:
            store.dispose()
        raise SystemExit(f"series not delivered within {timeout:.0f} s; logs in {self.work / 'logs'}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--kinds", default="whole,unproven,held")
    ap.add_argument("--src", default="", help="run the stages from this checkout (e.g. a worktree of main)")
    ap.add_argument("--label", default="")
    ap.add_argument("--workdir", default=str(REPO / "bench" / "output" / "latency"))
    ap.add_argument("--seed", type=int, default=37)
    args = ap.parse_args()
    for tool in (STORESCU, STORESCP):
        if not Path(tool).exists():
            raise SystemExit(f"{tool} is missing (dcmtk)")

    from hexnode.synth.dicom import write_series
    from hexnode.synth.phantom import generate_case

    work = Path(args.workdir).resolve() / (args.label or "this")
    src = Path(args.src).resolve() if args.src else None
    label = args.label or ("this checkout" if src is None else str(src))
    kinds = [k for k in args.kinds.split(",") if k]
    print(f"{label}: deploy/hexnode.toml as shipped, {args.runs} runs per kind, {os.cpu_count()} CPUs visible")
    table: dict[str, dict[str, float]] = {}
    for kind in kinds:
        stack = Stack(work / kind, src).start()
        runs: list[dict[str, float]] = []
        try:
            for i in range(args.runs + 1):  # the first warms the worker (models, first ONNX run): not counted
                case = generate_case(args.seed, i, n_slices=32)
                drop = {"whole": (), "unproven": ("ImagesInAcquisition",), "held": ("ConvolutionKernel",)}[kind]
                paths = write_series(case, work / "cases" / kind / str(i), drop=drop)
                from pydicom import dcmread

                uid = str(dcmread(paths[0], stop_before_pixels=True).SeriesInstanceUID)
                before = stack.cpu_seconds()
                stack.send(paths)
                spans = stack.spans(uid)
                after = stack.cpu_seconds()
                spans.update({f"  cpu: {k}": after[k] - before[k] for k in after})
                if i:
                    runs.append(spans)
                print(f"  {kind} run {i}{' (warm-up)' if not i else ''}: "
                      + ", ".join(f"{k.split(' → ')[1]} +{spans[k]:.2f}" for k in SPANS[:-1])
                      + f"; total {spans[SPANS[-1]]:.2f} s", flush=True)
                time.sleep(1.0)
        finally:
            stack.stop()
        table[kind] = {name: statistics.median(r[name] for r in runs) for name in runs[0]}
    print(f"\n{label}: median of {args.runs} (seconds)")
    print(f"  {'stage':<28}" + "".join(f"{k:>12}" for k in kinds))
    names = list(SPANS) + sorted({n for k in kinds for n in table[k]} - set(SPANS))
    for name in names:
        print(f"  {name:<28}" + "".join(f"{table[k][name]:12.2f}" if name in table[k] else f"{'':>12}"
                                        for k in kinds))
    if "whole" in table:
        total = table["whole"][SPANS[-1]]
        print(f"\nprovably whole 32-slice series, last instance → last delivered: {total:.2f} s (target ≤ 3 s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
