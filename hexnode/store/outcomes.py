"""The site's own outcomes: baseline predictions against the expansion measured on the follow-up.

One `Outcome` row per follow-up scan (the worker's follow-up step writes it in the same
transaction as the results). The figures (`summarise`) use the **first** follow-up of each
baseline that did not decrease to below half (an evacuated or resorbed hematoma tells nothing
about its natural course; those pairs are counted, not scored), per model version of the
baseline's prediction:

  pairs, events (expansions observed), observed rate; mean predicted probability and the 95 %
  interval of the rate that the predictions imply (sum of Bernoulli(p_i), normal approximation);
  AUC with a percentile-bootstrap 95 % CI (1,000 resamples, seed 0); ECE (10 equal-width bins)
  and a reliability diagram (PNG); sensitivity, specificity, PPV and NPV at the threshold each
  prediction was reported with.

Drift: with at least `drift_min_pairs` pairs of one model version, the observed rate outside the
predicted 95 % interval, or ECE above `drift_max_ece`. `hexnode outcomes`, GET /outcomes and the
status (`collect()["outcomes"]`, gauge `hexnode_outcomes_drift`) report it; the worker logs a
warning when a new pair changes a version's drift state.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from hexnode.store.db import Meta, Outcome, Scan, Store

log = logging.getLogger(__name__)


class Growth(Protocol):
    """What an outcome row records of a measured growth (hexnode.series.followup.Growth); a
    Protocol, so that the store, below every stage, imports none of them."""

    @property
    def baseline_ml(self) -> float: ...
    @property
    def followup_ml(self) -> float: ...
    @property
    def growth_ml(self) -> float: ...
    @property
    def growth_pct(self) -> float | None: ...
    @property
    def category(self) -> str: ...
    @property
    def definition(self) -> str: ...
    @property
    def expansion(self) -> bool: ...

BOOTSTRAP_REPS = 1000


def record_outcome(s: Session, baseline: Scan, followup: Scan, growth: Growth, hours: float) -> Outcome:
    """Insert (or, for a re-analysed follow-up, update) the pair of `followup`."""
    row = s.execute(select(Outcome).where(Outcome.followup_id == followup.id)).scalar_one_or_none()
    if row is None:
        row = Outcome(followup_id=followup.id)
        s.add(row)
    row.baseline_id, row.hours = baseline.id, hours
    row.baseline_ml, row.followup_ml = growth.baseline_ml, growth.followup_ml
    row.growth_ml, row.growth_pct = growth.growth_ml, growth.growth_pct
    row.category, row.expansion, row.definition = growth.category, growth.expansion, growth.definition
    row.model_version = baseline.model_version
    row.probability = float(baseline.probability or 0.0)
    row.threshold = float(baseline.threshold or 0.0)
    row.baseline_at = baseline.acquired_at
    return row


@dataclass(frozen=True)
class Pair:
    """One scored pair (no identifiers: the patient is not needed to score)."""

    outcome_id: int
    model_version: str
    probability: float
    threshold: float
    expansion: bool
    category: str
    hours: float
    growth_ml: float
    baseline_at: str


def scored_pairs(s: Session) -> tuple[list[Pair], dict[str, int]]:
    """The first follow-up of each baseline, and counts of what was left out (and why)."""
    rows = list(s.execute(
        select(Outcome, Scan.acquired_at).join(Scan, Scan.id == Outcome.followup_id)
        .order_by(Outcome.baseline_id, Scan.acquired_at, Outcome.id)).all())
    seen: set[int] = set()
    pairs: list[Pair] = []
    left = {"later_followups": 0, "decreased": 0}
    for o, _at in rows:
        if o.baseline_id in seen:
            left["later_followups"] += 1
            continue
        seen.add(o.baseline_id)
        if o.category == "decreased":
            left["decreased"] += 1
            continue
        pairs.append(Pair(o.id, o.model_version, float(o.probability), float(o.threshold), bool(o.expansion),
                          o.category, float(o.hours), float(o.growth_ml), o.baseline_at.isoformat()))
    return pairs, left


@dataclass(frozen=True)
class VersionFigures:
    model_version: str
    pairs: int
    events: int
    observed_rate: float
    predicted_rate: float
    predicted_rate_lo: float
    predicted_rate_hi: float
    auc: float | None
    auc_lo: float | None
    auc_hi: float | None
    ece: float
    sensitivity: float | None
    specificity: float | None
    ppv: float | None
    npv: float | None
    first: str
    last: str
    drift: bool
    drift_reasons: list[str]


def _finite(x: float) -> float | None:
    return None if not math.isfinite(x) else float(x)


def figures(version: str, pairs: list[Pair], *, drift_min_pairs: int = 50, drift_max_ece: float = 0.10,
            with_auc: bool = True) -> VersionFigures:
    from hexnode.train import metrics as M

    y = np.array([p.expansion for p in pairs], bool)
    prob = np.array([p.probability for p in pairs], float)
    thr = np.array([p.threshold for p in pairs], float)
    n = len(pairs)
    observed = float(y.mean()) if n else float("nan")
    predicted = float(prob.mean()) if n else float("nan")
    sd = math.sqrt(float(np.sum(prob * (1 - prob)))) / n if n else float("nan")
    lo, hi = predicted - 1.96 * sd, predicted + 1.96 * sd
    auc = M.bootstrap(lambda i: M.auc(y[i], prob[i]), n, reps=BOOTSTRAP_REPS, seed=0) if n and with_auc else None
    ece = M.ece(y, prob) if n else float("nan")
    high = prob >= thr
    tp, tn = int((y & high).sum()), int((~y & ~high).sum())
    fp, fn = int((~y & high).sum()), int((y & ~high).sum())

    def ratio(a: int, b: int) -> float | None:
        return a / b if b else None

    reasons = []
    if n >= drift_min_pairs:
        if not lo <= observed <= hi:
            reasons.append(f"observed expansion rate {observed:.3f} outside the predicted 95 % interval "
                           f"[{max(lo, 0):.3f}, {min(hi, 1):.3f}]")
        if ece > drift_max_ece:
            reasons.append(f"ECE {ece:.3f} > {drift_max_ece:.2f}")
    dates = sorted(p.baseline_at for p in pairs)
    return VersionFigures(
        version, n, int(y.sum()), observed, predicted, max(lo, 0.0), min(hi, 1.0),
        None if auc is None else _finite(auc.value), None if auc is None else _finite(auc.lo),
        None if auc is None else _finite(auc.hi), ece,
        ratio(tp, tp + fn), ratio(tn, tn + fp), ratio(tp, tp + fp), ratio(tn, tn + fn),
        dates[0] if dates else "", dates[-1] if dates else "", bool(reasons), reasons)


def check_drift(s: Session, version: str, *, drift_min_pairs: int, drift_max_ece: float) -> VersionFigures:
    """The drift state of one model version (no bootstrap: cheap enough for every new pair)."""
    pairs, _ = scored_pairs(s)
    return figures(version, [p for p in pairs if p.model_version == version], drift_min_pairs=drift_min_pairs,
                   drift_max_ece=drift_max_ece, with_auc=False)


DRIFT_KEY = "outcomes_drift"


def save_drift(s: Session, state: VersionFigures) -> None:
    """The drift state the worker computed (with the configured thresholds) for the status page,
    /status and /metrics, which then read one row instead of scoring every pair per scrape."""
    row = s.get(Meta, DRIFT_KEY)
    doc = json.loads(row.value) if row else {}
    doc[state.model_version] = {"pairs": state.pairs, "events": state.events, "drift": state.drift,
                                "reasons": state.drift_reasons, "observed_rate": _finite(state.observed_rate),
                                "predicted_rate": _finite(state.predicted_rate), "ece": _finite(state.ece)}
    if row is None:
        s.add(Meta(key=DRIFT_KEY, value=json.dumps(doc)))
    else:
        row.value = json.dumps(doc)


def status_section(s: Session) -> dict[str, Any]:
    """`collect()["outcomes"]`: pairs recorded, and the last drift state per model version."""
    from sqlalchemy import func

    row = s.get(Meta, DRIFT_KEY)
    versions = json.loads(row.value) if row else {}
    pairs = int(s.execute(select(func.count()).select_from(Outcome)).scalar_one())
    return {"pairs_recorded": pairs, "drift": any(v["drift"] for v in versions.values()), "versions": versions}


def summarise(store: Store, *, drift_min_pairs: int = 50, drift_max_ece: float = 0.10) -> dict[str, Any]:
    """Everything `hexnode outcomes` and GET /outcomes show (JSON-ready, no identifiers)."""
    with store.transaction() as s:
        pairs, left = scored_pairs(s)
    versions = sorted({p.model_version for p in pairs})
    per = [figures(v, [p for p in pairs if p.model_version == v], drift_min_pairs=drift_min_pairs,
                   drift_max_ece=drift_max_ece) for v in versions]
    return {
        "pairs": len(pairs), "left_out": left,
        "versions": [asdict(f) for f in per],
        "drift": any(f.drift for f in per),
        "rule": ("first follow-up per baseline; 'decreased' (below half the baseline) not scored; AUC 95 % CI by "
                 f"percentile bootstrap ({BOOTSTRAP_REPS} resamples); ECE 10 bins; drift with >= {drift_min_pairs} "
                 f"pairs: observed rate outside the predicted 95 % interval or ECE > {drift_max_ece:.2f}"),
    }
