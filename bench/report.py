"""Time to build SEG + SR + SC for a 32 x 512^2 and a 300 x 512^2 series (targets 1 s and 5 s).

Sources are headers only (read with stop_before_pixels), as the worker passes them. Reference,
measured in the same run: the same SR built with highdicom's stock ImageLibrary (every
descriptor repeated under every image), which hexnode.report.library replaces. Also printed:
the time pydicom takes to write the three objects (not part of the build).

    .venv/bin/python bench/report.py [--repeat 3] [--slices 32 300]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
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
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    # Includes the synthetic series (hu float32) the bench itself holds.
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
