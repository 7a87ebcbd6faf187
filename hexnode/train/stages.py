"""The per-case work of a training run, in worker processes: stage 1 (a `segcnn` case's slices
and crop for the U-Net and the CNN) and stage 2 (a held-out case through the full pipeline).

The functions are module level so that multiprocessing can pickle them."""

from __future__ import annotations

import hashlib
import multiprocessing as mp
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from hexnode.models import features as F
from hexnode.models.brain import intracranial
from hexnode.models.segment import MIN_LESION_ML, PostProcessing, postprocess, predict_probability
from hexnode.models.signs import measure_signs
from hexnode.train import metrics as M
from hexnode.train.splits import Job
from hexnode.train.state import Record

POST = PostProcessing(min_lesion_ml=MIN_LESION_ML)

# Per-worker-process resources (extractor, ONNX sessions), set once by the pool initializer so
# that each task does not rebuild them; never used in the parent process.
_G: dict[str, Any] = {}


def _init_worker(params_yaml: str, cache: str, seg_path: str | None, cnn_path: str | None) -> None:
    _G["extractor"] = F.RadiomicsExtractor(Path(params_yaml))
    _G["cache"] = Path(cache)
    if seg_path:
        from hexnode.models.registry import make_session

        _G["seg"] = make_session(Path(seg_path), ["CPUExecutionProvider"], threads=1)
        _G["cnn"] = make_session(Path(cnn_path), ["CPUExecutionProvider"], threads=1) if cnn_path else None


def pool(workers: int, init_args: tuple[Any, ...]) -> Any:
    """`init_args`: (radiomics yaml, stage-2 cache dir, seg.onnx or None, cnn.onnx or None)."""
    # spawned, never forked: stage 2 starts after the networks were trained in this process (torch's
    # and ONNX Runtime's thread pools), and a forked child of a threaded parent can deadlock
    ctx = mp.get_context("spawn")
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # a spawned child reads it before its imports
    return ctx.Pool(workers, initializer=_init_worker, initargs=init_args, maxtasksperchild=50)


def stage1(job: Job) -> Record:
    """A `segcnn` case: its slices for the U-Net and its crop for the CNN (ground-truth mask)."""
    split, case_id, loader = job
    c = loader()
    rec = Record(case_id, split, c.label, c.he_probability, float(c.mask.sum()) * float(np.prod(c.spacing)) / 1000.0)
    # a stable seed (str hash() changes with every interpreter): a resumed run draws the same slices
    rng = np.random.default_rng(int(hashlib.sha256(case_id.encode()).hexdigest()[:8], 16))
    from hexnode.train.seg_train import SliceBank

    bank = SliceBank()
    bank.add_case(c.hu, c.mask, rng)
    rec.slices = (bank.hu, bank.mask)
    if c.mask.any():
        rec.crop = F.cnn_input(c.hu, c.mask, c.spacing)
    return rec


def stage2(job: Job) -> Record:
    """A fusion/val/test case through the full pipeline (predicted mask, then features from it),
    cached per case: a resumed run (`--resume`) does not compute a case twice."""
    split, case_id, loader = job
    cached = _G["cache"] / f"{case_id}.pkl"
    if cached.exists():
        with open(cached, "rb") as fh:
            rec: Record = pickle.load(fh)
        return rec
    c = loader()
    hu, gt, spacing = c.hu.astype(np.float32), c.mask, c.spacing
    rec = Record(case_id, split, c.label, c.he_probability, float(gt.sum()) * float(np.prod(spacing)) / 1000.0)
    if split == "fusion" and not gt.any():
        rec.split = "skip"  # nothing to learn HE from
    else:
        pred = postprocess(predict_probability(_G["seg"], hu), spacing, POST, intracranial(hu, spacing), hu)
        rec.seg = {
            "iou": M.iou(gt, pred), "dice": M.dice(gt, pred), "slice_ious": M.slice_ious(gt, pred),
            "vol_true": rec.volume_ml, "vol_pred": float(pred.sum()) * float(np.prod(spacing)) / 1000.0,
        }
        if pred.any():
            rec.feats = dict(_G["extractor"].extract(hu, pred, spacing))
            rec.feats.update(F.context_features(hu, pred, spacing))
            rec.feats.update(measure_signs(hu, pred, spacing).features())
            x = F.cnn_input(hu, pred, spacing)
            emb, logit = _G["cnn"].run(["embedding", "logit"], {"crop": x})
            rec.feats.update({f"cnn_{i:02d}": float(v) for i, v in enumerate(np.asarray(emb)[0])})
            rec.feats["cnn_logit"] = float(np.asarray(logit).ravel()[0])
        else:
            rec.feats = {"volume_ml": 0.0}
    tmp = cached.with_suffix(".tmp")
    with open(tmp, "wb") as fh:
        pickle.dump(rec, fh)
    os.replace(tmp, cached)
    return rec
