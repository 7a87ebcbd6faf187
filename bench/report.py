"""Time to build SEG + SR + SC for a 32 x 512^2 and a 300 x 512^2 series (targets 1 s and 5 s).

Sources are headers only (read with stop_before_pixels), as the worker passes them. Reference,
measured in the same run: the same SR built with highdicom's stock ImageLibrary (every
descriptor repeated under every image), which hexnode.report.library replaces. Also printed:
the time pydicom takes to write the three objects (not part of the build).

The worker's first report in a process also pays for what highdicom and Pillow load once (0.5 s
of IOD tables): the first and second build at 32 slices in a fresh process are printed without
and with `hexnode.report.warm.warm_up` (what the worker runs at start), against the 0.3 s target
of issue 37.

    .venv/bin/python bench/report.py [--repeat 3] [--slices 32 300]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import highdicom as hd
import pydicom

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from report_helpers import prediction, write_series  # noqa: E402

from hexnode.report import build_results, codes  # noqa: E402
from hexnode.report.sc import build_sc  # noqa: E402
from hexnode.report.seg import build_seg  # noqa: E402
from hexnode.report.sr import build_sr, document, measurement_group, observation_context  # noqa: E402

TARGETS = {32: 1.0, 300: 5.0}
FIRST_TARGET_S = 0.3  # issue 37: the report build at 32 slices

FRESH = r"""
import json, sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from report_helpers import MODEL, prediction, write_series
from hexnode.report import build_results
series = write_series(Path(sys.argv[2]), n=32, size=512)
headers, pred = series.headers(), prediction(series)
out = {}
if sys.argv[3] == "warm":
    from hexnode.report.warm import warm_up
    t = time.perf_counter(); warm_up(MODEL); out["warm-up"] = time.perf_counter() - t
for k in ("first", "second"):
    t = time.perf_counter(); build_results(headers, series.hu, series.mask, pred); out[k] = time.perf_counter() - t
print(json.dumps(out))
"""


def fresh_process(tmp: Path, mode: str) -> dict[str, float]:
    """Seconds of the first and second 32-slice build in a new process (`mode` "warm": after warm_up)."""
    tests = Path(__file__).resolve().parents[1] / "tests"
    proc = subprocess.run([sys.executable, "-c", FRESH, str(tests), str(tmp / f"fresh-{mode}"), mode],
                          capture_output=True, text=True, check=True)
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def best_of(repeat: int, fn: Callable[[], Any]) -> tuple[float, Any]:
    times, result = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return min(times), result


def stock_sr(headers: list[pydicom.Dataset], seg: pydicom.Dataset, pred: Any) -> Any:
    """The reference: TID 1500 with highdicom's own ImageLibrary (referenced_images=...)."""
    report = hd.sr.MeasurementReport(
        observation_context=observation_context(pred.model),
        procedure_reported=codes.PROCEDURE_REPORTED,
        imaging_measurements=[measurement_group(seg, str(headers[0].SeriesInstanceUID), pred, 0)],
        title=codes.TITLE,
        referenced_images=headers,
    )
    return document(headers, report, pred.model, revision=0, not_analysed=False, extra_evidence=[seg])


def measure(n: int, repeat: int, tmp: Path) -> None:
    target = TARGETS.get(n, 5.0 * n / 300)
    series = write_series(tmp / f"ct{n}", n=n, size=512)
    headers = series.headers()
    hu, mask = series.hu, series.mask
    pred = prediction(series)
    seg_s, seg = best_of(repeat, lambda: build_seg(headers, mask, pred.model))
    sr_s, _ = best_of(repeat, lambda: build_sr(headers, seg, pred))
    sc_s, _ = best_of(repeat, lambda: build_sc(headers, hu, mask, pred))
    build_s, objs = best_of(repeat, lambda: build_results(headers, hu, mask, pred))
    stock_s, _ = best_of(1 if n > 100 else repeat, lambda: stock_sr(headers, seg, pred))
    out = tmp / f"out{n}"
    out.mkdir()

    def write() -> None:
        for i, ds in enumerate(objs):
            ds.save_as(out / f"{i}.dcm", enforce_file_format=True)

    write_s, _ = best_of(repeat, write)
    print(f"{n:>6} {seg_s:>6.3f} {sr_s:>6.3f} {sc_s:>6.3f} {build_s:>8.3f} {target:>8.1f} "
          f"{build_s / target:>12.2f} {stock_s:>10.3f} {stock_s / sr_s:>13.1f} {write_s:>7.3f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--slices", type=int, nargs="+", default=list(TARGETS))
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="hexnode-bench-report-"))
    print(f"CPU cores visible: {os.cpu_count()}; pydicom {pydicom.__version__}, highdicom {hd.__version__}; "
          f"best of {args.repeat}")
    print(f"{'slices':>6} {'SEG s':>6} {'SR s':>6} {'SC s':>6} {'build s':>8} {'target s':>8} {'build/target':>12} "
          f"{'stock SR s':>10} {'stock/ours SR':>13} {'write s':>7}")
    try:
        for n in args.slices:
            measure(n, args.repeat, tmp)
        print(f"first report of a fresh process, 32 slices (target {FIRST_TARGET_S} s):")
        for mode, what in (("cold", "no warm-up (reference)"), ("warm", "after warm_up, as the worker starts")):
            r = fresh_process(tmp, mode)
            extra = f", warm-up itself {r['warm-up']:.3f} s" if "warm-up" in r else ""
            print(f"  {what:<36} first {r['first']:.3f} s ({r['first'] / FIRST_TARGET_S:.2f} x target), "
                  f"second {r['second']:.3f} s{extra}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    # Includes the synthetic series (hu float32) the bench itself holds.
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
