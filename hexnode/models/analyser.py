"""The model stage the worker calls: `Models.load(dir).analyse(hu, spacing)`.

One `Models` per process: ONNX sessions, the pyradiomics extractor and the booster are created
once at load time, after every file's sha256 has been checked against the manifest.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from hexnode.models import features as F
from hexnode.models.brain import Cavity, coverage_problem, gate_mask, intracranial
from hexnode.models.findings import measure as measure_findings
from hexnode.models.floor import drop_floor_components
from hexnode.models.headcheck import check_head
from hexnode.models.predict import Booster, Calibration, MarkerScore
from hexnode.models.registry import (
    Manifest,
    ModelIntegrityError,
    choose_providers,
    load_manifest,
    make_session,
)
from hexnode.models.segment import PostProcessing, clean_mask, predict_mask, volume_ml
from hexnode.models.signs import NO_SIGNS, Signs, measure_signs
from hexnode.pipeline.contracts import IncompleteCoverage, ModelInfo, NotAnalysable, Prediction

log = logging.getLogger(__name__)

__all__ = ["Analysis", "ImplausibleSegmentation", "Models", "ModelIntegrityError", "NotANonContrastHead", "Scores"]

# The largest spontaneous hemorrhages reported are about 200-300 ml; far more than that means the
# segmentation failed (e.g. a scanner or reconstruction the model never saw), and running the
# feature stages on a whole-head mask would cost several GB of memory for a meaningless answer.
MAX_PLAUSIBLE_ML = 500.0


class ImplausibleSegmentation(NotAnalysable):
    """The segmentation marked more than `Models.max_plausible_ml` as hemorrhage: not analysed."""

    def __init__(self, volume: float, limit: float) -> None:
        super().__init__(f"segmentation implausible: {volume:.0f} ml marked as hemorrhage "
                         f"(more than {limit:.0f} ml); not analysed")


class NotANonContrastHead(NotAnalysable):
    """The images are not a non-contrast human head (no head, no brain inside the skull, contrast
    in the sinuses: hexnode.models.headcheck); `reason` names what was seen."""


@dataclass(frozen=True)
class Analysis:
    mask: NDArray[np.uint8]
    prediction: Prediction
    timings: dict[str, float] = field(default_factory=dict)
    signs: Signs = NO_SIGNS  # the NCCT expansion signs with their measures (also in prediction.signs)


@dataclass(frozen=True)
class Scores:
    """Everything the evaluation needs for one case besides the mask."""

    probability: float  # fused, calibrated
    radiomics_raw: float  # radiomics-only booster (ablation)
    cnn_logit: float  # CNN-only (ablation)
    volume_ml: float
    marker_logit: float = float("nan")  # marker score only (ablation); NaN for model sets without it


class Models:
    def __init__(self, manifest: Manifest, providers: list[str], threads: int = 0) -> None:
        self.manifest = manifest
        self.max_plausible_ml = MAX_PLAUSIBLE_ML
        data = manifest.data
        self.seg = make_session(manifest.path("seg"), providers, threads)
        self.cnn = make_session(manifest.path("cnn"), providers, threads)
        # model sets trained before the marker score existed have no markers.json
        self.markers = MarkerScore.load(manifest.path("markers")) if manifest.has("markers") else None
        self.fused = Booster(manifest.path("lgbm"))
        self.radiomics_only = Booster(manifest.path("lgbm_radiomics"))
        # only the radiomics features the two boosters read (60 of ~1,300): 1.2-1.8x faster, same values
        self.radiomics = F.RadiomicsExtractor(manifest.path("radiomics"),
                                              only=self.fused.feature_names + self.radiomics_only.feature_names)
        self.calibration = Calibration.from_manifest(data["calibration"])
        pp = data["preprocessing"]["postprocessing"]
        self.post = PostProcessing(
            threshold=float(pp["threshold"]),
            min_component_ml=float(pp["min_component_ml"]),
            fill_holes=bool(pp["fill_holes"]),
            remote_min_ml=float(pp.get("remote_min_ml", 0.0)),  # absent: a model set from before the rule
            remote_reach_mm=float(pp.get("remote_reach_mm", PostProcessing.remote_reach_mm)),
            min_lesion_ml=float(pp.get("min_lesion_ml", 0.0)),  # absent: a set from before the limit
        )
        self.info = ModelInfo(
            name=manifest.name,
            version=manifest.version,
            threshold=manifest.threshold,
            synthetic_trained=manifest.synthetic_trained,
            min_lesion_ml=self.post.min_lesion_ml,
            operating_point=manifest.operating_point,
        )
        self.provider = self.seg.get_providers()[0]
        log.info("models %s %s on %s", self.info.name, self.info.version, self.provider)

    @classmethod
    def load(cls, models_dir: str | Path, providers: Sequence[str] | None = None, *, threads: int = 0) -> Models:
        """Verify every file against the manifest, then open the sessions (`threads` 0: ORT default)."""
        manifest = load_manifest(models_dir, verify=True)
        return cls(manifest, choose_providers(tuple(providers) if providers else None), threads)

    # -- stages -------------------------------------------------------------------------------
    def segment(self, hu: NDArray[np.floating[Any]], spacing: Sequence[float], *,
                max_raw_ml: float | None = None, cavity: Cavity | None = None, head_up: bool = True
                ) -> NDArray[np.uint8]:
        """The hematoma mask: U-Net, then the intracranial gate (`cavity`, computed when not
        given), the skull-base partial-volume rule, then the post-processing."""
        if cavity is None:
            cavity = intracranial(hu, spacing, head_up=head_up)
        # thresholded batch by batch: no float32 probability volume next to the HU volume; only on
        # the slices the cavity reaches (the gate empties the others: the face and neck below the
        # skull base, the vertex above it)
        mask = predict_mask(self.seg, np.asarray(hu, np.float32), self.post.threshold,
                            slices=np.asarray(cavity.mask.any(axis=(1, 2)), bool))
        if max_raw_ml is not None:
            # Labelling the components of a whole-head mask costs GBs; post-processing only removes
            # small islands (PostProcessing), so it cannot rescue a mask this large.
            raw = volume_ml(mask, spacing)
            if raw > max_raw_ml:
                raise ImplausibleSegmentation(raw, self.max_plausible_ml)
        gate_mask(mask, cavity, spacing)
        drop_floor_components(mask, hu, cavity, head_up=head_up, share=self.post.floor_share)
        return clean_mask(mask, spacing, self.post)

    def cnn_outputs(self, hu: NDArray[np.floating[Any]], mask: NDArray[np.generic], spacing: Sequence[float]) -> dict[str, float]:
        x = F.cnn_input(hu, mask, spacing)
        emb, logit = self.cnn.run(["embedding", "logit"], {"crop": x})
        out = {f"cnn_{i:02d}": float(v) for i, v in enumerate(np.asarray(emb)[0])}
        out["cnn_logit"] = float(np.asarray(logit).ravel()[0])
        return out

    def features(
        self, hu: NDArray[np.floating[Any]], mask: NDArray[np.generic], spacing: Sequence[float], timings: dict[str, float],
        extents: Sequence[float] | None = None, *, signs: Signs | None = None,
    ) -> dict[str, float]:
        """Every feature the boosters may read; `signs`: already measured on this mask (else measured here)."""
        t = time.perf_counter()
        feats = dict(self.radiomics.extract(hu, mask, spacing))
        timings["radiomics"] = time.perf_counter() - t
        t = time.perf_counter()
        feats.update(F.context_features(hu, mask, spacing))
        feats.update((signs if signs is not None else measure_signs(hu, mask, spacing)).features())
        if extents is not None:
            # mixed slice thickness: texture and shape on the stacked slices with the mean spacing,
            # but the volume exact, slice by slice
            vol = volume_ml(mask, spacing, extents)
            feats["volume_ml"], feats["log_volume"] = vol, float(np.log(max(vol, 1e-3)))
        if self.markers is not None:
            feats["marker_logit"] = self.markers.logit(feats)
        feats.update(self.cnn_outputs(hu, mask, spacing))
        timings["cnn"] = time.perf_counter() - t
        return feats

    def scores(self, feats: dict[str, float]) -> Scores:
        raw = self.fused.raw([feats])
        return Scores(
            probability=float(self.calibration.apply(raw)[0]),
            radiomics_raw=float(self.radiomics_only.raw([feats])[0]),
            cnn_logit=float(feats["cnn_logit"]),
            volume_ml=float(feats["volume_ml"]),
            marker_logit=float(feats.get("marker_logit", float("nan"))),
        )

    # -- the worker's entry point ---------------------------------------------------------------
    def analyse(
        self, hu: NDArray[np.floating[Any]], spacing: Sequence[float], notes: Sequence[str] = (), *,
        extents: Sequence[float] | None = None, head_up: bool = True, hints: Sequence[str] = (),
        orientation: Sequence[float] | None = None,
    ) -> Analysis:
        """`extents`: each slice's extent along the normal when the slice thickness is mixed;
        `orientation`: the source's Image Orientation (Patient), whose directions the findings' sides
        are read in (None: no findings measured); `head_up`: slice index grows towards the vertex; `hints`: the header's words (description,
        protocol, "agent:" + Contrast/Bolus Agent), which the image checks may take as hints.
        Raises `NotAnalysable` (not a non-contrast head, incomplete coverage, implausible
        segmentation)."""
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        cavity = intracranial(hu, spacing, head_up=head_up, extents=extents)
        timings["cavity"] = time.perf_counter() - t0
        t = time.perf_counter()
        seen = check_head(hu, spacing, cavity, head_up=head_up, hints=hints)
        timings["head check"] = time.perf_counter() - t
        if seen.problem is not None:
            log.info("not a non-contrast head: %s", seen.summary())
            raise NotANonContrastHead(seen.problem)
        problem = coverage_problem(cavity, head_up=head_up)
        if problem is not None:
            raise IncompleteCoverage(problem)
        t = time.perf_counter()
        mask = self.segment(hu, spacing, max_raw_ml=2 * self.max_plausible_ml, cavity=cavity, head_up=head_up)
        timings["segmentation"] = time.perf_counter() - t
        if not mask.any():
            pred = Prediction(0.0, 0.0, self.info, hemorrhage_detected=False, notes=tuple(notes))
            timings["total"] = time.perf_counter() - t0
            return Analysis(mask, pred, timings)
        volume = volume_ml(mask, spacing, extents)
        if volume > self.max_plausible_ml:
            raise ImplausibleSegmentation(volume, self.max_plausible_ml)
        found = None
        if orientation is not None:
            t = time.perf_counter()
            found = measure_findings(hu, mask, spacing, cavity, orientation, head_up=head_up, extents=extents)
            timings["findings"] = time.perf_counter() - t
        del cavity
        t = time.perf_counter()
        signs = measure_signs(hu, mask, spacing)
        timings["signs"] = time.perf_counter() - t
        feats = self.features(hu, mask, spacing, timings, extents, signs=signs)
        t = time.perf_counter()
        prob = float(self.calibration.apply(self.fused.raw([feats]))[0])
        timings["fusion"] = time.perf_counter() - t
        pred = Prediction(volume, prob, self.info, hemorrhage_detected=True, notes=tuple(notes), findings=found,
                          signs=signs.signs)
        timings["total"] = time.perf_counter() - t0
        return Analysis(mask, pred, timings, signs)
