"""Which training case goes to which split, by a hash of its id (a patient never crosses splits).

- `segcnn`: trains the segmentation U-Net and the HE CNN (ground-truth masks);
- `fusion`: trains LightGBM on radiomics + CNN embedding + context features, measured on the
  U-Net's predicted masks exactly as at inference (the first models were fitted on ground-truth
  masks like the seeds' traced ROIs, and lost most of their AUC to that train/test shift); neither
  network saw these cases;
- `val`: the full pipeline (predicted masks): early stopping, Platt calibration, thresholds;
- `test`: the full pipeline, touched once for the manifest's figures.
"""

from __future__ import annotations

import argparse
import hashlib
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from hexnode.train.data import NORMAL_INDEX_OFFSET, TrainCase, read_labels, site_case, synth_case

SPLITS = {"segcnn": 0.35, "fusion": 0.38, "val": 0.16, "test": 0.11}

#: (split, case id, a loader that builds the case in the worker process)
Job = tuple[str, str, Callable[[], TrainCase]]


def jobs(args: argparse.Namespace, n_quick: int) -> tuple[list[Job], dict[str, Any]]:
    """Every case of the run with its split (`segcnn` first), and the `training_data` description
    for the manifest."""
    ids: list[tuple[str, Callable[[], TrainCase]]] = []
    if args.data:
        root = Path(args.data)
        for cid, lab in sorted(read_labels(root).items()):
            ids.append((cid, partial(site_case, root, cid, lab)))
        desc = {"synthetic": False, "source": f"site data folder ({len(ids)} cases)"}
    else:
        n = args.synth or n_quick
        for i in range(n):
            hard = i % 10 == 9  # a tenth are the generator's hard cases (< 3 ml, motion, streaks)
            ids.append((f"synth-{args.seed}-{i}{'-hard' if hard else ''}", partial(synth_case, args.seed, i, hard=hard)))
        n_normal = int(getattr(args, "normal", 0) or 0)
        desc = {
            "synthetic": True,
            "source": f"hexnode synthetic generator (hexnode.synth.phantom), seed {args.seed}, {n} cases, every 10th --hard"
                      + (f", plus {n_normal} heads without blood for the U-Net" if n_normal else ""),
        }
    # rank by a hash of the id, then cut by the split fractions: deterministic per patient, and
    # even a handful of cases (--quick) fills every split
    order = sorted(ids, key=lambda t: hashlib.sha256(t[0].encode()).hexdigest())
    out: list[Job] = []
    cum = np.cumsum(list(SPLITS.values())) * len(order)
    for r, (cid, loader) in enumerate(order):
        split = list(SPLITS)[int(np.searchsorted(cum, r, side="right"))]
        out.append((split, cid, loader))
    if not args.data:
        # normal heads teach the U-Net only (no blood: nothing for HE); they never enter a held-out split
        for i in range(n_normal):
            out.append(("segcnn", f"synth-{args.seed}-{NORMAL_INDEX_OFFSET + i}-normal", partial(synth_case, args.seed, i, normal=True)))
    out.sort(key=lambda j: list(SPLITS).index(j[0]))  # segcnn first
    return out, desc
