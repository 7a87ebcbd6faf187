"""HE probability: LightGBM on the fused features, then the calibration stored in the manifest."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray


@dataclass(frozen=True)
class Calibration:
    """Platt scaling of the booster's raw score: p = sigmoid(a * raw + b)."""

    a: float
    b: float

    def apply(self, raw: NDArray[np.float64]) -> NDArray[np.float64]:
        return 1.0 / (1.0 + np.exp(-(self.a * np.asarray(raw, np.float64) + self.b)))

    @classmethod
    def from_manifest(cls, entry: Mapping[str, Any]) -> Calibration:
        if entry.get("method") != "platt":
            raise ValueError(f"unknown calibration method {entry.get('method')!r}")
        return cls(float(entry["a"]), float(entry["b"]))


class Booster:
    """A LightGBM text model; features are given by name and ordered as the model was trained."""

    def __init__(self, path: Path) -> None:
        import lightgbm as lgb

        self._b = lgb.Booster(model_file=str(path))
        self.feature_names: list[str] = list(self._b.feature_name())

    def matrix(self, rows: list[Mapping[str, float]]) -> NDArray[np.float64]:
        return np.array([[r.get(n, np.nan) for n in self.feature_names] for r in rows], np.float64)

    def raw(self, rows: list[Mapping[str, float]]) -> NDArray[np.float64]:
        return np.asarray(self._b.predict(self.matrix(rows), raw_score=True), np.float64)
