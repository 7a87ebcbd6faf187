"""Time to build SEG + SR + SC for a 32 x 512^2 and a 300 x 512^2 series (targets 1 s and 5 s).

Sources are headers only (read with stop_before_pixels, as the worker passes them). The figures
are printed next to a reference measured in the same run on the same machine: the time
pydicom needs to write the three objects to disk (the unavoidable part) and the time to read
the series' headers.

    .venv/bin/python bench/report.py [--repeat 3]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import pydicom

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from report_helpers import prediction, write_series  # noqa: E402

from hexnode.report import build_results  # noqa: E402

TARGETS = {32: 1.0, 300: 5.0}


def best_of(repeat: int, fn) -> tuple[float, object]:  # type: ignore[no-untyped-def]
    times, result = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return min(times), result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="hexnode-bench-report-"))
    try:
        print(f"{'slices':>6} {'headers s':>9} {'SEG s':>7} {'SR s':>7} {'SC s':>7} {'build s':>8} "
              f"{'write s':>8} {'target s':>8} {'build/target':>12}")
        for n, target in TARGETS.items():
            series = write_series(tmp / f"ct{n}", n=n, size=512)
            read_s, headers = best_of(args.repeat, series.headers)
            pred = prediction(series, notes=("gantry tilt 0.0 degrees",))
            from hexnode.report.sc import build_sc
            from hexnode.report.seg import build_seg
            from hexnode.report.sr import build_sr

            seg_s, seg = best_of(args.repeat, lambda h=headers, s=series, p=pred: build_seg(h, s.mask, p.model))
            sr_s, _ = best_of(args.repeat, lambda h=headers, g=seg, p=pred: build_sr(h, g, p))
            sc_s, _ = best_of(args.repeat, lambda h=headers, s=series, p=pred: build_sc(h, s.hu, s.mask, p))
            build_s, objs = best_of(args.repeat, lambda h=headers, s=series, p=pred: build_results(h, s.hu, s.mask, p))
            out = tmp / f"out{n}"
            out.mkdir()

            def write(objs=objs, out=out) -> None:
                for i, ds in enumerate(objs):  # type: ignore[attr-defined]
                    ds.save_as(out / f"{i}.dcm", enforce_file_format=True)

            write_s, _ = best_of(args.repeat, write)
            print(f"{n:>6} {read_s:>9.3f} {seg_s:>7.3f} {sr_s:>7.3f} {sc_s:>7.3f} {build_s:>8.3f} "
                  f"{write_s:>8.3f} {target:>8.1f} {build_s / target:>12.2f}")
            del headers, series
        print(f"pydicom {pydicom.__version__}; best of {args.repeat}; build = build_results (SEG+SR+SC)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
