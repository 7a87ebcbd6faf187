"""Latency of the node: last CT instance received by hexnode → SEG+SR+SC stored in Orthanc, excluding
the series-completion (stable) wait, per stage; 32 × 512² synthetic head NCCT.

Real processes on loopback (Debian Orthanc with the auto-routing script, hexnode serve/worker/send),
as in `hexnode demo`. The reference measured in the same run is the offline pipeline on the same
series (`produce`: load + models + report, in this process, no network or database), so the ratio
says what the node's plumbing (database, queue, spool, C-STORE back) adds.

    .venv/bin/python bench/latency.py [--runs 3] [--workdir bench/output/latency]

Target (docs/architecture.md §10): ≤ 10 s on 2 CPU cores, ≤ 2 s on a GPU.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from hexnode.devtools.demo import DemoStack  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--workdir", default=str(REPO / "bench" / "output" / "latency"))
    ap.add_argument("--seed", type=int, default=21)
    args = ap.parse_args()

    from hexnode.config import Config
    from hexnode.models.pipeline import Models
    from hexnode.pipeline.run import produce
    from hexnode.synth.dicom import write_case
    from hexnode.synth.phantom import generate_case

    work = Path(args.workdir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    cases = []
    for i in range(args.runs):
        case = generate_case(args.seed, i)
        d = work / f"case{i}"
        paths = write_case(case, d)
        cases.append((paths, json.loads((d / "truth.json").read_text()), case.hu.shape))
    print(f"series: {args.runs} × {cases[0][2][0]} slices of {cases[0][2][1]}×{cases[0][2][2]}")

    # reference: the same pipeline offline, in this process (models loaded once, like a worker)
    models = Models.load(Config().models_path)
    produce(cases[0][0], models)  # warm-up (first ONNX run allocates)
    ref = []
    for paths, _, _ in cases:
        t = time.perf_counter()
        produce(paths, models)
        ref.append(time.perf_counter() - t)
    del models

    stack = DemoStack(workdir=work / "stack", stable_seconds=10.0, orthanc_stable_age=1).start()
    stages: dict[str, list[float]] = defaultdict(list)
    latency = []
    try:
        for paths, truth, _ in cases:
            stack.send(paths)
            stack.wait_results(truth["study_instance_uid"], 300)
            seen = datetime.now(UTC).replace(tzinfo=None)
            times = dict(stack.stage_times(truth["series_instance_uid"]))
            completion = times.get("completion wait (stable / provably whole)", 0.0)
            from sqlalchemy import select

            from hexnode.config import load_config
            from hexnode.store.db import Series, open_store

            store = open_store(load_config(stack.config_path, env={}).database_url, create=False)
            with store.transaction() as s:
                last = s.execute(select(Series.last_instance_at).where(
                    Series.series_uid == truth["series_instance_uid"])).scalar_one()
            store.dispose()
            # ≤ 0.25 s polling granularity on "seen"
            latency.append((seen - last).total_seconds() - completion)
            for name, seconds in times.items():
                stages[name].append(seconds)
    finally:
        stack.stop()

    print("\nper stage (median over runs, seconds):")
    for name, values in stages.items():
        print(f"  {name:<50}{statistics.median(values):7.2f}")
    node = statistics.median(latency)
    offline = statistics.median(ref)
    print(f"\nlast instance received → SEG+SR+SC in Orthanc, excluding the stable wait: {node:.2f} s (median of {len(latency)}; target ≤ 10 s on 2 CPU cores)")
    print(f"reference, offline pipeline on the same series in this process: {offline:.2f} s")
    print(f"ratio node / offline: {node / offline:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
