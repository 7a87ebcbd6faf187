"""LightGBM on the fused features, Platt calibration and thresholds on the validation split."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from hexnode.models import metrics as M

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

    # tiny training sets (--quick) need smaller leaves, or LightGBM finds no split at all
    params = dict(PARAMS, seed=seed, min_data_in_leaf=min(12, max(2, len(y_tr) // 5)), min_data_in_bin=1,
                  feature_pre_filter=False)
    dtr = lgb.Dataset(x_tr, y_tr, feature_name=names, free_raw_data=False)
    dva = lgb.Dataset(x_va, y_va, reference=dtr)
    booster = lgb.train(params, dtr, num_boost_round=rounds, valid_sets=[dva],
                        callbacks=[lgb.early_stopping(80, verbose=False)])
    best = booster.best_iteration or rounds
    booster.save_model(str(path), num_iteration=best)
    return FittedBooster(path, names, best)


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
