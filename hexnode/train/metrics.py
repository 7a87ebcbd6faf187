"""Evaluation metrics (numpy only, so `hexnode evaluate` needs no scikit-learn).

Definitions used in the model card:
- slice-level IoU: pixel-wise IoU of one axial slice, averaged over every slice where the truth
  or the prediction is non-empty (a false-positive slice counts as IoU 0);
- patient-level IoU: the 3D IoU of one case, averaged over cases;
- AUC: the Mann-Whitney statistic (ties count one half);
- ECE: 10 equal-width probability bins, weighted by bin size.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray


def iou(truth: NDArray[np.generic], pred: NDArray[np.generic]) -> float:
    t = np.asarray(truth, bool)
    p = np.asarray(pred, bool)
    union = np.logical_or(t, p).sum()
    if union == 0:
        return 1.0  # both empty: the prediction is right
    return float(np.logical_and(t, p).sum() / union)


def dice(truth: NDArray[np.generic], pred: NDArray[np.generic]) -> float:
    t = np.asarray(truth, bool)
    p = np.asarray(pred, bool)
    denom = t.sum() + p.sum()
    if denom == 0:
        return 1.0
    return float(2.0 * np.logical_and(t, p).sum() / denom)


def slice_ious(truth: NDArray[np.generic], pred: NDArray[np.generic]) -> list[float]:
    """Per-slice IoU over the slices (axis 0) where truth or prediction is non-empty."""
    t = np.asarray(truth, bool)
    p = np.asarray(pred, bool)
    inter = np.logical_and(t, p).reshape(t.shape[0], -1).sum(1)
    union = np.logical_or(t, p).reshape(t.shape[0], -1).sum(1)
    keep = union > 0
    return [float(v) for v in inter[keep] / union[keep]]


def auc(labels: ArrayLike, scores: ArrayLike) -> float:
    y = np.asarray(labels).astype(bool)
    s = np.asarray(scores, float)
    n1, n0 = int(y.sum()), int((~y).sum())
    if n1 == 0 or n0 == 0:
        return float("nan")
    from scipy.stats import rankdata

    ranks = rankdata(s)  # average ranks: ties count one half
    return float((ranks[y].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def roc_curve(labels: ArrayLike, scores: ArrayLike) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """(fpr, tpr, thresholds), thresholds descending; a case is positive when score >= threshold."""
    y = np.asarray(labels).astype(bool)
    s = np.asarray(scores, float)
    thr = np.unique(s)[::-1]
    thr = np.concatenate([[np.inf], thr])
    tpr = np.array([(s[y] >= t).mean() if y.any() else 0.0 for t in thr])
    fpr = np.array([(s[~y] >= t).mean() if (~y).any() else 0.0 for t in thr])
    return fpr, tpr, thr


def youden_threshold(labels: ArrayLike, scores: ArrayLike) -> float:
    fpr, tpr, thr = roc_curve(labels, scores)
    j = tpr - fpr
    i = int(np.argmax(j[1:])) + 1  # skip the +inf point
    return float(thr[i])


def sensitivity_threshold(labels: ArrayLike, scores: ArrayLike, target: float = 0.90) -> float:
    """The highest threshold whose sensitivity reaches `target` (the most specific such point)."""
    fpr, tpr, thr = roc_curve(labels, scores)
    ok = np.nonzero(tpr >= target)[0]
    return float(thr[ok[0]]) if ok.size else float(thr[-1])


@dataclass(frozen=True)
class BinaryStats:
    sensitivity: float
    specificity: float
    ppv: float
    npv: float


def _ratio(a: float, b: float) -> float:
    return float(a / b) if b else float("nan")


def binary_stats(labels: ArrayLike, scores: ArrayLike, threshold: float) -> BinaryStats:
    y = np.asarray(labels).astype(bool)
    p = np.asarray(scores, float) >= threshold
    tp = float((y & p).sum())
    tn = float((~y & ~p).sum())
    fp = float((~y & p).sum())
    fn = float((y & ~p).sum())
    return BinaryStats(_ratio(tp, tp + fn), _ratio(tn, tn + fp), _ratio(tp, tp + fp), _ratio(tn, tn + fn))


def reliability(labels: ArrayLike, probs: ArrayLike, bins: int = 10) -> list[tuple[float, float, int]]:
    """(mean predicted, observed frequency, count) per non-empty equal-width bin."""
    y = np.asarray(labels, float)
    p = np.clip(np.asarray(probs, float), 0.0, 1.0)
    idx = np.minimum((p * bins).astype(int), bins - 1)
    out = []
    for b in range(bins):
        sel = idx == b
        if sel.any():
            out.append((float(p[sel].mean()), float(y[sel].mean()), int(sel.sum())))
    return out


def ece(labels: ArrayLike, probs: ArrayLike, bins: int = 10) -> float:
    n = len(np.asarray(labels))
    if n == 0:
        return float("nan")
    return float(sum(c * abs(mp - fy) for mp, fy, c in reliability(labels, probs, bins)) / n)


@dataclass(frozen=True)
class Estimate:
    value: float
    lo: float
    hi: float

    def fmt(self, digits: int = 3) -> str:
        return f"{self.value:.{digits}f} [{self.lo:.{digits}f}, {self.hi:.{digits}f}]"


def bootstrap(
    stat: Callable[[NDArray[np.int64]], float],
    n: int,
    *,
    reps: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> Estimate:
    """Percentile bootstrap over case indices: `stat(indices)` is evaluated on resamples."""
    value = stat(np.arange(n))
    if n < 2:
        return Estimate(value, float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    vals = []
    for _ in range(reps):
        v = stat(rng.integers(0, n, n))
        if np.isfinite(v):
            vals.append(v)
    if not vals:
        return Estimate(value, float("nan"), float("nan"))
    lo, hi = np.quantile(vals, [alpha / 2, 1 - alpha / 2])
    return Estimate(value, float(lo), float(hi))


def mean_ci(values: Sequence[float], *, reps: int = 1000, seed: int = 0) -> Estimate:
    v = np.asarray(values, float)
    if v.size == 0:
        return Estimate(float("nan"), float("nan"), float("nan"))
    return bootstrap(lambda i: float(v[i].mean()), v.size, reps=reps, seed=seed)
