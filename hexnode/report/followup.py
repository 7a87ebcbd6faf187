"""The follow-up report (docs/architecture.md §4): a TID 1500 SR and an SC for a later scan of the same patient.

SR layout (Comprehensive 3D SR, title DCM 126000, in the follow-up's study):
  Imaging Measurements
    Measurement Group (TID 1411) "baseline": Time Point Context baseline, Hemorrhage in the Brain,
      referencing segment 1 of the baseline SEG, Volume (cm3), the baseline's predicted
      probability (%), threshold (%) and risk High/Low as reported then
    Measurement Group (TID 1411) "follow-up": Time Point Context follow-up, referencing segment 1
      of the follow-up SEG, Volume (cm3)
    Measurement Group (TID 1501) "change": volume change (cm3), relative change (%), hours since
      the baseline, Expansion observed Yes / No / Decreased (against the configured definition)
  Qualitative Evaluations: the one-line summary first, then the definition and the caveats.
Evidence: both SEGs and both CT series (the baseline's, from another study, in the Pertinent
Other Evidence Sequence).

SC: the two key slices side by side at the same scale (mm per pixel), outlines, volumes and
dates on each, the growth line and the baseline's prediction above, the clinical-use warning below.

Output UIDs derive from the follow-up series UID under a key of their own ("followup|..."), so a
re-run sends the same objects and they never collide with the follow-up's own SEG/SR/SC.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

import highdicom as hd
import numpy as np
from PIL import Image, ImageDraw, ImageFont
from pydicom.dataset import Dataset

from hexnode.pipeline.contracts import ModelInfo
from hexnode.report import codes
from hexnode.report.common import (
    MANUFACTURER,
    add_contributing_equipment,
    burned_in_warning,
    character_set,
    clinical_use_note,
    first_image,
    model_label,
    percent,
    round_volume_ml,
)
from hexnode.report.render import HEADLINE_RGB, OUTLINE_RGB, TEXT_RGB, WARN_RGB, slice_rgb
from hexnode.report.sc import sc_dataset
from hexnode.report.seg import SEGMENT_NUMBER, TRACKING_LABEL
from hexnode.report.sr import algorithm_id, measurement_report, plain
from hexnode.report.uids import derive_uid
from hexnode.series.followup import DEFINITIONS, Growth

FOLLOWUP_SR = (9904, "hexnode follow-up SR")
FOLLOWUP_SC = (9905, "hexnode follow-up summary")


class KeyImage(Protocol):
    """A key slice (hexnode.pipeline.run.KeySlice): HU and mask (rows, cols), spacing (row, column) mm."""

    @property
    def hu(self) -> np.ndarray: ...
    @property
    def mask(self) -> np.ndarray: ...
    @property
    def spacing(self) -> tuple[float, float]: ...
    @property
    def index(self) -> int: ...
    @property
    def n_slices(self) -> int: ...
    @property
    def sop_instance_uid(self) -> str: ...


@dataclass(frozen=True)
class Side:
    """One scan of the pair."""

    acquired_at: datetime
    volume_ml: float
    seg: Dataset  # its SEG (evidence, and the segment the SR references)
    images: Sequence[Dataset]  # its CT instances (at least Study/Series/SOP Class/SOP Instance UID)
    key: KeyImage | None = None


@dataclass(frozen=True)
class BaselinePrediction:
    probability: float
    threshold: float
    high_risk: bool
    model_version: str


def uid_key(followup_series_uid: str) -> str:
    return f"followup|{followup_series_uid}"


def definition_text(definition: str) -> str:
    absolute, relative = DEFINITIONS[definition]
    return f"growth > {absolute:g} ml or > {relative * 100:.0f} %"


def _when(t: datetime) -> str:
    return t.strftime("%Y-%m-%d %H:%M")


def summary_text(growth: Growth, hours: float, baseline: Side, followup: Side) -> str:
    observed = {"yes": "yes", "no": "no", "decreased": "no, the hematoma decreased (below half the baseline)"}
    return (f"Follow-up {hours:.1f} h after the baseline of {_when(baseline.acquired_at)}: hematoma "
            f"{round_volume_ml(growth.baseline_ml):.1f} ml -> {round_volume_ml(growth.followup_ml):.1f} ml, "
            f"{growth.line(hours)}. Expansion observed: {observed[growth.category]} "
            f"({definition_text(growth.definition)}).")


def prediction_text(pred: BaselinePrediction) -> str:
    risk = "High" if pred.high_risk else "Low"
    return (f"At baseline hexnode predicted an expansion probability of {percent(pred.probability):.1f} % "
            f"(threshold {percent(pred.threshold):.1f} %): {risk} risk (model {pred.model_version}).")


def _tracking(key: str, model: ModelInfo, revision: int, label: str) -> hd.sr.TrackingIdentifier:
    return hd.sr.TrackingIdentifier(uid=derive_uid(key, model.version, "tracking", revision),
                                    identifier=f"{TRACKING_LABEL} {label}")


def _volume_group(side: Side, label: str, order: int, model: ModelInfo, revision: int, extra_key: str,
                  pred: BaselinePrediction | None) -> hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations:
    series_uid = str(first_image(side.images).SeriesInstanceUID)
    measurements = [hd.sr.Measurement(name=codes.VOLUME, value=round_volume_ml(side.volume_ml),
                                      unit=codes.CUBIC_CENTIMETER)]
    evaluations = None
    if pred is not None:
        measurements += [
            hd.sr.Measurement(name=codes.HE_PROBABILITY, value=percent(pred.probability), unit=codes.PERCENT),
            hd.sr.Measurement(name=codes.HE_THRESHOLD, value=percent(pred.threshold), unit=codes.PERCENT),
        ]
        evaluations = [hd.sr.QualitativeEvaluation(name=codes.HE_BASELINE_RISK,
                                                   value=codes.HIGH if pred.high_risk else codes.LOW)]
    return hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=_tracking(extra_key, model, revision, label),
        referenced_segment=hd.sr.ReferencedSegment(
            sop_class_uid=side.seg.SOPClassUID, sop_instance_uid=side.seg.SOPInstanceUID,
            segment_number=SEGMENT_NUMBER, source_series=hd.sr.SourceSeriesForSegmentation(series_uid)),
        time_point_context=hd.sr.TimePointContext(time_point=label, time_point_order=order),
        finding_type=codes.HEMORRHAGE,
        finding_sites=[hd.sr.FindingSite(anatomic_location=codes.BRAIN)],
        algorithm_id=algorithm_id(model),
        measurements=measurements,
        qualitative_evaluations=evaluations,
    )


def _change_group(growth: Growth, hours: float, model: ModelInfo, revision: int, key: str
                  ) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    measurements = [hd.sr.Measurement(name=codes.HE_GROWTH, value=round(growth.growth_ml, 2),
                                      unit=codes.CUBIC_CENTIMETER)]
    if growth.growth_pct is not None:
        measurements.append(hd.sr.Measurement(name=codes.HE_GROWTH_PCT, value=round(growth.growth_pct, 1),
                                              unit=codes.PERCENT))
    measurements.append(hd.sr.Measurement(name=codes.HE_INTERVAL, value=round(hours, 2), unit=codes.HOUR))
    value = {"yes": codes.YES, "no": codes.NO, "decreased": codes.DECREASED}[growth.category]
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=_tracking(key + "|change", model, revision, "change"),
        finding_type=codes.HEMORRHAGE,
        finding_sites=[hd.sr.FindingSite(anatomic_location=codes.BRAIN)],
        algorithm_id=algorithm_id(model),
        measurements=measurements,
        qualitative_evaluations=[hd.sr.QualitativeEvaluation(name=codes.HE_OBSERVED, value=value)],
    )


def build_followup_sr(sources: Sequence[Dataset], baseline: Side, followup: Side, growth: Growth, hours: float,
                      pred: BaselinePrediction, model: ModelInfo, *, revision: int = 0) -> hd.sr.Comprehensive3DSR:
    src = first_image(sources)
    key = uid_key(str(src.SeriesInstanceUID))
    groups: list[hd.sr.MeasurementsAndQualitativeEvaluations
                 | hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations] = [
        _volume_group(baseline, "baseline", 1, model, revision, key + "|baseline", pred),
        _volume_group(followup, "follow-up", 2, model, revision, key + "|followup", None),
        _change_group(growth, hours, model, revision, key),
    ]
    comments = [
        summary_text(growth, hours, baseline, followup),
        prediction_text(pred),
        f"Both volumes segmented by {model_label(model)}." if pred.model_version == model.version else
        f"Baseline segmented by model {pred.model_version}, follow-up by {model_label(model)}.",
        clinical_use_note(model),
    ]
    report = measurement_report(model, groups, sources, [plain(c) for c in comments])
    sr = hd.sr.Comprehensive3DSR(
        evidence=[*sources, followup.seg, *baseline.images, baseline.seg],
        content=report,
        series_instance_uid=derive_uid(key, model.version, "sr-series", revision),
        series_number=FOLLOWUP_SR[0],
        sop_instance_uid=derive_uid(key, model.version, "sr", revision),
        instance_number=1,
        manufacturer=MANUFACTURER,
        is_complete=True, is_final=True, is_verified=False,
        performed_procedure_codes=[codes.PROCEDURE_REPORTED],
        series_description=FOLLOWUP_SR[1] + (f" (corrected, revision {revision})" if revision else ""),
        specific_character_set=character_set(src),
    )
    add_contributing_equipment(sr, model)
    return sr


# --- SC ---------------------------------------------------------------------------------------
PANEL = 512
HEADER = 150
FOOTER = 40


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def _same_scale(key: KeyImage, fov_mm: float) -> tuple[np.ndarray, np.ndarray]:
    """The slice padded with air to a square field of view of `fov_mm`, so both panels have the
    same mm per pixel (a reader compares sizes by eye)."""
    rows, cols = key.hu.shape
    px = max(key.spacing)
    side = max(rows, cols, int(round(fov_mm / px)))
    hu = np.full((side, side), -1000, dtype=np.int16)
    mask = np.zeros((side, side), dtype=bool)
    r0, c0 = (side - rows) // 2, (side - cols) // 2
    hu[r0:r0 + rows, c0:c0 + cols] = key.hu
    mask[r0:r0 + rows, c0:c0 + cols] = key.mask
    return hu, mask


def _panel(key: KeyImage | None, fov_mm: float, title: str, colour: tuple[int, int, int]) -> np.ndarray:
    if key is None:
        rgb = np.zeros((PANEL, PANEL, 3), dtype=np.uint8)
    else:
        hu, mask = _same_scale(key, fov_mm)
        rgb = slice_rgb(hu, mask)
    img = Image.fromarray(rgb)
    d = ImageDraw.Draw(img)
    d.rectangle((6, 6, PANEL - 6, 34), fill=(0, 0, 0))
    d.text((12, 10), title, font=_font(17), fill=colour)
    if key is None:
        d.text((12, PANEL // 2), "key slice not available", font=_font(16), fill=WARN_RGB)
    else:
        d.text((12, PANEL - 28), f"slice {key.index + 1} of {key.n_slices}", font=_font(14), fill=TEXT_RGB)
    return np.asarray(img)


def side_by_side(baseline: Side, followup: Side, growth: Growth, hours: float, pred: BaselinePrediction,
                 model: ModelInfo) -> np.ndarray:
    fovs = [max(k.hu.shape) * max(k.spacing) for k in (baseline.key, followup.key) if k is not None]
    fov = max(fovs) if fovs else 250.0
    left = _panel(baseline.key, fov, f"Baseline {_when(baseline.acquired_at)}: "
                  f"{round_volume_ml(baseline.volume_ml):.1f} ml", OUTLINE_RGB)
    right = _panel(followup.key, fov, f"Follow-up {_when(followup.acquired_at)}: "
                   f"{round_volume_ml(followup.volume_ml):.1f} ml", OUTLINE_RGB)
    canvas = Image.new("RGB", (2 * PANEL, HEADER + PANEL + FOOTER), (0, 0, 0))
    canvas.paste(Image.fromarray(left), (0, HEADER))
    canvas.paste(Image.fromarray(right), (PANEL, HEADER))
    d = ImageDraw.Draw(canvas)
    # the verdict by word in a fixed place, in white whatever it is (no green = all clear)
    verdict = {"yes": "EXPANSION OBSERVED", "no": "NO EXPANSION",
               "decreased": "DECREASED (below half the baseline)"}[growth.category]
    d.text((12, 8), verdict, font=_font(26), fill=HEADLINE_RGB)
    d.text((12, 44), growth.line(hours), font=_font(18), fill=TEXT_RGB)
    d.text((12, 70), f"definition: {definition_text(growth.definition)}", font=_font(15), fill=TEXT_RGB)
    risk = "HIGH" if pred.high_risk else "LOW"
    d.text((12, 94), f"baseline prediction: {percent(pred.probability):.1f} % (threshold "
           f"{percent(pred.threshold):.1f} %), {risk} risk; model {pred.model_version}", font=_font(15),
           fill=TEXT_RGB)
    d.text((12, 118), "panels at the same scale; outlines: segmented hematoma", font=_font(14), fill=TEXT_RGB)
    d.text((12, HEADER + PANEL + 10), burned_in_warning(model), font=_font(16), fill=WARN_RGB)
    return np.asarray(canvas)


def build_followup_sc(sources: Sequence[Dataset], baseline: Side, followup: Side, growth: Growth, hours: float,
                      pred: BaselinePrediction, model: ModelInfo, *, revision: int = 0) -> hd.sc.SCImage:
    src = first_image(sources)
    pixels = side_by_side(baseline, followup, growth, hours, pred, model)
    key_ref = None
    if followup.key is not None:
        match = [ds for ds in sources if str(ds.SOPInstanceUID) == followup.key.sop_instance_uid]
        if match:
            key_ref = (match[0], None)
    sc = sc_dataset(sources, pixels, model, revision=revision, not_analysed=False, key=key_ref,
                    uid_key=uid_key(str(src.SeriesInstanceUID)))
    sc.SeriesNumber = FOLLOWUP_SC[0]
    sc.SeriesDescription = FOLLOWUP_SC[1] + (f" (corrected, revision {revision})" if revision else "")
    sc.DerivationDescription = ("hexnode follow-up summary: baseline and follow-up key slices windowed 0-100 HU, "
                                "hematoma outlines, growth burned in")
    return sc


def build_followup(sources: Sequence[Dataset], baseline: Side, followup: Side, growth: Growth, hours: float,
                   pred: BaselinePrediction, model: ModelInfo, *, revision: int = 0) -> list[Dataset]:
    """[SR, SC] of the follow-up report; `sources` are the follow-up CT headers in slice order."""
    return [build_followup_sr(sources, baseline, followup, growth, hours, pred, model, revision=revision),
            build_followup_sc(sources, baseline, followup, growth, hours, pred, model, revision=revision)]
