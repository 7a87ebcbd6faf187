"""The generative hematoma-expansion (HE) model: marker priors, true probability, label, follow-up.

Every input of the true probability is something the image shows (volume, shape irregularity,
hypodense fraction, blend sign, satellite islands, intraventricular blood, oedema rim), so an image
model can in principle reach the Bayes ceiling that `bayes_auc` measures. The formula and the
coefficients are documented in `hexnode.synth.phantom` and printed by `hexnode synth --bayes-auc`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

MODEL_VERSION = "he-gen-1"

#: median of the log-normal baseline volume (ml), its log-sd and the truncation range
VOLUME_MEDIAN_ML = 15.0
VOLUME_LOG_SD = 0.95
VOLUME_RANGE_ML = (1.0, 120.0)
HARD_VOLUME_RANGE_ML = (0.6, 2.6)

#: logit = B0 + sum(BETA[k] * x[k]); x as defined in `design_vector`
BETA: dict[str, float] = {
    "log_volume": 1.15,  # per unit of ln(volume / 15 ml)
    "irregularity": 1.20,  # per 0.1 of relative radius amplitude (low-order spherical harmonics)
    "hypodense_fraction": 1.30,  # per 0.1 of the mask volume at 30-45 HU
    "blend": 1.10,  # one contiguous hypodense region with a sharp border (blend sign)
    "islands": 0.80,  # per satellite blob separate from the main hematoma
    "ivh": 0.85,  # blood in the ventricles
    "oedema_mm": -0.13,  # per mm of perihematomal oedema rim, centred at 3 mm
}
B0 = -5.50


@dataclass(frozen=True)
class Markers:
    """Imaging markers of one hematoma, as drawn (the phantom renders them and may re-measure)."""

    volume_ml: float
    irregularity: float  # relative std of the radius perturbation, 0 .. 0.4
    hypodense_fraction: float  # fraction of the hematoma at 30-45 HU, 0 .. 0.45
    blend: bool  # hypodense part is one contiguous region with a sharp border
    islands: int  # satellite blobs, 0 .. 4
    ivh: bool  # intraventricular extension
    oedema_mm: float  # perihematomal oedema rim thickness


def draw_markers(rng: np.random.Generator, *, hard: bool = False, deep: bool = False) -> Markers:
    """Draw one marker set from the priors (the same priors the phantom and `bayes_auc` use)."""
    lo, hi = HARD_VOLUME_RANGE_ML if hard else VOLUME_RANGE_ML
    if hard:
        volume = float(math.exp(rng.uniform(math.log(lo), math.log(hi))))
    else:
        while True:
            volume = float(VOLUME_MEDIAN_ML * math.exp(VOLUME_LOG_SD * rng.standard_normal()))
            if lo <= volume <= hi:
                break
    irregularity = float(0.40 * rng.beta(1.3, 2.2))
    if rng.random() < 0.5:
        hypo = 0.0
        blend = False
    else:
        hypo = float(0.05 + 0.40 * rng.beta(1.6, 3.5))
        blend = bool(rng.random() < 0.4)
    islands = int(rng.choice(5, p=[0.55, 0.17, 0.12, 0.09, 0.07]))
    ivh = bool(rng.random() < (0.35 if deep else 0.15))
    oedema = float(rng.uniform(0.5, 6.0))
    return Markers(volume, irregularity, hypo, blend, islands, ivh, oedema)


#: where the bleed sits (cumulative probabilities; the phantom renders each)
LOCATIONS = (("deep", 0.45), ("cerebellar", 0.52), ("intraventricular", 0.56), ("lobar_flat", 0.66),
             ("lobar", 1.0))


def draw_case(rng: np.random.Generator, *, small: bool = False) -> tuple[str, Markers]:
    """Location and markers of one case, as the phantom draws them (also used by `bayes_auc`)."""
    u = rng.random()
    location = next(name for name, cum in LOCATIONS if u < cum)
    if small and location == "intraventricular":
        location = "deep"
    m = draw_markers(rng, hard=small, deep=location == "deep")
    if small:  # the BioMind failure case: a tiny bleed with little else to see
        m = Markers(m.volume_ml, m.irregularity * 0.5, m.hypodense_fraction, m.blend, 0, False, m.oedema_mm * 0.5)
    if location == "cerebellar":  # the posterior fossa holds smaller bleeds and no IVH here
        m = Markers(m.volume_ml * 0.5, m.irregularity, m.hypodense_fraction, m.blend, min(m.islands, 2), False,
                    m.oedema_mm)
    elif location == "intraventricular":
        # only the ventricles bleed: every parenchymal marker is absent, so p sees none of them
        m = Markers(m.volume_ml, 0.0, 0.0, False, 0, True, 0.0)
    return location, m


def design_vector(m: Markers) -> dict[str, float]:
    """The model's inputs, each a function of what the image shows."""
    return {
        "log_volume": math.log(m.volume_ml / VOLUME_MEDIAN_ML),
        "irregularity": m.irregularity / 0.1,
        "hypodense_fraction": m.hypodense_fraction / 0.1,
        "blend": float(m.blend),
        "islands": float(m.islands),
        "ivh": float(m.ivh),
        "oedema_mm": m.oedema_mm - 3.0,
    }


def he_probability(m: Markers) -> float:
    """True probability of expansion: sigmoid(B0 + BETA . x); no hidden noise inside."""
    x = design_vector(m)
    logit = B0 + sum(BETA[k] * v for k, v in x.items())
    return 1.0 / (1.0 + math.exp(-logit))


def draw_followup(rng: np.random.Generator, volume_ml: float, label: bool) -> float:
    """Follow-up volume consistent with the label: HE <=> growth > 6 ml or > 33 %."""
    limit = min(6.0, 0.33 * volume_ml)
    if label:
        growth = max(6.0, 0.33 * volume_ml) * rng.uniform(1.05, 2.5)
    else:
        growth = limit * rng.uniform(-0.6, 0.95)
    return float(volume_ml + growth)


def formula_text() -> str:
    terms = " ".join(f"{BETA[k]:+.2f}*{k}" for k in BETA)
    return (
        f"p = sigmoid({B0:+.2f} {terms})\n"
        "  log_volume = ln(V_ml / 15); irregularity = SH amplitude / 0.1; "
        "hypodense_fraction = fraction / 0.1;\n"
        "  blend, ivh in {0,1}; islands = count 0..4; oedema_mm = rim thickness - 3\n"
        "  label ~ Bernoulli(p); HE <=> follow-up growth > 6 ml or > 33 %"
    )


def roc_auc(score: np.ndarray, label: np.ndarray) -> float:
    """Mann-Whitney AUC with ties counted half (no sklearn at run time)."""
    score = np.asarray(score, dtype=np.float64)
    label = np.asarray(label, dtype=bool)
    n_pos = int(label.sum())
    n_neg = label.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(score, kind="mergesort")
    s = score[order]
    ranks = np.empty(s.size, dtype=np.float64)
    # average ranks over ties
    _, first, counts = np.unique(s, return_index=True, return_counts=True)
    avg = first + (counts + 1) / 2.0
    ranks[order] = np.repeat(avg, counts)
    return float((ranks[label].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def bayes_auc(draws: int = 20000, seed: int = 0) -> tuple[float, float]:
    """(prevalence, AUC of the true probability vs the drawn label) over `draws` marker draws."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0xBA7E5]))
    p = np.empty(draws)
    for i in range(draws):
        p[i] = he_probability(draw_case(rng)[1])
    label = rng.random(draws) < p
    return float(label.mean()), roc_auc(p, label)
