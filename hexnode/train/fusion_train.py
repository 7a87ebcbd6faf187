"""The logistic marker score, LightGBM on the fused features, Platt calibration on the validation split."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from hexnode.models.predict import MarkerScore
from hexnode.train import metrics as M

log = logging.getLogger(__name__)

PARAMS = {
    "objective": "binary",
    "learning_rate": 0.03,
    "num_leaves": 4,
    "max_depth": 2,
    "min_data_in_leaf": 12,
    "feature_fraction": 0.5,
    "bagging_fraction": 0.8,
    "bagging_freq": 1,
    "lambda_l2": 1.0,
    "verbose": -1,
    "num_threads": 2,
    "deterministic": True,
}


def select_features(x: NDArray[np.float64], y: NDArray[np.int64], names: list[str], k: int, always: list[str]) -> list[str]:
    """The `always` features plus the k others of largest univariate |AUC - 0.5| on the training split."""
    scores = []
    for j, n in enumerate(names):
        col = x[:, j]
        ok = np.isfinite(col)
        if n in always or ok.sum() < 3 or np.nanstd(col[ok]) == 0:
            scores.append(-1.0)
            continue
        a = M.auc(y[ok], col[ok])  # NaN when the split has one class (tiny --quick runs)
        scores.append(abs(a - 0.5) if np.isfinite(a) else 0.0)
    order = np.argsort(scores)[::-1]
    chosen = [names[j] for j in order[:k] if scores[j] >= 0]
    if not chosen and not always:
        raise ValueError("no usable feature: every candidate is missing or constant on the training split")
    return [n for n in names if n in always] + chosen


@dataclass
class FittedBooster:
    path: Path
    features: list[str]
    best_iteration: int


def fit_booster(
    x_tr: NDArray[np.float64], y_tr: NDArray[np.int64], x_va: NDArray[np.float64], y_va: NDArray[np.int64],
    names: list[str], path: Path, *, seed: int = 0, rounds: int = 600,
) -> FittedBooster:
    import lightgbm as lgb

    params = _params(seed, len(y_tr))
    dtr = lgb.Dataset(x_tr, y_tr, feature_name=names, free_raw_data=False)
    dva = lgb.Dataset(x_va, y_va, reference=dtr)
    booster = lgb.train(params, dtr, num_boost_round=rounds, valid_sets=[dva],
                        callbacks=[lgb.early_stopping(80, verbose=False)])
    best = booster.best_iteration or rounds
    booster.save_model(str(path), num_iteration=best)
    return FittedBooster(path, names, best)


def _params(seed: int, n_train: int) -> dict[str, object]:
    # tiny training sets (--quick) need smaller leaves, or LightGBM finds no split at all
    return dict(PARAMS, seed=seed, min_data_in_leaf=min(12, max(2, n_train // 5)), min_data_in_bin=1,
                feature_pre_filter=False)


def _can_fold(y: NDArray[np.int64], folds: int) -> bool:
    """Stratified folds need at least one row of each class per fold."""
    return min(int(y.sum()), int(len(y) - y.sum())) >= folds


def out_of_fold_raw(x: NDArray[np.float64], y: NDArray[np.int64], names: list[str], rounds: int, *, seed: int = 0,
                    folds: int = 5) -> NDArray[np.float64] | None:
    """Raw booster scores of the training rows, each from a booster (same settings, `rounds`
    rounds) that did not see it; None when a class has fewer rows than folds."""
    import lightgbm as lgb
    from sklearn.model_selection import StratifiedKFold

    y = np.asarray(y, np.int64)
    if not _can_fold(y, folds):
        return None
    oof = np.empty(len(y))
    for tr, te in StratifiedKFold(folds, shuffle=True, random_state=seed).split(x, y):
        b = lgb.train(_params(seed, len(tr)), lgb.Dataset(x[tr], y[tr], feature_name=names), num_boost_round=rounds)
        oof[te] = b.predict(x[te], raw_score=True)
    return oof


def fit_platt(raw: NDArray[np.float64], y: NDArray[np.int64]) -> tuple[float, float]:
    """Platt scaling by maximum likelihood (a slightly regularised logistic fit)."""
    from sklearn.linear_model import LogisticRegression

    if len(set(np.asarray(y, int).tolist())) < 2:
        # a validation split with one class (tiny --quick runs) cannot be fitted: the booster's own
        # sigmoid is kept, and the manifest says so
        return 1.0, 0.0
    lr = LogisticRegression(C=100.0)
    lr.fit(np.asarray(raw, float)[:, None], np.asarray(y, int))
    return float(lr.coef_[0, 0]), float(lr.intercept_[0])


#: inputs of the marker score: one measure per marker of the generative literature model (volume,
#: islands, hypodensity and blend sign, irregularity, oedema, intraventricular blood); chosen by
#: Spearman correlation with the drawn markers on 300 synthetic cases (see the model card)
MARKER_FEATURES = [
    "log_volume", "islands_near", "hypodense_fraction", "hypodense_largest_share", "irregularity_radial",
    "irregularity_ellipsoid", "axis_ratio", "ring_mean_hu", "satellite_ml", "csf_bordered_ml", "csf_bordered_max",
]


def _fit_logistic(x: NDArray[np.float64], y: NDArray[np.int64], names: list[str]) -> MarkerScore:
    from sklearn.linear_model import LogisticRegression

    median = np.nanmedian(x, axis=0)
    median = np.where(np.isfinite(median), median, 0.0)
    x = np.where(np.isfinite(x), x, median)
    mean, scale = x.mean(axis=0), x.std(axis=0)
    scale = np.where(scale > 1e-12, scale, 1.0)
    z = (x - mean) / scale
    if len(set(y.tolist())) < 2:  # one class (tiny --quick runs): a constant score
        coef, icpt = np.zeros(len(names)), 0.0
    else:
        lr = LogisticRegression(C=1.0, max_iter=5000)
        lr.fit(z, y)
        coef, icpt = lr.coef_[0], float(lr.intercept_[0])
    return MarkerScore.from_arrays(names, median, mean, scale, coef, icpt)


def fit_marker_score(x: NDArray[np.float64], y: NDArray[np.int64], names: list[str], *, seed: int = 0,
                     folds: int = 5) -> tuple[MarkerScore, NDArray[np.float64]]:
    """(the score fitted on all rows, out-of-fold logits of the same rows).

    LightGBM is trained on the out-of-fold logits: an in-sample logit is optimistic, and the
    booster would learn to trust it more than it deserves on new cases."""
    y = np.asarray(y, np.int64)
    full = _fit_logistic(x, y, names)
    if not _can_fold(y, folds):  # too few of a class to fold
        return full, full.apply(x)
    from sklearn.model_selection import StratifiedKFold

    oof = np.empty(len(y))
    for tr, te in StratifiedKFold(folds, shuffle=True, random_state=seed).split(x, y):
        oof[te] = _fit_logistic(x[tr], y[tr], names).apply(x[te])
    return full, oof
