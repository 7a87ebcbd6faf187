"""From extracted features to the fitted model set: the marker score, the fusion boosters, Platt
calibration, thresholds, the test split's figures, then the manifest (`export`)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from hexnode.train import metrics as M
from hexnode.train.state import Record


def matrix(recs: list[Record], names: list[str]) -> np.ndarray:
    return np.array([[r.feats.get(n, np.nan) for n in names] for r in recs], np.float64)


def finish(out: Path, state: dict[str, Any]) -> None:
    """Fusion, calibration, thresholds, test figures and the manifest, from extracted features
    (`state`: what `run.train` keeps in WORKDIR/features.pkl)."""
    from hexnode.train import fusion_train
    from hexnode.train.campaign import write_campaign
    from hexnode.train.export import ModelSet, write_model_set

    t_fit = time.monotonic()
    fus, val, test, plan = state["fus"], state["val"], state["test"], state["plan"]
    # --- marker score (its out-of-fold logit on the fusion split is one of the booster's inputs) --
    y_tr = np.array([r.label for r in fus])
    y_va = np.array([r.label for r in val])
    marker_names = [n for n in fusion_train.MARKER_FEATURES if any(n in r.feats for r in fus)]
    markers, oof = fusion_train.fit_marker_score(matrix(fus, marker_names), y_tr, marker_names, seed=state["seed"])
    (out / "markers.json").write_text(markers.to_json())
    for r, v in zip(fus, oof, strict=True):
        r.feats["marker_logit"] = float(v)
    for r in val + test:
        if r.feats.get("volume_ml", 0.0) > 0:  # as at inference: no mask, no features
            r.feats["marker_logit"] = markers.logit(r.feats)
    # --- fusion -------------------------------------------------------------------------------
    names = sorted({k for r in fus for k in r.feats})
    radiomics_names = [n for n in names if n.startswith(("original_", "log-", "wavelet-"))]
    if not radiomics_names:  # e.g. every fusion mask failed extraction: keep the booster buildable
        radiomics_names = [n for n in names if n.startswith("inside_")]
    cnn_names = [n for n in names if n.startswith("cnn_") and n != "cnn_logit"]
    context_names = [n for n in names if n not in radiomics_names and not n.startswith("cnn_")]
    x_all = matrix(fus, radiomics_names)
    sel_rad = fusion_train.select_features(x_all, y_tr, radiomics_names, plan.k_features, always=[])
    fused_names = context_names + cnn_names + sel_rad
    fb = fusion_train.fit_booster(matrix(fus, fused_names), y_tr, matrix(val, fused_names), y_va, fused_names, out / "lgbm.txt", seed=state["seed"])
    rb = fusion_train.fit_booster(matrix(fus, sel_rad), y_tr, matrix(val, sel_rad), y_va, sel_rad, out / "lgbm_radiomics.txt", seed=state["seed"])

    from hexnode.models.predict import Booster, Calibration

    fused = Booster(out / "lgbm.txt")
    raw_va = fused.raw([r.feats for r in val])
    # Platt on the validation split plus out-of-fold scores of the fusion split: 128 validation
    # cases alone left the calibration noisy (ECE 0.061 on 400 held-out cases, 0.041 expected of a
    # calibrated model); on 12 resplits of 600 cached cases, test ECE 0.085 -> 0.073 (floor 0.060)
    raw_oof = fusion_train.out_of_fold_raw(matrix(fus, fused_names), y_tr, fused_names, fb.best_iteration,
                                           seed=state["seed"])
    if raw_oof is None:
        a, b = fusion_train.fit_platt(raw_va, y_va)
        cal_on = f"val split ({len(val)} cases, predicted masks)"
    else:
        a, b = fusion_train.fit_platt(np.concatenate([raw_oof, raw_va]), np.concatenate([y_tr, y_va]))
        cal_on = (f"val split ({len(val)} cases) + out-of-fold scores of the fusion split ({len(fus)} cases, "
                  "5 folds), predicted masks")
    cal = Calibration(a, b)
    p_va = cal.apply(raw_va)
    one_class = len(set(y_va.tolist())) < 2
    thr_youden = 0.5 if one_class else M.youden_threshold(y_va, p_va)
    thr_sens = 0.5 if one_class else M.sensitivity_threshold(y_va, p_va, 0.90)

    # --- test: touched once, for the manifest -----------------------------------------------------
    rad_only = Booster(out / "lgbm_radiomics.txt")
    test_metrics = summarise(test, fused, rad_only, cal, thr_youden)
    val_metrics = {"auc": M.auc(y_va, p_va), "n": len(val), "ece": M.ece(y_va, p_va)}
    train_seconds = state["t_start_offset"] + time.monotonic() - t_fit

    campaign = write_campaign(out, state["campaign"], train_seconds, test_metrics) if state.get("campaign") else None
    write_model_set(out, ModelSet(
        plan=plan, seed=state["seed"], desc=state["desc"], splits=state["splits"],
        seg_diff=state["seg_diff"], cnn_diff=state["cnn_diff"], radiomics_names=radiomics_names,
        cnn_names=cnn_names, context_names=context_names, sel_rad=sel_rad, marker_names=marker_names,
        fused_names=fused_names, best_iteration=fb.best_iteration, radiomics_best_iteration=rb.best_iteration,
        platt_a=a, platt_b=b, calibrated_on=cal_on, one_class=one_class, threshold=thr_youden,
        threshold_sens=thr_sens, val_metrics=val_metrics, test_metrics=test_metrics,
        train_seconds=train_seconds, campaign=campaign))
    print(json.dumps({"train_seconds": round(train_seconds, 1), "test": test_metrics}, default=float), flush=True)


def summarise(test: list[Record], fused: Any, rad_only: Any, cal: Any, threshold: float) -> dict[str, Any]:
    if not test:
        return {"n": 0}
    y = np.array([r.label for r in test])
    p = cal.apply(fused.raw([r.feats for r in test]))
    stats = M.binary_stats(y, p, threshold)
    slice_iou = [v for r in test for v in r.seg.get("slice_ious", [])]
    # with its 95 % interval; beside it (below) the true probability's ECE on the same cases: what
    # finite bins and Bernoulli labels alone produce, the floor a calibrated model is read against
    ece = M.bootstrap(lambda i: M.ece(y[i], p[i]), len(y))
    out: dict[str, Any] = {
        "n": len(test),
        "auc": M.bootstrap(lambda i: M.auc(y[i], p[i]), len(y)).__dict__,
        "ece": ece.value,
        "ece_ci": [ece.lo, ece.hi],
        "sensitivity": stats.sensitivity,
        "specificity": stats.specificity,
        "npv": stats.npv,  # the reports state it beside the threshold (hexnode.report.common.risk_meaning)
        "auc_radiomics": M.auc(y, rad_only.raw([r.feats for r in test])),
        "auc_cnn": M.auc(y, np.array([r.feats.get("cnn_logit", -1e9) for r in test])),
        "auc_volume": M.auc(y, np.array([r.feats.get("volume_ml", 0.0) for r in test])),
        "auc_markers": M.auc(y, np.array([r.feats.get("marker_logit", -1e9) for r in test])),
        "iou_patient": M.mean_ci([r.seg["iou"] for r in test]).__dict__,
        "iou_slice": float(np.mean(slice_iou)) if slice_iou else float("nan"),
    }
    if all(r.he_probability is not None for r in test):
        tp = np.array([r.he_probability for r in test], float)
        out["bayes_auc"] = M.auc(y, tp)
        out["bayes_ece"] = M.ece(y, tp)
    return out
