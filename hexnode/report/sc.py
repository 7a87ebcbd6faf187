"""Secondary Capture summary (docs/architecture.md §4): what a radiologist sees first in an image-only viewer."""

from __future__ import annotations

from collections.abc import Sequence

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset

from hexnode.pipeline.contracts import ModelInfo, Prediction
from hexnode.report import codes
from hexnode.report.common import (
    MANUFACTURER,
    SC_SERIES,
    add_contributing_equipment,
    burned_in_warning,
    character_set,
    first_image,
    model_label,
    probability_pair,
    risk_meaning,
    round_length_mm,
    round_volume_ml,
    series_description,
    series_number_text,
)
from hexnode.report.frames import n_slices, slice_source
from hexnode.report.outline import KeySliceROI
from hexnode.report.render import (
    HEADLINE_RGB,
    WARN_RGB,
    Line,
    Markers,
    annotate,
    blank,
    compose,
    keep_together,
    key_slice,
    slice_rgb,
)
from hexnode.report.uids import derive_uid


def _letter(vector: Sequence[float]) -> str:
    """Patient-orientation letter of the dominant axis of a direction cosine (LPS)."""
    axis = int(np.argmax(np.abs(vector)))
    pos, neg = (("L", "R"), ("P", "A"), ("H", "F"))[axis]
    return pos if vector[axis] > 0 else neg


def _iop(src: Dataset) -> list[float]:
    return [float(v) for v in src.get("ImageOrientationPatient", [1, 0, 0, 0, 1, 0])]


def patient_orientation(src: Dataset) -> tuple[str, str]:
    iop = _iop(src)
    return _letter(iop[:3]), _letter(iop[3:])


def orientation_markers(src: Dataset) -> Markers:
    """The letters at the slice's edges: the column index grows towards the row direction cosine
    (the right edge) and the row index towards the column cosine (the bottom edge); a standard
    axial head CT reads R left, L right, A top, P bottom."""
    iop = _iop(src)
    row, col = iop[:3], iop[3:]
    return Markers(left=_letter([-v for v in row]), right=_letter(row),
                   top=_letter([-v for v in col]), bottom=_letter(col))


def source_line(src: Dataset) -> str:
    desc = str(src.get("SeriesDescription", "") or "").strip()
    return f"Source: {series_number_text(src)}" + (f" '{desc}'" if desc else "")


def sc_dataset(
    sources: Sequence[Dataset],
    pixels: np.ndarray,
    model: ModelInfo,
    *,
    revision: int,
    not_analysed: bool,
    key: tuple[Dataset, int | None] | None,
    uid_key: str | None = None,
) -> hd.sc.SCImage:
    src = first_image(sources)
    series_uid = uid_key or str(src.SeriesInstanceUID)  # uid_key: as in sr.document
    sc = hd.sc.SCImage(
        pixel_array=pixels,
        photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
        bits_allocated=8,
        coordinate_system=hd.CoordinateSystemNames.PATIENT,
        study_instance_uid=str(src.StudyInstanceUID),
        series_instance_uid=derive_uid(series_uid, model.version, "sc-series", revision),
        series_number=SC_SERIES.number,
        sop_instance_uid=derive_uid(series_uid, model.version, "sc", revision),
        instance_number=1,
        manufacturer=MANUFACTURER,
        patient_id=src.get("PatientID"),
        patient_name=src.get("PatientName"),
        patient_birth_date=src.get("PatientBirthDate"),
        patient_sex=src.get("PatientSex") or None,
        accession_number=src.get("AccessionNumber"),
        study_id=src.get("StudyID"),
        study_date=src.get("StudyDate"),
        study_time=src.get("StudyTime"),
        referring_physician_name=src.get("ReferringPhysicianName"),
        patient_orientation=patient_orientation(src),
        specific_character_set=character_set(src),
        series_description=series_description(SC_SERIES, revision, not_analysed=not_analysed),
    )
    sc.copy_patient_and_study_information(src)
    sc.BurnedInAnnotation = "YES"
    # Laterality (General Series, 2C) depends on the body part: copy both, or say "unknown".
    if "BodyPartExamined" in src:
        sc.BodyPartExamined = src.BodyPartExamined
        if "Laterality" in src:
            sc.Laterality = src.Laterality
    else:
        sc.Laterality = ""
    sc.DerivationDescription = (
        "hexnode report: reason the series was not analysed"
        if not_analysed
        else "hexnode summary: key slice windowed 0-100 HU, hematoma outline, results burned in"
    )
    if key is not None:
        key_source, frame = key
        ref = Dataset()
        ref.ReferencedSOPClassUID = key_source.SOPClassUID
        ref.ReferencedSOPInstanceUID = key_source.SOPInstanceUID
        if frame is not None:
            ref.ReferencedFrameNumber = frame
        purpose = Dataset()
        purpose.CodeValue = codes.SOURCE_IMAGE_FOR_PROCESSING.value
        purpose.CodingSchemeDesignator = codes.SOURCE_IMAGE_FOR_PROCESSING.scheme_designator
        purpose.CodeMeaning = codes.SOURCE_IMAGE_FOR_PROCESSING.meaning
        ref.PurposeOfReferenceCodeSequence = [purpose]
        sc.SourceImageSequence = [ref]
    add_contributing_equipment(sc, model)
    return sc


SIGN_WORDS = {"blend": "blend", "island": "island", "swirl": "swirl", "black_hole": "black hole",
              "hypodensity": "hypodensities", "irregular": "irregular shape"}


def signs_line(prediction: Prediction) -> str | None:
    """'Signs: blend, island (3), hypodensities' / 'Signs: none of 6 (blend, island, ...)'; None
    when no signs were measured (no hematoma, or an analyser without them)."""
    if not prediction.hemorrhage_detected or not prediction.signs:
        return None
    words = [SIGN_WORDS.get(s.name, s.name) + (f" ({int(s.value)})" if s.name == "island" else "")
             for s in prediction.signs if s.present]
    return "Signs: " + (", ".join(words) if words else f"none of {len(prediction.signs)} read")


def summary_lines(
    prediction: Prediction, selection_note: str | None, key_index: int, n_slices: int,
    roi: KeySliceROI | None = None,
) -> tuple[list[Line], list[Line]]:
    model = prediction.model
    # the same percents as the SR's values and summary sentence (and so the viewer's label)
    prob, thr = probability_pair(prediction.probability, model.threshold)
    if prediction.hemorrhage_detected:
        risk = "HIGH" if prediction.high_risk else "LOW"
        top = [
            Line(f"Expansion risk: {risk}", 26, HEADLINE_RGB),
            Line(f"Expansion probability {prob} (threshold {thr})", 16),
            Line(f"Hematoma volume {round_volume_ml(prediction.volume_ml):.1f} ml", 16),
        ]
        top.extend(findings_lines(prediction))
        if roi is not None:
            top.append(Line(
                f"ABC/2 {round_volume_ml(roi.abc2_ml):.1f} ml; axes {round_length_mm(roi.long_axis_mm):.0f} x "
                f"{round_length_mm(roi.short_axis_mm):.0f} mm on this slice", 14))
        signs = signs_line(prediction)
        if signs:
            top.append(Line(signs, 14))
    else:
        top = [
            Line("No hemorrhage detected", 26, HEADLINE_RGB),
            Line("Hematoma volume 0.0 ml; expansion risk not applicable", 16),
        ]
        if model.min_lesion_ml > 0:
            # what "none" means: islands below the model set's floor are not called a hemorrhage
            top.append(Line(f"Smallest hemorrhage reported: {model.min_lesion_ml:g} ml", 14))
    bottom = [Line(note, 14, WARN_RGB) for note in prediction.notes]
    if selection_note:
        bottom.append(Line(selection_note, 14))
    bottom += [
        Line(f"Model {model_label(model)}; key slice {key_index + 1} of {n_slices}", 14),
        Line(burned_in_warning(model), 15, WARN_RGB),
    ]
    top += [Line("", 8), Line(risk_meaning(model), 14)]  # read with the result it qualifies
    return top, bottom


def findings_lines(prediction: Prediction) -> list[Line]:
    """The findings section of the text band: side, site, IVH and midline shift in one line, the
    oedema below it (report/findings.py)."""
    from hexnode.report import findings as section

    head = section.headline(prediction)
    if head is None or prediction.findings is None:
        return []
    # wrap between the headline's phrases, never inside one ("MLS 3 mm", "12.4 ml")
    first, *rest = head.split(", ")
    head = ", ".join([first, *(keep_together(part) for part in rest)])
    return [Line(head, 16), Line(f"Perihematomal oedema {prediction.findings.oedema_ml:.1f} ml", 14)]


def build_sc(
    sources: Sequence[Dataset],
    hu: np.ndarray,
    mask: np.ndarray,
    prediction: Prediction,
    *,
    key: tuple[int, KeySliceROI] | None = None,
    revision: int = 0,
    selection_note: str | None = None,
) -> hd.sc.SCImage:
    if hu.shape != mask.shape or hu.shape[0] != n_slices(sources):
        raise ValueError(f"hu {hu.shape}, mask {mask.shape} and {n_slices(sources)} source slices disagree")
    k = key[0] if key is not None else key_slice(mask)
    top, bottom = summary_lines(prediction, selection_note, k, hu.shape[0], key[1] if key is not None else None)
    if revision:
        bottom.insert(0, Line(f"Corrected result, revision {revision}", 14, WARN_RGB))
    pixels = compose(slice_rgb(hu[k], mask[k]), orientation_markers(first_image(sources)), top, bottom)
    return sc_dataset(
        sources, pixels, prediction.model, revision=revision, not_analysed=False, key=slice_source(sources, k)
    )


def build_message_sc(
    sources: Sequence[Dataset], reason: str, model: ModelInfo, *, revision: int = 0
) -> hd.sc.SCImage:
    top = [
        Line("NOT ANALYSED", 28, WARN_RGB),
        Line(f"Reason: {reason}", 18),
        Line(source_line(first_image(sources)), 16),
    ]
    if revision:
        top.append(Line(f"Corrected report, revision {revision}", 14, WARN_RGB))
    bottom = [
        Line("No hematoma expansion result will follow for this series.", 14),
        Line(f"Model {model_label(model)}", 14),
        Line(burned_in_warning(model), 15, WARN_RGB),
    ]
    pixels = annotate(blank(), top, bottom)
    return sc_dataset(sources, pixels, model, revision=revision, not_analysed=True, key=None)
