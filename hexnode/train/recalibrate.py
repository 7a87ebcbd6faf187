"""`hexnode recalibrate`: refit the calibration and the threshold on the site's own outcomes.

The models stay as they are; what changes is the map from the booster's raw score to the
probability (Platt: p = sigmoid(a * raw + b)) and the High/Low threshold. The stored predictions
are the calibrated probabilities of the active version, so logit(p) = a * raw + b is known for
every pair, and a Platt refit on it, p' = sigmoid(c * logit(p) + d), is the new calibration
a' = c * a, b' = c * b + d of the same raw score.

* Refuses below `[followup] min_pairs` pairs or `min_events` observed expansions, saying how many
  it has (scored pairs of the active version: hexnode/store/outcomes.py).
* 5-fold stratified cross-validation: each fold's pairs are recalibrated by a fit on the other
  four (threshold by Youden, or `target_sensitivity`), and the before/after figures (ECE, Brier,
  sensitivity and specificity at the threshold, AUC) are those held-out predictions.
* The new version (`<old>-site<YYYYMMDD>-<hash>`) is a folder under `<data_dir>/models/` with a
  copy of every model file (sha256 checked) and a manifest saying "recalibrated on N site pairs,
  DATE-DATE"; the old version is untouched. Nothing changes for the workers until
  `hexnode models activate VERSION`.

numpy only (no torch, no scikit-learn): the runtime may import this.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from hexnode.config import Config
from hexnode.store.db import Store

EPS = 1e-6
FOLDS = 5


class Refused(RuntimeError):
    """Too few pairs or events: the message says how many there are and how many are needed."""


def logit(p: NDArray[np.float64]) -> NDArray[np.float64]:
    q = np.clip(np.asarray(p, np.float64), EPS, 1 - EPS)
    return np.log(q / (1 - q))


def sigmoid(z: NDArray[np.float64]) -> NDArray[np.float64]:
    return 1.0 / (1.0 + np.exp(-z))


def fit_platt(x: NDArray[np.float64], y: NDArray[np.bool_], iterations: int = 50) -> tuple[float, float]:
    """Logistic regression of y on x (Newton-Raphson, a tiny ridge so separable data stays finite),
    with Platt's target smoothing ((n+ + 1)/(n+ + 2), 1/(n- + 2)) against over-confidence."""
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    t = np.where(y, (n_pos + 1.0) / (n_pos + 2.0), 1.0 / (n_neg + 2.0))
    w = np.array([1.0, 0.0])
    design = np.column_stack([x, np.ones_like(x)])
    for _ in range(iterations):
        p = sigmoid(design @ w)
        grad = design.T @ (p - t) + 1e-4 * w
        hess = (design * (p * (1 - p))[:, None]).T @ design + 1e-4 * np.eye(2)
        step = np.linalg.solve(hess, grad)
        w -= step
        if float(np.abs(step).max()) < 1e-10:
            break
    return float(w[0]), float(w[1])


def choose_threshold(y: NDArray[np.bool_], p: NDArray[np.float64], target_sensitivity: float) -> float:
    from hexnode.train import metrics as M

    if target_sensitivity > 0:
        return M.sensitivity_threshold(y, p, target_sensitivity)
    return M.youden_threshold(y, p)


def stratified_folds(y: NDArray[np.bool_], k: int, seed: int = 0) -> list[NDArray[np.int64]]:
    rng = np.random.default_rng(seed)
    folds: list[list[int]] = [[] for _ in range(k)]
    for cls in (True, False):
        idx = np.flatnonzero(y == cls)
        rng.shuffle(idx)
        for j, i in enumerate(idx):
            folds[j % k].append(int(i))
    return [np.array(sorted(f), np.int64) for f in folds]


@dataclass(frozen=True)
class Figures:
    auc: float
    ece: float
    brier: float
    sensitivity: float
    specificity: float

    @staticmethod
    def of(y: NDArray[np.bool_], p: NDArray[np.float64], thr: NDArray[np.float64]) -> Figures:
        from hexnode.train import metrics as M

        high = p >= thr
        tp, fn = int((y & high).sum()), int((y & ~high).sum())
        tn, fp = int((~y & ~high).sum()), int((~y & high).sum())
        return Figures(M.auc(y, p), M.ece(y, p), float(np.mean((p - y) ** 2)),
                       tp / (tp + fn) if tp + fn else float("nan"), tn / (tn + fp) if tn + fp else float("nan"))

    def line(self) -> str:
        return (f"AUC {self.auc:.3f}, ECE {self.ece:.3f}, Brier {self.brier:.3f}, sensitivity {self.sensitivity:.3f}, "
                f"specificity {self.specificity:.3f}")


@dataclass(frozen=True)
class Recalibration:
    base_version: str
    version: str
    path: Path
    pairs: int
    events: int
    first: str
    last: str
    c: float
    d: float
    threshold: float
    before: Figures
    after: Figures


def recalibrate(store: Store, cfg: Config, *, now: datetime | None = None) -> Recalibration:
    from hexnode.models.registry import load_manifest, sha256_file
    from hexnode.store.model_versions import active_dir
    from hexnode.store.outcomes import scored_pairs

    fu = cfg.followup
    base_dir = active_dir(store, cfg)
    manifest = load_manifest(base_dir, verify=True)
    with store.transaction() as s:
        all_pairs, _ = scored_pairs(s)
    pairs = [p for p in all_pairs if p.model_version == manifest.version]
    n, events = len(pairs), sum(p.expansion for p in pairs)
    if n < fu.min_pairs or events < fu.min_events:
        raise Refused(f"model {manifest.version} has {n} scored outcome pairs with {events} expansions observed; "
                      f"recalibration needs at least {fu.min_pairs} pairs and {fu.min_events} expansions "
                      f"([followup] min_pairs, min_events)")
    y = np.array([p.expansion for p in pairs], bool)
    prob = np.array([p.probability for p in pairs], np.float64)
    old_thr = np.array([p.threshold for p in pairs], np.float64)
    x = logit(prob)
    # held-out figures: every pair recalibrated by a fit that did not see it
    new_p = np.empty_like(prob)
    new_thr = np.empty_like(prob)
    for fold in stratified_folds(y, FOLDS):
        train = np.setdiff1d(np.arange(n), fold)
        c, d = fit_platt(x[train], y[train])
        new_p[fold] = sigmoid(c * x[fold] + d)
        new_thr[fold] = choose_threshold(y[train], sigmoid(c * x[train] + d), fu.target_sensitivity)
    before, after = Figures.of(y, prob, old_thr), Figures.of(y, new_p, new_thr)
    c, d = fit_platt(x, y)
    threshold = choose_threshold(y, sigmoid(c * x + d), fu.target_sensitivity)

    when = (now or datetime.now(UTC)).replace(tzinfo=None)
    dates = sorted(p.baseline_at for p in pairs)
    first, last = dates[0][:10], dates[-1][:10]
    cal = manifest.data["calibration"]
    a_new, b_new = c * float(cal["a"]), c * float(cal["b"]) + d
    digest = hashlib.sha256(json.dumps([manifest.version, a_new, b_new, threshold, n]).encode()).hexdigest()[:8]
    version = f"{manifest.version.split('-site')[0]}-site{when:%Y%m%d}-{digest}"
    provenance = f"recalibrated on {n} site pairs, {first}-{last}"
    data: dict[str, Any] = json.loads(json.dumps(manifest.data))
    data["version"] = version
    data["created_utc"] = when.strftime("%Y-%m-%dT%H:%M:%SZ")
    data["calibration"] = {"method": "platt", "a": a_new, "b": b_new,
                           "fitted_on": f"{provenance} (Platt on the logit of {manifest.version}'s probabilities)"}
    data["threshold"] = {"value": threshold,
                         "method": (f"target sensitivity {fu.target_sensitivity:g}" if fu.target_sensitivity > 0
                                    else "Youden") + " on the site's outcome pairs"}
    data["provenance"] = {"text": provenance, "base_version": manifest.version, "pairs": n, "events": int(events),
                          "first_baseline": dates[0], "last_baseline": dates[-1], "definition": fu.definition,
                          "recalibrated_utc": data["created_utc"]}
    data.setdefault("metrics", {})["site_cv"] = {"folds": FOLDS, "before": before.__dict__, "after": after.__dict__}
    out = cfg.model_versions_path / version
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name, entry in manifest.data["files"].items():
        shutil.copy2(manifest.root / name, tmp / name)
        if sha256_file(tmp / name) != entry["sha256"]:
            raise RuntimeError(f"copy of {name} does not match its sha256")
    (tmp / "manifest.json").write_text(json.dumps(data, indent=2) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    load_manifest(out, verify=True)
    return Recalibration(manifest.version, version, out, n, int(events), first, last, c, d, threshold, before, after)


def run_recalibrate(args: argparse.Namespace) -> int:
    from hexnode.config import load_config
    from hexnode.store.db import open_store

    cfg = load_config(getattr(args, "config", None))
    store = open_store(cfg.database_url)
    try:
        r = recalibrate(store, cfg)
    except Refused as exc:
        print(f"hexnode recalibrate: refused: {exc}", file=sys.stderr)
        return 3
    finally:
        store.dispose()
    print(f"recalibrated {r.base_version} on {r.pairs} site pairs ({r.events} expansions), baselines {r.first} - {r.last}")
    print(f"held-out ({FOLDS}-fold) before: {r.before.line()}")
    print(f"held-out ({FOLDS}-fold) after:  {r.after.line()}")
    print(f"new threshold {r.threshold:.3f}; calibration p' = sigmoid({r.c:.3f} * logit(p) {r.d:+.3f})")
    print(f"wrote {r.version} in {r.path}")
    print(f"the workers keep {r.base_version} until: hexnode models activate {r.version}")
    return 0
