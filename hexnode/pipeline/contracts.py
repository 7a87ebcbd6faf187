"""The contract between the model stage and the rest: typed values and the analyser's shape.

The worker (and `hexnode run`) calls an `Analyser` (hexnode.models.analyser.Models is the one
the node loads) and gets an `Analysed`: a mask and a `Prediction`, which it hands to
`hexnode.report`; neither side imports the other. An analyser that cannot make a statement about
a series raises `NotAnalysable` (with a `reason` for the report), `IncompleteCoverage` when the
series does not cover the brain: the errors are part of the contract, so the caller catches them
without importing the analyser.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

NOT_FOR_CLINICAL_USE = "Synthetic-trained demonstration model: not for clinical use."


@dataclass(frozen=True)
class OperatingPoint:
    """How the model set's own High/Low threshold performed on its held-out test split, as its
    manifest records it (metrics.test): what a reader needs to weigh a High or a Low."""

    sensitivity: float
    specificity: float
    n: int  # test cases
    npv: float | None = None  # model sets trained before it was recorded have none


@dataclass(frozen=True)
class ModelInfo:
    """What the report must say about the models that produced a result."""

    name: str  # e.g. "hexnode-he"
    version: str  # the manifest's version; also part of derived output UIDs
    threshold: float  # calibrated probability threshold for the High risk category
    synthetic_trained: bool = True
    # The smallest hemorrhage the model set reports (its post-processing's min_lesion_ml): a
    # "no hemorrhage" statement is qualified with it. 0: no limit named.
    min_lesion_ml: float = 0.0
    # The threshold's sensitivity/specificity/NPV on held-out cases; None: the set records none.
    operating_point: OperatingPoint | None = None


@dataclass(frozen=True)
class Findings:
    """Where the bleed is and how far it reaches (hexnode.models.findings measures them)."""

    side: str  # left | right | bilateral | midline (the patient's)
    location: str  # lobar | deep | infratentorial | intraventricular
    site: str  # frontal | parietal | temporal | occipital | basal_ganglia | thalamus | cerebellum | brainstem | ventricles
    ivh_ml: float  # blood in the ventricles
    midline_shift_mm: float | None  # the septum's offset from the skull's symmetry plane, + towards the
    # patient's left; None: the septum was not seen
    oedema_ml: float  # perihematomal oedema


@dataclass(frozen=True)
class ExpansionSign:
    """One NCCT sign of hematoma expansion as measured (hexnode.models.signs): present or absent,
    the deciding measure and the evidence in words, for the SR and the SC."""

    name: str  # blend | island | swirl | black_hole | hypodensity | irregular
    title: str  # "blend sign", ..., as a reader names it
    present: bool
    value: float  # the deciding measure (islands: their count)
    evidence: str  # e.g. "island sign: 3 separate small hematomas within 12 mm of the main one"


@dataclass(frozen=True)
class Prediction:
    """The model stage's answer for one series."""

    volume_ml: float  # hematoma volume from the mask and the slice geometry
    probability: float  # calibrated probability of hematoma expansion (growth > 6 ml or > 33 %)
    model: ModelInfo
    hemorrhage_detected: bool = True  # False: empty mask, volume 0, "no hemorrhage detected"
    notes: tuple[str, ...] = field(default=())  # e.g. "gantry tilt 18.0 degrees"
    findings: Findings | None = None  # None: no bleed, or a model set or analyser that does not measure them
    # the NCCT expansion signs, in hexnode.models.signs.SIGN_NAMES order; empty: none measured
    signs: tuple[ExpansionSign, ...] = field(default=())

    @property
    def high_risk(self) -> bool:
        return self.hemorrhage_detected and self.probability >= self.model.threshold

    @property
    def risk(self) -> str:
        """"High" or "Low"; "Not applicable" without a hematoma (there is nothing to expand, and
        "Low" would read as a statement about a bleed)."""
        if not self.hemorrhage_detected:
            return "Not applicable"
        return "High" if self.high_risk else "Low"

    @property
    def threshold(self) -> float:
        return self.model.threshold


class NotAnalysable(ValueError):
    """The model stage found the series unfit for any statement; `reason` is for the report.

    Deterministic for a series and a model set: a retry would give the same answer."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class IncompleteCoverage(NotAnalysable):
    """The series does not cover the brain (vertex to posterior fossa): no statement about it,
    least of all "no hemorrhage"."""


class Analysed(Protocol):
    """An analyser's answer for one series (read-only, so a frozen dataclass satisfies it)."""

    @property
    def mask(self) -> NDArray[np.uint8]: ...  # (slices, rows, cols), 1 = hemorrhage

    @property
    def prediction(self) -> Prediction: ...

    @property
    def timings(self) -> dict[str, float]: ...  # seconds per stage; "total" when known


class Analyser(Protocol):
    """The model stage as its callers see it."""

    @property
    def info(self) -> ModelInfo: ...  # also what a "not analysed" report names

    def analyse(
        self, hu: NDArray[np.floating[Any]], spacing: Sequence[float], notes: Sequence[str] = (), *,
        extents: Sequence[float] | None = None, head_up: bool = True, hints: Sequence[str] = (),
        orientation: Sequence[float] | None = None,
    ) -> Analysed:
        """`hu`: (slices, rows, cols) in HU; `spacing`: (z, y, x) mm; `notes`: the series' own facts,
        carried into the prediction; `extents`: each slice's extent along the normal when the
        spacing varies (mixed thickness, overlapping slices), every millimetre counted once;
        `head_up`: slice index grows towards the vertex; `hints`: the header's words, which the
        analyser may take as hints about what the images show, never as proof; `orientation`: Image
        Orientation (Patient) (row then column direction cosines, LPS), for the findings' sides."""
        ...
