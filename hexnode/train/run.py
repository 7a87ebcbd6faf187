"""One training run, stage by stage: stage-1 data → U-Net → CNN (both exported to ONNX) → stage 2
(the held-out splits through the full pipeline) → `fit.finish` (fusion, calibration, manifest).

Everything a later `--refit` or `--resume` needs stays in the work dir: args.json, the loops'
checkpoints, the stage-2 cache and features.pkl."""

from __future__ import annotations

import argparse
import json
import logging
import pickle
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from hexnode.models import features as F
from hexnode.train.campaign import campaign_entry, seg_init
from hexnode.train.fit import finish
from hexnode.train.splits import SPLITS, jobs
from hexnode.train.stages import pool, stage1, stage2
from hexnode.train.state import Plan

log = logging.getLogger("hexnode.train")

#: U-Net peak learning rate from scratch, and for a run that continues a campaign (a restart at the
#: full rate would first undo much of what the earlier runs learnt)
SEG_LR = 3e-3
SEG_LR_CONTINUED = 1e-3
#: how often the U-Net and CNN loops write their checkpoint (seconds of training)
CHECKPOINT_SECONDS = 300.0
#: the arguments a resumed run takes from the first one (`--resume WORKDIR` reads WORKDIR/args.json)
RESUMED_ARGS = ("data", "synth", "normal", "seed", "out", "quick", "seg_seconds", "cnn_seconds", "workers", "init_from")


def train(args: argparse.Namespace, plan: Plan) -> int:
    import torch

    from hexnode.train import checkpoint as ckpt
    from hexnode.train import cnn_train, seg_train

    quick = plan.quick
    torch.set_num_threads(2)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="hexnode-train-"))
    work.mkdir(parents=True, exist_ok=True)
    (work / "args.json").write_text(json.dumps({k: getattr(args, k, None) for k in RESUMED_ARGS}, indent=1) + "\n")
    t_start = time.monotonic()
    params = out / "radiomics.yaml"
    params.write_text(F.RADIOMICS_YAML_QUICK if quick else F.RADIOMICS_YAML)

    all_jobs, desc = jobs(args, n_quick=20)
    log.info("%d cases: %s", len(all_jobs), {s: sum(j[0] == s for j in all_jobs) for s in SPLITS})
    with pool(plan.workers, (str(params), str(work), None, None)) as p:
        recs = list(p.imap(stage1, [j for j in all_jobs if j[0] == "segcnn"], chunksize=1))
    t_data = time.monotonic() - t_start
    log.info("stage 1 (U-Net and CNN data) %.0f s", t_data)
    init = Path(args.init_from) if getattr(args, "init_from", None) else None
    every = ckpt.Every(seconds=CHECKPOINT_SECONDS)

    # --- segmentation -----------------------------------------------------------------------
    bank = seg_train.SliceBank()
    for r in recs:
        if r.slices:
            bank.hu.extend(r.slices[0])
            bank.mask.extend(r.slices[1])
            r.slices = None
    log.info("segmentation: %d slices", len(bank))
    seg_weights, frozen_bn = seg_init(init, plan.width)
    seg, seg_steps = seg_train.train_seg(
        bank, seconds=plan.seg_seconds, steps=plan.seg_steps, width=plan.width, seed=args.seed,
        hypo_weight=plan.seg_hypo_weight, hypo_share=plan.seg_hypo_share, checkpoint=work / "seg.ckpt", every=every,
        init=seg_weights, frozen_bn=frozen_bn, lr=SEG_LR if seg_weights is None else SEG_LR_CONTINUED)
    sample = np.stack([bank.hu[i] for i in range(min(4, len(bank)))])
    seg_diff = seg_train.export_seg(seg, out / "seg.onnx", sample)
    print(f"seg.onnx max |onnxruntime - torch| = {seg_diff:.3g}", flush=True)
    del bank

    # --- CNN ------------------------------------------------------------------------------------
    cnn_recs = [r for r in recs if r.crop is not None]
    xc = np.concatenate([r.crop for r in cnn_recs])
    yc = np.array([r.label for r in cnn_recs])
    cnn, cnn_steps = cnn_train.train_cnn(
        xc, yc, seconds=plan.cnn_seconds, steps=plan.cnn_steps, seed=args.seed, checkpoint=work / "cnn.ckpt",
        every=every, init=torch.load(init / "cnn.pt", weights_only=True) if init and (init / "cnn.pt").exists() else None)
    cnn_diff = cnn_train.export_cnn(cnn, out / "cnn.onnx", xc[:8])
    print(f"cnn.onnx max |onnxruntime - torch| = {cnn_diff:.3g}", flush=True)
    # --- full pipeline (predicted masks) on fusion, val and test -----------------------------------
    from hexnode.models.registry import sha256_file

    # the cache is valid for these two networks only
    cache = work / f"stage2-{sha256_file(out / 'seg.onnx')[:12]}-{sha256_file(out / 'cnn.onnx')[:12]}"
    cache.mkdir(exist_ok=True)
    t = time.monotonic()
    with pool(plan.workers, (str(params), str(cache), str(out / "seg.onnx"), str(out / "cnn.onnx"))) as p:
        held_all = list(p.imap(stage2, [j for j in all_jobs if j[0] != "segcnn"], chunksize=1))
    held = [r for r in held_all if r.split != "skip"]
    log.info("fusion/val/test full pipeline on %d cases: %.0f s", len(held), time.monotonic() - t)
    fus = [r for r in held if r.split == "fusion"]
    val = [r for r in held if r.split == "val"]
    test = [r for r in held if r.split == "test"]

    state = {"fus": fus, "val": val, "test": test, "desc": desc, "plan": plan, "seed": args.seed,
             "seg_diff": seg_diff, "cnn_diff": cnn_diff, "t_start_offset": time.monotonic() - t_start,
             "splits": {s: sum(r.split == s for r in recs + held_all) for s in SPLITS},
             "campaign": campaign_entry(args, init, seg_steps, cnn_steps, seg.state_dict(), cnn.state_dict(), work,
                                        frozen_bn=frozen_bn)}
    for r in fus + val + test:
        r.crop = None
    # kept so that the fusion stage can be refitted (`--refit WORKDIR`) without new images
    with open(work / "features.pkl", "wb") as fh:
        pickle.dump(state, fh)
    finish(out, state)
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)
    return 0
