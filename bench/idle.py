"""What the stages cost while nothing arrives: CPU of each idle stage process, with the shipped settings.

The four stages as `bench/latency.py` starts them (`deploy/hexnode.toml` as shipped, only the data
folder, ports and destination changed), nothing sent: each stage's CPU seconds (its process tree,
/proc) over `--seconds` after a settling pause, as a share of one core. The polling and completion
intervals are chosen against this (issue 37: the completion check every 0.25 s; the worker and the
sender wait on doorbells rather than poll faster), so a change to them should be measured here.
A reference is measured in the same run: a process sleeping in 0.25 s steps, the cheapest poller.

    .venv/bin/python bench/idle.py [--seconds 30]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))

from latency import Stack, process_times  # noqa: E402

REFERENCE = "import time\nwhile True:\n    time.sleep(0.25)\n"


def cpu_of(pid: int) -> float:
    return process_times()[pid][1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--settle", type=float, default=10.0, help="seconds after start-up before measuring")
    ap.add_argument("--workdir", default=str(REPO / "bench" / "output" / "idle"))
    args = ap.parse_args()
    stack = Stack(Path(args.workdir).resolve(), None).start()
    ref = subprocess.Popen([sys.executable, "-c", REFERENCE])
    try:
        time.sleep(args.settle)  # model loading, the worker's warm-up report, schema checks
        stack.alive()
        before, ref0 = stack.cpu_seconds(), cpu_of(ref.pid)
        t0 = time.monotonic()
        time.sleep(args.seconds)
        stack.alive()
        after, ref1 = stack.cpu_seconds(), cpu_of(ref.pid)
        wall = time.monotonic() - t0
    finally:
        ref.kill()
        stack.stop()
    print(f"idle stages, deploy/hexnode.toml as shipped, {wall:.1f} s measured after {args.settle:.0f} s settling")
    print(f"  {'process':<34}{'CPU s':>8}{'% of a core':>14}")
    for name, cpu in ((k, after[k] - before[k]) for k in after):
        print(f"  {name:<34}{cpu:8.2f}{100 * cpu / wall:13.2f} %")
    total = sum(after[k] - before[k] for k in after if k != "pacs")
    print(f"  {'hexnode, all four stages':<34}{total:8.2f}{100 * total / wall:13.2f} %")
    print(f"  {'reference: sleep(0.25) loop':<34}{ref1 - ref0:8.2f}{100 * (ref1 - ref0) / wall:13.2f} %")
    return 0


if __name__ == "__main__":
    sys.exit(main())
