"""Synthetic head-NCCT generator speed: seconds per 32 x 512^2 series and per thin series.

Target (issue 3): <= 2 s per 32-slice series on 2 CPU cores, so thousands of training cases are
practical.  The reference measured in the same run is the floor any generator pays: drawing and
correlating 32 x 512^2 Gaussian noise and casting it to int16.

    .venv/bin/python bench/synth.py [--cases 4] [--thin 1] [--write]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

from hexnode.synth.phantom import generate_case


def reference_noise(nz: int = 32, n: int = 512) -> float:
    t0 = time.perf_counter()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((nz, n, n), dtype=np.float32)
    x = ndimage.gaussian_filter(x, (0, 1.3, 1.3))
    np.rint(x * 5).astype(np.int16)
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--cases", type=int, default=4)
    ap.add_argument("--thin", type=int, default=1, help="thin series to time (0 to skip)")
    ap.add_argument("--write", action="store_true", help="also time writing the DICOM series")
    ap.add_argument("--seed", type=int, default=1000)
    args = ap.parse_args()

    ref = min(reference_noise() for _ in range(3))
    per, cpu = [], []
    for i in range(args.cases):
        t0, c0 = time.perf_counter(), time.process_time()
        case = generate_case(args.seed, i, n_slices=32)
        per.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
        assert case.hu.shape == (32, 512, 512)
    med = statistics.median(per)
    print(f"reference (noise 32x512^2 + correlate + int16): {ref:.3f} s")
    print(f"synth 32x512^2 series: median {med:.3f} s wall over {args.cases} (min {min(per):.3f}, "
          f"max {max(per):.3f}), {statistics.median(cpu):.3f} s CPU; {med / ref:.1f}x reference; "
          f"target <= 2 s -> {'OK' if med <= 2.0 else 'SLOW (see the reference: is the machine loaded?)'}")
    if args.write:
        from hexnode.synth.dicom import write_case

        case = generate_case(args.seed, 0, n_slices=32)
        with tempfile.TemporaryDirectory() as d:
            t0 = time.perf_counter()
            write_case(case, Path(d) / "case")
            print(f"write 32-slice series + truth + mask: {time.perf_counter() - t0:.3f} s")
    for i in range(args.thin):
        t0 = time.perf_counter()
        case = generate_case(args.seed, 100 + i, thin=True)
        dt = time.perf_counter() - t0
        nz = case.hu.shape[0]
        print(f"synth thin series ({nz} x 512^2, {case.geometry.slice_thickness_mm:g} mm): {dt:.3f} s "
              f"= {dt / nz * 32:.3f} s per 32 slices")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
