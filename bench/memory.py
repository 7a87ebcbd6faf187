"""Peak RSS of a worker analysing a 600-slice thin head CT (target ≤ 2 GB, docs/architecture.md §10).

Writes a synthetic thin series (hexnode.synth, 600 × 512², 0.625-1.25 mm) once under
bench/output/memory/, then runs the worker's own code path in a fresh process — Models.load (ONNX
sessions), `hexnode.pipeline.run.produce` (load volume → segment → features → predict → SEG/SR/SC) and
the DICOM encoding the worker writes to the spool — and reads that process' peak RSS
(getrusage ru_maxrss). The same process' RSS right after loading the models is printed as the
reference, so the figure for the series itself is visible.

Usage: python bench/memory.py [--slices 600] [--models DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TARGET_MB = 2048.0

CHILD = r"""
import json, resource, sys, time
from pathlib import Path

def rss_mb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return 0.0

paths = sorted(Path(sys.argv[1]).glob("*.dcm"))
import threading
import hexnode.pipeline.run as P
import hexnode.report as R
from hexnode.models.pipeline import Models
models = Models.load(Path(sys.argv[2]), ["CPUExecutionProvider"])
after_load = rss_mb()
peak_load = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0

# which stage holds the memory: label the running stage, sample VmRSS every 50 ms
stage = ["other"]
stage_peak = {}
def wrap(obj, name, label):
    f = getattr(obj, name)
    def g(*a, **k):
        prev, stage[0] = stage[0], label
        try:
            return f(*a, **k)
        finally:
            stage[0] = prev
    setattr(obj, name, g)
wrap(P, "load_volume", "load volume")
import hexnode.models.pipeline as MP
wrap(MP, "predict_mask", "segmentation: U-Net")
wrap(MP, "clean_mask", "segmentation: post-processing")
wrap(models.radiomics, "extract", "radiomics")
wrap(MP.F, "context_features", "context features")
wrap(models, "cnn_outputs", "cnn features")
wrap(R, "build_results", "SEG/SR/SC build")
done = threading.Event()
def sample():
    while not done.wait(0.05):
        label = stage[0]
        stage_peak[label] = max(stage_peak.get(label, 0.0), rss_mb())
threading.Thread(target=sample, daemon=True).start()
t = time.perf_counter()
produced = P.produce(paths, models)
stage[0] = "encode"
sizes = [len(P.encode(ds)) for ds in produced.datasets]
seconds = time.perf_counter() - t
done.set()
print(json.dumps({"slices": len(paths), "after_load_mb": after_load, "peak_after_load_mb": peak_load,
                  "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
                  "seconds": seconds, "analysed": produced.analysed, "reason": produced.reason,
                  "shape": produced.shape, "outputs_mb": sum(sizes) / 2**20, "timings": produced.timings, "stage_peak_mb": stage_peak,
                  "mask_ml": produced.prediction.volume_ml if produced.prediction else None}))
"""


def make_series(out: Path, slices: int, seed: int) -> list[Path]:
    marker = out / "done.json"
    if marker.exists() and json.loads(marker.read_text()).get("slices") == slices:
        return sorted((out / "series").glob("*.dcm"))
    from hexnode.synth.dicom import write_case
    from hexnode.synth.phantom import generate_case

    t = time.perf_counter()
    case = generate_case(seed, 0, thin=True, n_slices=slices)
    paths = write_case(case, out)
    marker.write_text(json.dumps({"slices": slices, "volume_ml": case.truth.volume_ml}))
    print(f"wrote {len(paths)} slices of {case.geometry.slice_thickness_mm:g} mm in {time.perf_counter() - t:.0f} s",
          flush=True)
    return paths


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--slices", type=int, default=600)
    ap.add_argument("--seed", type=int, default=600)
    ap.add_argument("--models", default=os.environ.get("HEXNODE_TEST_MODELS", str(REPO / "models")))
    ap.add_argument("--workdir", default=str(REPO / "bench" / "output" / "memory"))
    args = ap.parse_args(argv)
    out = Path(args.workdir)
    out.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(REPO))
    paths = make_series(out, args.slices, args.seed)
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEXNODE_")}
    proc = subprocess.run([sys.executable, "-c", CHILD, str(paths[0].parent), str(Path(args.models).resolve())],
                          capture_output=True, text=True, env=env, cwd=REPO)
    if proc.returncode != 0:
        print(proc.stderr[-4000:], file=sys.stderr)
        return 1
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"series: {r['slices']} slices, volume {r['shape']}, "
          f"{'analysed' if r['analysed'] else 'NOT analysed: ' + str(r['reason'])}, {r['seconds']:.1f} s")
    print("stages: " + ", ".join(f"{k} {v:.1f} s" for k, v in r["timings"].items()))
    print("sampled RSS peak per stage: " + ", ".join(f"{k} {v:.0f} MB" for k, v in r["stage_peak_mb"].items()))
    if r.get("mask_ml") is not None:
        print(f"segmented volume {r['mask_ml']:.1f} ml (radiomics and CNN work on the mask's bounding box)")
    print(f"RSS after loading the models (reference): {r['after_load_mb']:.0f} MB")
    print(f"peak RSS of the worker process:            {r['peak_mb']:.0f} MB "
          f"({r['peak_mb'] / TARGET_MB:.2f} × the 2 GB target; "
          f"{r['peak_mb'] - r['after_load_mb']:.0f} MB above the reference)")
    print(f"peak_rss_mb={r['peak_mb']:.0f} target_mb={TARGET_MB:.0f} slices={r['slices']}")
    return 0 if r["peak_mb"] <= TARGET_MB else 2


if __name__ == "__main__":
    sys.exit(main())
