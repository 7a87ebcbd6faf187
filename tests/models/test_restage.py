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


def test_extra_cases_split_like_training_and_never_touch_the_networks_seed() -> None:
    from hexnode.train.restage import extra_jobs, training_jobs
    from hexnode.train.splits import SPLITS

    jobs = extra_jobs(2, 200)
    assert extra_jobs(2, 200) == jobs  # deterministic: a rerun hits the same cache files
    assert sorted(j.index for j in jobs) == list(range(200)) and {j.seed for j in jobs} == {2}
    fusion = sum(j.split == "fusion" for j in jobs)
    assert {j.split for j in jobs} == {"fusion", "val"}
    assert fusion == round(200 * SPLITS["fusion"] / (SPLITS["fusion"] + SPLITS["val"]))
    assert sum(j.hard for j in jobs) == 20 and all(j.hard == (j.index % 10 == 9) for j in jobs)
    # the case ids never collide with the training seed's: the networks saw none of them
    assert not {j.case_id for j in jobs} & {j.case_id for j in training_jobs(1, 40)}


def test_the_model_card_states_the_test_ece_with_its_interval_and_floor() -> None:
    import json

    from hexnode.train.card import render

    m = json.loads((MODELS / "manifest.json").read_text())
    m["metrics"]["test"].update(ece=0.0312, ece_ci=[0.0211, 0.0394], bayes_ece=0.0268)
    line = next(x for x in render(m).splitlines() if x.startswith("- ECE"))
    assert line.startswith("- ECE 0.031 [0.021, 0.039] (10 bins; the true probability's on the same cases 0.027)")
    m["metrics"]["test"]["ece_ci"] = [None, None]  # one test case: no interval (NaN stored as null)
    assert next(x for x in render(m).splitlines() if x.startswith("- ECE")).startswith("- ECE 0.031 (10 bins")
    del m["metrics"]["test"]["ece_ci"]  # a manifest from before the interval still renders
    assert next(x for x in render(m).splitlines() if x.startswith("- ECE")).startswith("- ECE 0.031 (10 bins")


def test_a_refit_of_a_refitted_set_describes_its_data_once() -> None:
    import json

    from hexnode.train.restage import refit_state

    m = json.loads((MODELS / "manifest.json").read_text())
    m["training_data"]["source"] = ("generator, seed 1, 800 cases; fusion and calibration refitted on the committed "
                                    "U-Net and CNN through the node's own inference; test figures on 300 cases of seed 61")
    source = refit_state([], m, 0.0)["desc"]["source"]
    assert source.startswith("generator, seed 1, 800 cases; fusion and calibration refitted")
    assert source.count("fusion and calibration refitted") == 1 and "300 cases of seed 61" not in source
