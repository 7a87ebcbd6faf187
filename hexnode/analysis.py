"""Typed values that cross the boundary between the model stage and the report stage.

The worker gets a `Prediction` from `hexnode.models` and hands it, with the mask, to
`hexnode.report`; neither side imports the other.
"""

from __future__ import annotations

from dataclasses import dataclass, field

NOT_FOR_CLINICAL_USE = "Synthetic-trained demonstration model: not for clinical use."


@dataclass(frozen=True)
class ModelInfo:
    """What the report must say about the models that produced a result."""

    name: str  # e.g. "hexnode-he"
    version: str  # the manifest's version; also part of derived output UIDs
    threshold: float  # calibrated probability threshold for the High risk category
    synthetic_trained: bool = True


@dataclass(frozen=True)
class Prediction:
    """The model stage's answer for one series."""

    volume_ml: float  # hematoma volume from the mask and the slice geometry
    probability: float  # calibrated probability of hematoma expansion (growth > 6 ml or > 33 %)
    model: ModelInfo
    hemorrhage_detected: bool = True  # False: empty mask, volume 0, "no hemorrhage detected"
    notes: tuple[str, ...] = field(default=())  # e.g. "gantry tilt 18.0 degrees"

    @property
    def high_risk(self) -> bool:
        return self.hemorrhage_detected and self.probability >= self.model.threshold

    @property
    def threshold(self) -> float:
        return self.model.threshold
