"""`hexnode train --restage` and bench/signs.py stage synthetic cases through the node's own
inference in worker processes (hexnode.train.restage); the workers load the analyser by import, so
a moved module must fail here, not in a two-hour refit."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hexnode.train.restage import CaseJob, stage_all, with_signs

MODELS = Path(__file__).resolve().parents[2] / "models"


def test_a_case_is_staged_cached_and_read_back(tmp_path: Path) -> None:
    job = CaseJob("heldout", 61, 3)
    first = stage_all(MODELS, [job], tmp_path, workers=1)
    assert [s.rec.case_id for s in first] == [job.case_id]
    staged = first[0]
    assert (tmp_path / f"{job.case_id}.pkl").exists()
    assert staged.hu.dtype == np.int16 and staged.hu.shape == staged.pred.shape == staged.gt.shape
    assert staged.rec.seg["iou"] > 0.5  # the node's U-Net found this case's bleed
    assert staged.rec.feats["volume_ml"] > 0
    rec = with_signs(staged)
    assert {f"sign_{k}" for k in ("blend", "island", "swirl", "black_hole", "hypodensity", "irregular")} <= set(rec.feats)
    again = stage_all(MODELS, [job], tmp_path, workers=1)  # from the cache: the same crop, no U-Net pass
    assert np.array_equal(again[0].pred, staged.pred) and again[0].seconds == staged.seconds
