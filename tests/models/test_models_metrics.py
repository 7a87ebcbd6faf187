"""Evaluation metrics on hand-made cases (fast, no models needed)."""

from __future__ import annotations

import numpy as np
import pytest

from hexnode.train import metrics as M
from hexnode.train.evaluate import CaseResult, json_line, summarise


def _blob(shape=(6, 40, 40), centre=(3, 20, 20), r=8):
    z, y, x = np.ogrid[: shape[0], : shape[1], : shape[2]]
    return (((y - centre[1]) ** 2 + (x - centre[2]) ** 2) < r * r) & (np.abs(z - centre[0]) <= 1)


def test_perfect_mask_gives_iou_one_and_disjoint_gives_zero():
    m = _blob()
    assert M.iou(m, m) == 1.0
    assert M.dice(m, m) == 1.0
    assert M.slice_ious(m, m) == [1.0, 1.0, 1.0]
    other = np.roll(m, 25, axis=2)
    assert M.iou(m, other) == 0.0
    assert M.slice_ious(m, other) == [0.0, 0.0, 0.0]


def test_half_overlap_iou_and_dice_values():
    a = np.zeros((1, 4, 4), bool)
    b = np.zeros((1, 4, 4), bool)
    a[0, :, :2] = True  # 8 px
    b[0, :, 1:3] = True  # 8 px, 4 shared
    assert M.iou(a, b) == pytest.approx(4 / 12)
    assert M.dice(a, b) == pytest.approx(8 / 16)


def test_auc_perfect_reversed_and_shuffled():
    rng = np.random.default_rng(0)
    y = rng.random(4000) < 0.25
    s = y + rng.normal(0, 0.01, y.size)
    assert M.auc(y, s) == 1.0
    assert M.auc(y, -s) == 0.0
    assert abs(M.auc(rng.permutation(y), s) - 0.5) < 0.03
    assert M.auc([0, 1, 0, 1], [0.5, 0.5, 0.5, 0.5]) == 0.5  # ties count one half


def test_auc_matches_scikit_learn():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(1)
    y = rng.random(300) < 0.3
    s = np.round(y * 0.7 + rng.normal(0, 0.5, y.size), 1)  # with ties
    assert M.auc(y, s) == pytest.approx(roc_auc_score(y, s))


def test_ece_calibrated_vs_miscalibrated():
    rng = np.random.default_rng(2)
    p = rng.random(20000)
    y = rng.random(p.size) < p
    assert M.ece(y, p) < 0.02
    assert M.ece(y, np.clip(p + 0.3, 0, 1)) > 0.2


def test_thresholds_youden_and_sensitivity():
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    s = np.array([0.1, 0.2, 0.3, 0.6, 0.4, 0.7, 0.8, 0.9])
    assert M.youden_threshold(y, s) == pytest.approx(0.7)  # sens 0.75, spec 1.0
    t = M.sensitivity_threshold(y, s, 0.9)
    assert M.binary_stats(y, s, t).sensitivity >= 0.9
    assert t == pytest.approx(0.4)


def test_bootstrap_ci_brackets_the_mean():
    rng = np.random.default_rng(3)
    v = rng.normal(0.8, 0.05, 200)
    e = M.mean_ci(v.tolist())
    assert e.lo < e.value < e.hi
    assert e.hi - e.lo < 0.03


def _case(i, label, prob, gt, pred, true_p):
    return CaseResult(f"c{i}", label, true_p, prob, prob, prob, float(gt.sum()), float(pred.sum()),
                      M.iou(gt, pred), M.dice(gt, pred), M.slice_ious(gt, pred))


def test_summarise_hand_made_cases():
    rng = np.random.default_rng(4)
    m = _blob()
    # perfect masks, random labels, scores unrelated to labels: IoU 1 everywhere, AUC near 0.5
    results = []
    for i in range(400):
        lab = int(rng.random() < 0.3)
        results.append(_case(i, lab, float(rng.random()), m, m, float(rng.random())))
    s = summarise(results, threshold=0.5, reps=200)
    assert s["iou_slice"].value == 1.0 and s["iou_patient"].value == 1.0 and s["dice"].value == 1.0
    assert abs(s["auc"].value - 0.5) < 0.08
    assert s["auc"].lo < 0.5 < s["auc"].hi
    last = json_line(s)
    import json

    obj = json.loads(last)
    for k in ("iou_slice", "iou_patient", "dice", "auc", "bayes_auc", "ece", "auc_radiomics", "auc_cnn",
              "auc_volume", "sensitivity", "specificity"):
        assert k in obj
    assert obj["iou_patient"] == 1.0


def test_bayes_ece_is_the_finite_sample_floor():
    # labels drawn from the true probability: its ECE is only sampling noise, and it shrinks with n
    rng = np.random.default_rng(5)
    m = _blob()

    def run(n):
        tp = rng.uniform(0.02, 0.9, n)
        y = (rng.random(n) < tp).astype(int)
        res = [_case(i, int(y[i]), float(np.clip(tp[i] + 0.25, 0, 1)), m, m, float(tp[i])) for i in range(n)]
        return summarise(res, threshold=0.5, reps=50)

    small, large = run(200), run(5000)
    assert small["bayes_ece"].value > large["bayes_ece"].value
    assert large["bayes_ece"].value < 0.03
    assert small["ece"].value > 0.15  # the miscalibrated scores stay far above the floor


def test_marker_score_ablation_only_when_every_case_has_one():
    from dataclasses import replace

    rng = np.random.default_rng(6)
    m = _blob()
    y = (rng.random(300) < 0.3).astype(int)
    res = [_case(i, int(y[i]), 0.5, m, m, 0.3) for i in range(300)]
    assert "auc_markers" not in summarise(res, threshold=0.5, reps=20)  # a model set without a marker score
    res = [replace(r, marker_logit=float(r.label + rng.normal(0, 0.5))) for r in res]
    s = summarise(res, threshold=0.5, reps=20)
    assert s["auc_markers"].value > 0.85


def test_per_case_csv_round_trips_to_the_same_figures(tmp_path):
    from dataclasses import replace

    from hexnode.train.evaluate import read_cases, write_cases

    rng = np.random.default_rng(7)
    m = _blob()
    res = []
    for i in range(60):
        pred = np.roll(m, int(rng.integers(0, 4)), axis=2)
        if i == 3:
            pred = np.zeros_like(m)  # a missed hemorrhage: no slice IoUs of its own but the truth's zeros
        res.append(replace(_case(i, int(rng.random() < 0.4), float(rng.random()), m, pred,
                                 None if i % 2 else float(rng.random())), marker_logit=float(rng.normal())))
    path = tmp_path / "cases.csv"
    write_cases(res, path)
    back = read_cases(path)
    assert [(r.case_id, r.label, r.probability, r.iou, r.slice_ious, r.he_probability, r.marker_logit) for r in back] == \
           [(r.case_id, r.label, r.probability, r.iou, r.slice_ious, r.he_probability, r.marker_logit) for r in res]
    a, b = summarise(res, threshold=0.4, reps=30), summarise(back, threshold=0.4, reps=30)
    for k in ("iou_slice", "iou_patient", "auc", "ece", "sensitivity"):
        assert a[k].value == b[k].value
