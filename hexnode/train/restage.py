"""Stage 2 again on a committed model set: cases through the node's own inference (`Models.segment`,
`Models.features`: the intracranial gate, the skull-base rule, the smallest-lesion floor, only the
radiomics features the boosters read), cached per case, for refitting the fusion and the
calibration on exactly what inference computes (`hexnode train --restage`), and for the held-out
figures of `bench/signs.py`.

Each case's cache file holds its `Record` (features and segmentation figures as `hexnode train`
keeps them), the generator's truth (markers and signs) and the CT, predicted mask and true mask
cropped around the blood, so that measures added later can be computed without re-running the
U-Net.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import pickle
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

# Models is imported here, not in _init: a Pool re-spawns workers whose initializer fails, forever
from hexnode.models import features as F
from hexnode.models.analyser import Models
from hexnode.train import metrics as M
from hexnode.train.state import Record

log = logging.getLogger(__name__)

#: the crop kept beside the features: the signs look at most 12 mm beyond the blood
CROP_MARGIN_MM = 20.0


@dataclass(frozen=True)
class CaseJob:
    split: str
    seed: int
    index: int
    hard: bool = False

    @property
    def case_id(self) -> str:
        return f"synth-{self.seed}-{self.index}{'-hard' if self.hard else ''}"


@dataclass
class Staged:
    rec: Record
    truth: dict[str, Any]  # he_label, he_probability, markers, signs, location, hematoma_hu, hypodense_hu
    box: tuple[int, int, int]  # crop origin (z, y, x) in the case's volume
    spacing: tuple[float, float, float]
    hu: np.ndarray  # int16 crop
    pred: np.ndarray  # uint8 crop of the predicted (node's) mask
    gt: np.ndarray  # uint8 crop of the true mask
    seconds: float


_W: dict[str, Any] = {}


def _init(models_dir: str, cache: str) -> None:
    from hexnode.runtime import route_warnings

    route_warnings()
    _W["models"] = Models.load(models_dir, threads=1)
    _W["cache"] = Path(cache)


def stage_case(job: CaseJob) -> Staged:
    """One synthetic case through the node's segmentation and features (cached)."""
    from hexnode.models.segment import volume_ml
    from hexnode.synth.phantom import generate_case

    cached: Path = _W["cache"] / f"{job.case_id}.pkl"
    if cached.exists():
        with open(cached, "rb") as fh:
            staged: Staged = pickle.load(fh)
        staged.rec.split = job.split  # the case is the same whichever split asks for it
        return staged
    t = time.perf_counter()
    models = _W["models"]
    c = generate_case(job.seed, job.index, hard=job.hard)
    huf = np.asarray(c.hu, np.float32)
    gt = (np.asarray(c.mask) > 0).astype(np.uint8)
    spacing = tuple(float(s) for s in c.spacing)
    pred = models.segment(huf, spacing)
    rec = Record(job.case_id, job.split, int(c.truth.he_label), float(c.truth.he_probability), volume_ml(gt, spacing))
    rec.seg = {"iou": M.iou(gt, pred), "dice": M.dice(gt, pred), "slice_ious": M.slice_ious(gt, pred),
               "vol_true": rec.volume_ml, "vol_pred": volume_ml(pred, spacing)}
    if pred.any():
        rec.feats = models.features(huf, pred, spacing, {})
        ref = pred | gt
    else:
        rec.feats = {"volume_ml": 0.0}
        ref = gt
    box = F.crop_box(ref, spacing, CROP_MARGIN_MM) if ref.any() else (slice(0, 0),) * 3
    tr = c.truth
    truth = {"he_label": bool(tr.he_label), "he_probability": float(tr.he_probability), "markers": dict(tr.markers),
             "signs": dict(tr.signs), "location": tr.location, "hematoma_hu": tr.hematoma_hu,
             "hypodense_hu": tr.hypodense_hu}
    staged = Staged(rec, truth, tuple(int(s.start) for s in box), spacing,  # type: ignore[arg-type]
                    np.asarray(c.hu[box], np.int16), pred[box].astype(np.uint8), gt[box],
                    time.perf_counter() - t)
    tmp = cached.with_suffix(".tmp")
    with open(tmp, "wb") as fh:
        pickle.dump(staged, fh)
    os.replace(tmp, cached)
    return staged


def stage_all(models_dir: Path, jobs: Iterable[CaseJob], cache: Path, workers: int = 2) -> list[Staged]:
    """Every job through `stage_case` in `workers` processes (one ONNX/BLAS thread each)."""
    cache.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    ctx = mp.get_context("spawn")  # never fork: a parent with threads (ONNX Runtime, a test run) can deadlock its children
    out: list[Staged] = []
    jobs = list(jobs)
    t0 = time.monotonic()
    with ctx.Pool(workers, initializer=_init, initargs=(str(models_dir), str(cache)), maxtasksperchild=50) as pool:
        for i, s in enumerate(pool.imap(stage_case, jobs, chunksize=1), start=1):
            out.append(s)
            if i % 25 == 0:
                log.info("staged %d/%d cases, %.0f s", i, len(jobs), time.monotonic() - t0)
    return out


def training_jobs(seed: int, synth: int) -> list[CaseJob]:
    """The fusion, val and test cases of a `hexnode train --synth N --seed S` run (same splits:
    the U-Net and the CNN never saw them)."""
    import argparse

    from hexnode.train.splits import jobs

    args = argparse.Namespace(data=None, synth=synth, seed=seed, normal=0)
    out = []
    for split, case_id, _loader in jobs(args, n_quick=synth)[0]:
        if split == "segcnn":
            continue
        parts = case_id.split("-")
        out.append(CaseJob(split, int(parts[1]), int(parts[2]), hard=case_id.endswith("-hard")))
    return out


def extra_jobs(seed: int, n: int) -> list[CaseJob]:
    """`n` more fusion and val cases from `seed`, a seed the networks never trained on, split between
    the two in the training run's proportions by a hash of the case id (every tenth --hard, as in
    training): more cases for the booster and the calibration than the training run's split holds."""
    import hashlib

    from hexnode.train.splits import SPLITS

    cases = [CaseJob("", seed, i, hard=i % 10 == 9) for i in range(n)]
    cases.sort(key=lambda j: hashlib.sha256(j.case_id.encode()).hexdigest())
    n_fusion = round(n * SPLITS["fusion"] / (SPLITS["fusion"] + SPLITS["val"]))
    return [CaseJob("fusion" if r < n_fusion else "val", j.seed, j.index, j.hard) for r, j in enumerate(cases)]


def with_signs(staged: Staged) -> Record:
    """The case's Record with the signs measured on its cached crop: the crop holds the signs'
    whole reach (`CROP_MARGIN_MM` > `signs.MARGIN_MM`), so the values are those of the volume."""
    from hexnode.models.signs import measure_signs

    rec = staged.rec
    feats = {k: v for k, v in rec.feats.items() if not k.startswith("sign_")}
    if staged.pred.any():
        feats.update(measure_signs(staged.hu, staged.pred, staged.spacing).features())
    rec.feats = feats
    return rec


def refit_state(staged: list[Staged], manifest: dict[str, Any], seconds: float) -> dict[str, Any]:
    """What `hexnode train --refit WORKDIR` reads from WORKDIR/features.pkl: the fusion, val and
    test records of the training seed, re-measured by the node's inference (`stage_case`), and the
    committed networks' plan and figures from their `manifest`."""
    from hexnode.train.state import Plan

    recs = [with_signs(s) for s in staged]
    tr = manifest["training"]
    plan = Plan(quick=False, seg_seconds=float(tr["seg_seconds"]), cnn_seconds=float(tr["cnn_seconds"]),
                width=int(tr["seg_width"]), seg_hypo_weight=float(tr.get("seg_hypo_weight", 3.0)),
                seg_hypo_share=float(tr.get("seg_hypo_share", 0.3)), k_features=60, workers=2)
    desc = {k: v for k, v in manifest["training_data"].items() if k != "splits"}
    # a set refitted before says so already: the description starts again from the training run's
    desc["source"] = desc["source"].split("; fusion and calibration refitted")[0]
    desc["source"] += ("; fusion and calibration refitted on the committed U-Net and CNN through the node's own "
                       "inference (intracranial gate, skull-base rule, 0.1 ml floor), with the NCCT signs")
    files = manifest["files"]
    return {
        "fus": [r for r in recs if r.split == "fusion"], "val": [r for r in recs if r.split == "val"],
        "test": [r for r in recs if r.split == "test"], "desc": desc, "plan": plan,
        "seed": int(manifest["version"].split("-s")[1].split("-")[0]) if "-s" in manifest["version"] else 0,
        "seg_diff": files["seg.onnx"]["max_abs_diff_vs_torch"], "cnn_diff": files["cnn.onnx"]["max_abs_diff_vs_torch"],
        "t_start_offset": float(tr["seconds"]) + seconds, "splits": manifest["training_data"]["splits"],
    }
