"""The image checks (hexnode.models.headcheck): false refusals, true refusals and their cost.

Time: the 32-slice demo series (bench/models.py's), the checks alone against the whole analysis
(Models.analyse: cavity, checks, U-Net, features; the reference) in the same run, median of
`--repeats`; the target is 0.3 s added on 2 cores.

Refusals: synthetic series of held-out seed 4207, every kind the generator writes (straight,
tilted 20-25 degrees, mixed 4 x 14 + 7 x 14 mm, normal, hard, follow-up, thin) and the plain
look-alikes (dense sinuses, calcified falx): each must pass (0 false refusals is the target);
the refused look-alikes (QA phantom, contrast head, chest, abdomen): each must be refused with
its reason. Only the cavity and the checks run (they come before the U-Net). Per kind: the count,
the refusals, and the margins (smallest enclosed region and fill, smallest brain share, highest
sinus HU). `--real DIR` adds every case folder under DIR (hexnode.pipeline.load, one row each).

    .venv/bin/python bench/headcheck.py [--repeats 5] [--counts straight=40,tilted=40,...] [--workers 2]
        [--real /work/realct/cases]
"""

from __future__ import annotations

import argparse
import time
from multiprocessing import Pool
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SEED = 4207
HEADS = ("straight", "tilted", "mixed", "normal", "hard", "followup", "thin")
COUNTS = {"straight": 40, "tilted": 40, "mixed": 30, "normal": 40, "hard": 30, "followup": 20, "thin": 10,
          "sinus-clot": 10, "calcified-falx": 10, "qa-phantom": 10, "contrast": 10, "chest": 5, "abdomen": 5}


def _series(kind: str, i: int) -> tuple[np.ndarray, tuple[float, float, float], Any]:
    from hexnode.synth.lookalikes import generate_lookalike
    from hexnode.synth.phantom import generate_case, generate_followup

    mixed = ((4.0, 14), (7.0, 14)) if kind == "mixed" else None
    tilt = 20.0 + 5.0 * (i % 2) if kind == "tilted" else 0.0
    if kind in HEADS:
        c = generate_case(SEED, 1000 * HEADS.index(kind) + i, tilt_deg=tilt, hard=kind == "hard",
                          normal=kind == "normal", thin=kind == "thin", mixed=mixed)
        if kind == "followup":
            c = generate_followup(c)
    else:
        c = generate_lookalike(kind, SEED, i)
    ext = c.geometry.extents_mm() if c.geometry.table_z_mm is not None else None
    return c.hu.astype(np.float32), c.spacing, ext


def _job(job: tuple[str, int]) -> dict[str, Any]:
    from hexnode.models.brain import intracranial
    from hexnode.models.headcheck import check_head

    kind, i = job
    hu, spacing, ext = _series(kind, i)
    t = time.perf_counter()
    cav = intracranial(hu, spacing, extents=ext)
    seen = check_head(hu, spacing, cav)
    return {"kind": kind, "i": i, "problem": seen.problem, "enclosed": seen.enclosed_cm2, "fill": seen.fill,
            "brain": seen.brain_share, "sinus": seen.sinus_hu, "slices": hu.shape[0],
            "seconds": time.perf_counter() - t}


def timing(repeats: int, models_dir: str) -> None:
    from hexnode.models.analyser import Models
    from hexnode.models.brain import intracranial
    from hexnode.models.headcheck import check_head
    from hexnode.synth.phantom import generate_case

    models = Models.load(models_dir)
    case = next(c for c in (generate_case(2024, i) for i in range(50)) if c.hu.shape[0] == 32)
    hu = case.hu.astype(np.float32)
    models.analyse(hu, case.spacing)  # warm-up
    cav = intracranial(hu, case.spacing)
    checks, totals = [], []
    for _ in range(repeats):  # interleaved
        t = time.perf_counter()
        check_head(hu, case.spacing, cav)
        checks.append(time.perf_counter() - t)
        t = time.perf_counter()
        models.analyse(hu, case.spacing)
        totals.append(time.perf_counter() - t)
    c, a = float(np.median(checks)), float(np.median(totals))
    print(f"32 x 512^2: the checks {c:.3f} s; the whole analysis (reference, checks included) {a:.2f} s; "
          f"the checks are {c / a:.1%} of it; target <= 0.30 s added{'  OK' if c <= 0.3 else '  OVER'}")


def refusals(counts: dict[str, int], workers: int) -> None:
    from hexnode.synth.lookalikes import REFUSED

    jobs = [(k, i) for k, n in counts.items() for i in range(n)]
    t0 = time.perf_counter()
    if workers > 1:
        with Pool(workers) as pool:
            rows = pool.map(_job, jobs, chunksize=1)
    else:
        rows = [_job(j) for j in jobs]
    print(f"\n{len(rows)} series in {time.perf_counter() - t0:.0f} s")
    print(f"{'kind':15s} {'n':>4s} {'refused':>8s} {'min cm2':>8s} {'min fill':>9s} {'min brain':>10s} "
          f"{'sinus HU min-max':>17s}  expected")
    false_refusals = 0
    for kind in counts:
        sel = [r for r in rows if r["kind"] == kind]
        if not sel:
            continue
        refused = [r for r in sel if r["problem"]]
        sinus = [r["sinus"] for r in sel if r["sinus"] is not None]
        expect = "refused" if kind in REFUSED else "analysed"
        print(f"{kind:15s} {len(sel):4d} {len(refused):8d} {min(r['enclosed'] for r in sel):8.0f} "
              f"{min(r['fill'] for r in sel):9.2f} {min(r['brain'] for r in sel):10.2f} "
              f"{(f'{min(sinus):.0f}-{max(sinus):.0f}' if sinus else '-'):>17s}  {expect}")
        if kind in REFUSED:
            missed = [r for r in sel if not r["problem"]]
            for r in missed:
                print(f"    NOT refused: {kind}-{r['i']}")
            reasons = {str(r["problem"]).split(":")[0] for r in refused}
            print(f"    reasons: {', '.join(sorted(reasons))}")
        else:
            false_refusals += len(refused)
            for r in refused:
                print(f"    FALSE refusal: {kind}-{r['i']}: {r['problem']}")
    heads = sum(n for k, n in counts.items() if k not in REFUSED)
    print(f"false refusals: {false_refusals} of {heads} non-contrast heads (target 0)")


def real(folder: Path) -> None:
    """Every CT series of every case folder under `folder`: loaded as the worker loads it, checked."""
    from hexnode.models.brain import coverage_problem, intracranial
    from hexnode.models.headcheck import check_head
    from hexnode.pipeline.load import load_volume
    from hexnode.pipeline.offline import group_series
    from hexnode.pipeline.run import header_words
    from hexnode.series.header import VolumeError, read_header

    print(f"\nreal cases under {folder}")
    for case in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.endswith(".ref")):
        groups, _ = group_series(case)
        for paths in groups.values():
            frames = int(read_header(paths[0]).get("NumberOfFrames", 1) or 1)
            if len(paths) * frames < 5:  # a localizer, a dose page, a stray slice
                continue
            name = case.name
            try:
                vol = load_volume(paths)
            except VolumeError as exc:
                print(f"{name:36s} {len(paths):4d} not loaded: {exc.reason}")
                continue
            desc = str(vol.headers[0].get("SeriesDescription", ""))[:20]
            t = time.perf_counter()
            cav = intracranial(vol.hu, vol.spacing, head_up=vol.head_up, extents=vol.extents)
            seen = check_head(vol.hu, vol.spacing, cav, head_up=vol.head_up, hints=header_words(vol.headers[0]))
            cov = coverage_problem(cav, head_up=vol.head_up)
            print(f"{name:36s} {len(paths):4d} {desc:20s} "
                  f"{seen.problem or ('passes' + ('; then ' + cov if cov else ''))} "
                  f"[{seen.summary()}] {time.perf_counter() - t:.2f} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--counts", default="", help="kind=n,... (default: " +
                    ",".join(f"{k}={v}" for k, v in COUNTS.items()) + ")")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--no-timing", action="store_true")
    ap.add_argument("--real", type=Path, help="a folder of real case folders (one series or study each)")
    ap.add_argument("--models", default=str(REPO / "models"))
    args = ap.parse_args()
    counts = dict(COUNTS)
    for part in filter(None, args.counts.split(",")):
        k, _, v = part.partition("=")
        if k not in counts:
            raise SystemExit(f"unknown kind {k!r}")
        counts[k] = int(v)
    if not args.no_timing:
        timing(args.repeats, args.models)
    refusals({k: v for k, v in counts.items() if v > 0}, args.workers)
    if args.real:
        real(args.real)


if __name__ == "__main__":
    main()
