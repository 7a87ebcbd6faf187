"""Peak RSS of a worker analysing a 600-slice thin head CT (target ≤ 1.5 GB, issue 37; docs/architecture.md §10).

Writes a synthetic thin series (hexnode.synth, 600 × 512², 0.625-1.25 mm) once under
bench/output/memory/, then runs the worker's own code path in a fresh process — Models.load (ONNX
sessions), `hexnode.pipeline.run.produce` (load volume → segment → features → predict → SEG/SR/SC) and
the DICOM encoding the worker writes to the spool — and reads that process' peak RSS
(VmHWM: ru_maxrss would do, but Linux carries it across exec, so a child of the process that just
generated the series started at that process' 1.6 GB), the seconds of each stage and the RSS sampled every 10 ms per stage. The same
process' RSS right after loading the models, and right after loading the volume, are printed as the
references, so the figure for the series itself is visible.

`--baseline DIR` (a directory holding another version's `hexnode` package, e.g.
`git archive main hexnode | tar -x -C DIR`) first runs that version on the same series in its own
process: before and after in one run, and the result-identity check — the SEG/SR/SC compared element
by element with UIDs and dates masked and pixel data byte for byte (tests/result_identity.py), plus
the key slice and the prediction.

Usage: python bench/memory.py [--slices 600] [--models DIR] [--baseline DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
TARGET_MB = 1500.0  # issue 37: 600 slices within 1.5 GB

CHILD = r"""
import json, sys, time
from pathlib import Path
sys.path.append(sys.argv[3])  # tests/: result_identity

def status_mb(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1]) / 1024.0
    return 0.0
def rss_mb():
    return status_mb("VmRSS:")
def maxrss_mb():
    return status_mb("VmHWM:")  # this process image's own peak, unlike ru_maxrss

paths = sorted(Path(sys.argv[1]).glob("*.dcm"))
import threading
import hexnode.pipeline.run as P
import hexnode.report as R
from hexnode.models.analyser import Models
models = Models.load(Path(sys.argv[2]), ["CPUExecutionProvider"])
after_load = rss_mb()
peak_load = maxrss_mb()

# which stage holds the memory: label the running stage, sample VmRSS every 50 ms
stage = ["other"]
stage_peak = {}
# the process' high-water mark when each stage ends: sampling can miss a spike shorter than 10 ms,
# the kernel's high-water mark cannot, so the first stage after which it reaches the peak is the one
high_water = []
def wrap(obj, name, label):
    f = getattr(obj, name)
    def g(*a, **k):
        prev, stage[0] = stage[0], label
        try:
            return f(*a, **k)
        finally:
            stage[0] = prev
            high_water.append((label, maxrss_mb()))
    setattr(obj, name, g)
import hexnode.models.brain as B
import hexnode.models.headcheck as H
import hexnode.report.outline as O
after_volume = [0.0]
def wrap_load():
    f = P.load_volume
    def g(*a, **k):
        prev, stage[0] = stage[0], "load volume"
        try:
            v = f(*a, **k)
            after_volume[0] = rss_mb()  # the reference: models + the loaded HU volume and headers
            return v
        finally:
            stage[0] = prev
            high_water.append(("load volume", maxrss_mb()))
    P.load_volume = g
wrap_load()
import hexnode.models.analyser as MP
for obj, name, label in ((MP, "intracranial", "cavity"), (MP, "check_head", "head check"),
                         (MP, "predict_mask", "segmentation: U-Net"), (MP, "gate_mask", "segmentation: gate"),
                         (MP, "clean_mask", "segmentation: post-processing"),
                         (models.radiomics, "extract", "radiomics"), (MP.F, "context_features", "context features"),
                         (models, "cnn_outputs", "cnn features"), (R, "build_seg", "SEG build"),
                         (R, "key_slice_roi", "key slice ROI"), (R, "build_sr", "SR build"), (R, "build_sc", "SC build"),
                         (P, "key_slice_of", "key slice")):
    if hasattr(obj, name):
        wrap(obj, name, label)
done = threading.Event()
def sample():
    while not done.wait(0.01):
        label = stage[0]
        stage_peak[label] = max(stage_peak.get(label, 0.0), rss_mb())
threading.Thread(target=sample, daemon=True).start()
t = time.perf_counter()
produced = P.produce(paths, models)
stage[0] = "encode"
sizes = [len(P.encode(ds)) for ds in produced.datasets]
high_water.append(("encode", maxrss_mb()))
seconds = time.perf_counter() - t
done.set()
import hashlib
import hexnode
from result_identity import canonical
Path(sys.argv[4]).write_text(json.dumps({
    "code": str(Path(hexnode.__file__).parent),
    "objects": [list(canonical(ds)) for ds in produced.datasets],
    "key": None if produced.key is None else [produced.key.index, hashlib.sha256(produced.key.hu.tobytes()).hexdigest(),
                                              hashlib.sha256(produced.key.mask.tobytes()).hexdigest()],
    "prediction": None if produced.prediction is None else [produced.prediction.volume_ml, produced.prediction.probability],
}))
print(json.dumps({"code": str(Path(hexnode.__file__).parent), "slices": len(paths), "after_load_mb": after_load, "after_volume_mb": after_volume[0], "peak_after_load_mb": peak_load,
                  "peak_mb": maxrss_mb(),
                  "seconds": seconds, "analysed": produced.analysed, "reason": produced.reason,
                  "shape": produced.shape, "outputs_mb": sum(sizes) / 2**20, "timings": produced.timings, "stage_peak_mb": stage_peak,
                  "high_water_mb": high_water,
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


def run_child(paths: list[Path], models: str, out: Path, label: str, code: Path | None) -> dict[str, Any] | None:
    """One fresh worker process on the series; `code`: a checkout whose hexnode it imports instead."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEXNODE_")}
    if code is not None:
        env["PYTHONPATH"] = str(code)
    objects = out / f"objects-{label}.json"
    proc = subprocess.run([sys.executable, "-c", CHILD, str(paths[0].parent), str(Path(models).resolve()),
                           str(REPO / "tests"), str(objects)], capture_output=True, text=True, env=env,
                          cwd=code or REPO)  # `python -c` puts the working directory first on sys.path
    if proc.returncode != 0:
        print(proc.stderr[-4000:], file=sys.stderr)
        return None
    r: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    r["objects"] = json.loads(objects.read_text())
    return r


def show(label: str, r: dict[str, Any]) -> None:
    print(f"-- {label}: hexnode from {r['code']}")
    print(f"series: {r['slices']} slices, volume {r['shape']}, "
          f"{'analysed' if r['analysed'] else 'NOT analysed: ' + str(r['reason'])}, {r['seconds']:.1f} s")
    print("stages: " + ", ".join(f"{k} {v:.2f} s" for k, v in r["timings"].items()))
    print("sampled RSS peak per stage: " + ", ".join(f"{k} {v:.0f} MB" for k, v in r["stage_peak_mb"].items()))
    # the stage during which the process reached each new high-water mark
    marks, last = [], r.get("peak_after_load_mb", 0.0)
    for label, mb in r.get("high_water_mb", []):
        if mb > last + 1:
            marks.append(f"{label} {mb:.0f} MB")
            last = mb
    print("high-water mark first reached in: " + ", ".join(marks))
    if r.get("mask_ml") is not None:
        print(f"segmented volume {r['mask_ml']:.1f} ml (radiomics and CNN work on the mask's bounding box)")
    print(f"RSS after loading the models (reference):             {r['after_load_mb']:.0f} MB")
    print(f"RSS holding the models and the loaded volume (reference): {r['after_volume_mb']:.0f} MB")
    print(f"peak RSS of the worker process:            {r['peak_mb']:.0f} MB "
          f"({r['peak_mb'] / TARGET_MB:.2f} × the {TARGET_MB / 1000:.1f} GB target; "
          f"{r['peak_mb'] - r['after_volume_mb']:.0f} MB above holding the volume)")


def identical(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """What differs between two runs' results, UIDs and dates masked ([] when nothing)."""
    oa, ob = a["objects"], b["objects"]
    out = []
    if oa["prediction"] != ob["prediction"]:
        out.append(f"prediction {oa['prediction']} != {ob['prediction']}")
    if oa["key"] != ob["key"]:
        out.append("key slice differs")
    if len(oa["objects"]) != len(ob["objects"]):
        out.append(f"{len(oa['objects'])} objects != {len(ob['objects'])}")
    for i, (x, y) in enumerate(zip(oa["objects"], ob["objects"], strict=False)):
        diff = next((f"{p[:160]} != {q[:160]}" for p, q in zip(x, y, strict=False) if p != q), None)
        if diff is None and len(x) != len(y):
            diff = f"{len(x)} elements != {len(y)}"
        if diff is not None:
            out.append(f"object {i}: {diff}")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--slices", type=int, default=600)
    ap.add_argument("--seed", type=int, default=600)
    ap.add_argument("--models", default=os.environ.get("HEXNODE_TEST_MODELS", str(REPO / "models")))
    ap.add_argument("--workdir", default=str(REPO / "bench" / "output" / "memory"))
    ap.add_argument("--baseline", type=Path, default=None,
                    help="a directory holding another version's hexnode package (e.g. `git archive main hexnode | "
                         "tar -x -C DIR`): run it first on the same series, then compare the results")
    args = ap.parse_args(argv)
    out = Path(args.workdir)
    out.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(REPO))
    paths = make_series(out, args.slices, args.seed)
    base = None
    if args.baseline is not None:
        base = run_child(paths, args.models, out, "baseline", args.baseline.resolve())
        if base is None:
            return 1
        show("baseline", base)
    r = run_child(paths, args.models, out, "current", None)
    if r is None:
        return 1
    show("this checkout", r)
    status = 0 if r["peak_mb"] <= TARGET_MB else 2
    if base is not None:
        diffs = identical(base, r)
        print(f"peak RSS {base['peak_mb']:.0f} MB -> {r['peak_mb']:.0f} MB; analyse {base['timings'].get('analyse', 0):.1f} s"
              f" -> {r['timings'].get('analyse', 0):.1f} s; report {base['timings'].get('report', 0):.1f} s -> "
              f"{r['timings'].get('report', 0):.1f} s")
        n = len(r["objects"]["objects"])
        print("result identity (SEG/SR/SC, UIDs and dates masked, pixel data exact; key slice; prediction): "
              + ("IDENTICAL" if not diffs else "DIFFERENT"), f"({n} objects)")
        for d in diffs:
            print("  " + d)
        if diffs:
            status = 3
    print(f"peak_rss_mb={r['peak_mb']:.0f} target_mb={TARGET_MB:.0f} slices={r['slices']}")
    return status


if __name__ == "__main__":
    sys.exit(main())
