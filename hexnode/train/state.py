"""What a training run carries from stage to stage, and keeps in WORKDIR/features.pkl (`--refit`)
and in the per-case stage-2 cache (`--resume`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class Plan:
    quick: bool
    seg_seconds: float
    cnn_seconds: float
    width: int
    seg_hypo_weight: float  # BCE weight of hypodense blood (< 47 HU) in the U-Net's loss
    seg_hypo_share: float  # share of training crops centred on hypodense blood
    k_features: int
    workers: int
    seg_steps: int = 0  # > 0: a step budget instead of seconds (--quick: the same model on any machine)
    cnn_steps: int = 0


@dataclass
class Record:
    case_id: str
    split: str
    label: int
    he_probability: float | None
    volume_ml: float
    crop: np.ndarray | None = None  # CNN input from the mask used for features
    feats: dict[str, float] = field(default_factory=dict)
    slices: tuple[list[np.ndarray], list[np.ndarray]] | None = None
    seg: dict[str, Any] = field(default_factory=dict)
