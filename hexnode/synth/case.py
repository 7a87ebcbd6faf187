"""What the generator hands out: a `Case` (image, mask, geometry, acquisition) and its `Truth`."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from hexnode.synth import hemodel
from hexnode.synth.geometry import Geometry

#: codes of `Case.labels` (only with `with_labels=True`): pure tissue voxels of the noise-free phantom;
#: voxels at tissue borders (partial volume) are OTHER
LABELS: dict[str, int] = {
    "outside": 0, "soft_tissue": 1, "bone": 2, "csf": 3, "grey": 4, "white": 5, "blood": 6,
    "hypodense_blood": 7, "dense_focus": 8, "other": 9,
}

@dataclass(frozen=True)
class Truth:
    """Ground truth written beside the series (never into it)."""

    seed: int
    index: int
    volume_ml: float  # from the mask and the voxel spacing (sx * sy * sz along the normal)
    followup_volume_ml: float
    he_label: bool
    he_probability: float
    logit: float
    markers: dict[str, float]  # the inputs of p (see module docstring), as rendered
    location: str
    hard: dict[str, bool]  # small (< 3 ml), motion, streaks
    tilt_deg: float
    thin: bool
    n_slices: int
    slice_thickness_mm: float
    spacing_mm: tuple[float, float, float]
    noise_sd: float  # sd of the correlated noise above the skull base (x1.3 at the foramen magnum)
    hematoma_hu: float
    hypodense_hu: float
    oedema_hu: float
    tissue_hu: dict[str, float]
    calcifications: list[dict[str, Any]]
    centre_voxel: tuple[float, float, float]  # (z, y, x) of the main blob centre
    artefact_slices: dict[str, list[int]] = field(default_factory=dict)  # motion / streaks: slice indices
    model_version: str = hemodel.MODEL_VERSION
    normal: bool = False  # a head without blood
    thickness_runs: list[list[float]] = field(default_factory=list)  # mixed: [thickness mm, slices] bottom up
    # What the radiologist reads (hexnode.models.findings measures the same): the patient's side of the
    # bleed (left | right | bilateral | none), its site by the findings' anatomical rule (a lobe,
    # basal_ganglia | thalamus, cerebellum, ventricles), blood inside the ventricles and oedema
    # (at least half-way to the oedema value, in parenchyma) in ml, and the septum's shift off the
    # midline (mm, + towards the patient's left; only `generate_case(mass_effect=True)` shifts it)
    side: str = ""
    site: str = ""
    ivh_ml: float = 0.0
    oedema_ml: float = 0.0
    midline_shift_mm: float = 0.0
    # the NCCT expansion signs as drawn (hexnode.synth.signtruth: 1.0 present, 0.0 absent); empty: normal head
    signs: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["spacing_mm"] = list(self.spacing_mm)
        d["centre_voxel"] = list(self.centre_voxel)
        return d


@dataclass(frozen=True)
class Acquisition:
    kvp: float
    kernel: str
    tube_current_ma: int
    exposure_mas: int
    ctdi_vol: float
    manufacturer_model: str


@dataclass
class Case:
    hu: np.ndarray  # int16 (z, y, x)
    mask: np.ndarray  # uint8 (z, y, x)
    spacing: tuple[float, float, float]  # (sx, sy, sz) mm, sz along the slice normal
    truth: Truth
    geometry: Geometry
    acquisition: Acquisition
    seed: int
    index: int
    labels: np.ndarray | None = None  # uint8 (z, y, x) LABELS codes, only with with_labels=True
    extra: dict[str, Any] = field(default_factory=dict)
