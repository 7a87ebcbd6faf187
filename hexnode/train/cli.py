"""`hexnode train`: cases → split by patient → U-Net → CNN → features → LightGBM → calibration → manifest.

This module turns the arguments into a `Plan` and dispatches: `--refit WORKDIR` refits the fusion
stage from saved features (`fit`), `--resume WORKDIR` continues a stopped run with its own
arguments, anything else is a new run (`run`). The splits are in `splits`, the per-case work in
`stages`, the manifest in `export`, the campaign (`--init-from`) in `campaign`.
"""

from __future__ import annotations

import argparse
import json
import logging
import pickle
from pathlib import Path

from hexnode.runtime import setup_logging

# Plan and Record are re-exported here: the work dirs of runs before the split pickled them as
# hexnode.train.cli.Plan / .Record, and `--refit` / `--resume` on those dirs unpickles them by that name.
from hexnode.train.state import Plan, Record  # noqa: F401

log = logging.getLogger("hexnode.train")

# U-Net emphasis on hypodense blood (the blend-sign cap the models missed: recall 0.23 with 3x / 30 %).
# Pilot, 150 training cases, 6 min each, 80 fresh cases: 3x / 30 % -> 8x / 45 % raised the recall of
# blend caps 0.27 -> 0.33 and of swirl foci 0.63 -> 0.70, dense blood 0.97 both, IoU 0.808 / 0.806.
HYPO_WEIGHT = 8.0
HYPO_SHARE = 0.45
# --quick trains by steps, not seconds, so its models (and the tests on them) do not depend on how
# loaded the machine is: with 40 s the step count varied with the load, and some runs left too few
# cases with a predicted mask to fit the fusion ("no usable feature").
QUICK_SEG_STEPS = 160
QUICK_CNN_STEPS = 60


def plan_of(args: argparse.Namespace) -> Plan:
    quick = bool(args.quick)
    return Plan(
        quick=quick,
        seg_seconds=float(getattr(args, "seg_seconds", 0) or (40 if quick else 900)),
        cnn_seconds=float(getattr(args, "cnn_seconds", 0) or (8 if quick else 150)),
        seg_steps=QUICK_SEG_STEPS if quick and not getattr(args, "seg_seconds", 0) else 0,
        cnn_steps=QUICK_CNN_STEPS if quick and not getattr(args, "cnn_seconds", 0) else 0,
        width=8,  # 12 segments marginally better but costs 2.6x at inference on CPU (bench/models.py)
        seg_hypo_weight=HYPO_WEIGHT,
        seg_hypo_share=HYPO_SHARE,
        k_features=30 if quick else 60,
        workers=int(getattr(args, "workers", 0) or 2),
    )


def run_train(args: argparse.Namespace) -> int:
    setup_logging(logging.INFO)
    from hexnode.train.run import RESUMED_ARGS, train

    if getattr(args, "site", None):
        from hexnode.train.site import run_site_train

        return run_site_train(args)
    if getattr(args, "refit", None):
        from hexnode.train.fit import finish

        with open(Path(args.refit) / "features.pkl", "rb") as fh:
            finish(Path(args.out), pickle.load(fh))
        return 0
    if getattr(args, "restage", None):
        return restage_and_refit(args)
    if getattr(args, "resume", None):
        # the same run, continued: its own arguments, its own work dir
        saved = json.loads((Path(args.resume) / "args.json").read_text())
        for key in RESUMED_ARGS:
            setattr(args, key, saved.get(key))
        args.workdir = args.resume
        log.info("resuming the run in %s", args.resume)
    return train(args, plan_of(args))


def restage_and_refit(args: argparse.Namespace) -> int:
    """`--restage MODELS`: the fusion stage refitted on what the node's inference computes today
    (hexnode.train.restage), the networks kept."""
    import time

    from hexnode.models.registry import load_manifest
    from hexnode.train.fit import finish
    from hexnode.train.restage import CaseJob, extra_jobs, refit_state, stage_all, training_jobs

    if not args.workdir or not args.synth:
        raise SystemExit("--restage needs --synth N --seed S (the training run's) and --workdir (the case cache)")
    manifest = load_manifest(args.restage, verify=True).data
    work = Path(args.workdir)
    t = time.monotonic()
    jobs = training_jobs(args.seed, args.synth)
    test_n = int(getattr(args, "test_synth", 0) or 0)
    extra_n = int(getattr(args, "extra_synth", 0) or 0)
    if test_n:
        if args.test_seed == args.seed:
            raise SystemExit("--test-seed must differ from the training --seed")
        jobs = [j for j in jobs if j.split != "test"] + [CaseJob("test", args.test_seed, i) for i in range(test_n)]
    if extra_n:
        if args.extra_seed in (args.seed, args.test_seed if test_n else None):
            raise SystemExit("--extra-seed must differ from the training --seed and the --test-seed")
        jobs += extra_jobs(args.extra_seed, extra_n)
    staged = stage_all(Path(args.restage), jobs, work / "cases", workers=args.workers)
    state = refit_state(staged, manifest, time.monotonic() - t)
    if test_n:
        state["splits"] = dict(state["splits"], test=test_n)
        state["desc"]["source"] += f"; test figures on {test_n} cases of seed {args.test_seed}"
    if extra_n:
        state["splits"] = dict(state["splits"], fusion=len(state["fus"]), val=len(state["val"]))
        state["desc"]["source"] += (f"; fusion and calibration also on {extra_n} cases of seed {args.extra_seed} "
                                    "(never seen by the networks)")
    with open(work / "features.pkl", "wb") as fh:
        pickle.dump(state, fh)
    finish(Path(args.out), state)
    return 0
