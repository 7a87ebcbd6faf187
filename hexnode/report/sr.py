"""TID 1500 Measurement Report (Comprehensive 3D SR) for one analysed series (DESIGN §4).

Layout:
  Imaging Measurement Report (DCM 126000)
    language, device observer (the algorithm), procedure reported (LN 25045-6)
    Image Library: every CT image of the series (shared descriptors per group, see library.py)
    Imaging Measurements / Measurement Group (TID 1411): finding Hemorrhage in the Brain,
      referencing SEG segment 1 explicitly, algorithm identification (name, version, threshold),
      Volume (cm3), HE probability (1), threshold (1), risk High/Low
    Qualitative Evaluations (TID 1500 row 12): TEXT comments (not for clinical use, model, tilt,
      series selection, "no hemorrhage detected", supersedes)
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable, Sequence

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.coding import Code
from pydicom.uid import Comprehensive3DSRStorage

from hexnode.analysis import ModelInfo, Prediction
from hexnode.report import codes
from hexnode.report.common import (
    ALGORITHM_NAME,
    MANUFACTURER,
    SR_SERIES,
    add_contributing_equipment,
    character_set,
    clinical_use_note,
    first_image,
    model_label,
    round_probability,
    round_volume_ml,
    series_description,
)
from hexnode.report.library import image_library
from hexnode.report.seg import SEGMENT_NUMBER, TRACKING_LABEL
from hexnode.report.uids import derive_uid, device_uid

QUALITATIVE_EVALUATIONS = Code("C0034375", "UMLS", "Qualitative Evaluations")


def observation_context(model: ModelInfo) -> hd.sr.ObservationContext:
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=device_uid(model.name, model.version),
        name=ALGORITHM_NAME,
        manufacturer_name=MANUFACTURER,
        model_name=model_label(model),
    )
    return hd.sr.ObservationContext(
        observer_device_context=hd.sr.ObserverContext(
            observer_type=hd.sr.CodedConcept.from_code(codes.DEVICE_OBSERVER),
            observer_identifying_attributes=device,
        )
    )


def algorithm_id(model: ModelInfo) -> hd.sr.AlgorithmIdentification:
    return hd.sr.AlgorithmIdentification(
        name=ALGORITHM_NAME,
        version=model.version,
        parameters=[
            f"model {model_label(model)}",
            f"HE probability threshold {round_probability(model.threshold):.3f}",
        ],
    )


def plain(text: str) -> str:
    """ASCII form of our own free text (notes, reasons): it must encode under any character set
    the source declares (or none), whatever a note writer typed ("18°", an en dash)."""
    text = text.replace("\u00b0", " deg").replace("\u2013", "-").replace("\u2014", "-")
    return unicodedata.normalize("NFKD", text).encode("ascii", "replace").decode("ascii")


def comments_container(texts: Iterable[str]) -> hd.sr.ContainerContentItem:
    """TID 1500 row 12 'Qualitative Evaluations' holding free-text comments (row 14)."""
    container = hd.sr.ContainerContentItem(
        name=QUALITATIVE_EVALUATIONS, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
    )
    container.ContentSequence = hd.sr.ContentSequence(
        [
            hd.sr.TextContentItem(
                name=codes.COMMENT, value=plain(text), relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
            )
            for text in texts
            if text
        ]
    )
    return container


def supersedes_text(revision: int) -> str | None:
    if revision <= 0:
        return None
    return (
        f"Corrected result (revision {revision}) after the series changed: it supersedes "
        f"hexnode revision {revision - 1} for this series."
    )


def predecessor(study_uid: str, series_uid: str, model: ModelInfo, revision: int) -> list[Dataset]:
    """The SR of revision - 1 (same UID slot whether that was a result or 'not analysed')."""
    if revision <= 0:
        return []
    ds = Dataset()
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = derive_uid(series_uid, model.version, "sr-series", revision - 1)
    ds.SOPClassUID = Comprehensive3DSRStorage
    ds.SOPInstanceUID = derive_uid(series_uid, model.version, "sr", revision - 1)
    return [ds]


def image_sources(sources: Sequence[Dataset]) -> list[Dataset]:
    # A rejected series may hold non-images (a dose report, a localizer without geometry):
    # the Image Library lists only what can be described as an image.
    return [ds for ds in sources if "Rows" in ds and "SOPInstanceUID" in ds]


def with_library_and_comments(
    report: hd.sr.MeasurementReport, sources: Sequence[Dataset], comments: Iterable[str]
) -> hd.sr.MeasurementReport:
    """Add the Image Library (TID 1600, after 'procedure reported') and the comments (row 12)."""
    root = report[0].ContentSequence
    images = image_sources(sources)
    if images:
        index = next(
            (i + 1 for i, item in enumerate(root) if item.ConceptNameCodeSequence[0].CodeValue == "121058"),
            len(root),
        )
        root.insert(index, image_library(images))
    root.append(comments_container(comments))
    return report


def document(
    sources: Sequence[Dataset],
    report: hd.sr.MeasurementReport,
    model: ModelInfo,
    *,
    revision: int,
    not_analysed: bool,
    extra_evidence: Sequence[Dataset] = (),
    uid_key: str | None = None,
) -> hd.sr.Comprehensive3DSR:
    """`uid_key`: what the derived UIDs are keyed on instead of the source series UID (a
    study-level report keys them on its study, hexnode.report.study)."""
    src = first_image(sources)
    series_uid = uid_key or str(src.SeriesInstanceUID)
    sr = hd.sr.Comprehensive3DSR(
        evidence=[*sources, *extra_evidence],
        content=report,
        series_instance_uid=derive_uid(series_uid, model.version, "sr-series", revision),
        series_number=SR_SERIES.number,
        sop_instance_uid=derive_uid(series_uid, model.version, "sr", revision),
        instance_number=1,
        manufacturer=MANUFACTURER,
        is_complete=True,
        is_final=True,
        is_verified=False,
        performed_procedure_codes=[codes.PROCEDURE_REPORTED],
        previous_versions=predecessor(str(src.StudyInstanceUID), series_uid, model, revision) or None,
        series_description=series_description(SR_SERIES, revision, not_analysed=not_analysed),
        specific_character_set=character_set(src),
    )
    add_contributing_equipment(sr, model)
    return sr


def measurement_group(
    seg: Dataset, series_uid: str, prediction: Prediction, revision: int
) -> hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations:
    model = prediction.model
    return hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=derive_uid(series_uid, model.version, "tracking", revision), identifier=TRACKING_LABEL
        ),
        referenced_segment=hd.sr.ReferencedSegment(
            sop_class_uid=seg.SOPClassUID,
            sop_instance_uid=seg.SOPInstanceUID,
            segment_number=SEGMENT_NUMBER,
            source_series=hd.sr.SourceSeriesForSegmentation(series_uid),
        ),
        finding_type=codes.HEMORRHAGE,
        finding_category=codes.MORPHOLOGICALLY_ABNORMAL_STRUCTURE,
        finding_sites=[hd.sr.FindingSite(anatomic_location=codes.BRAIN)],
        algorithm_id=algorithm_id(model),
        measurements=[
            hd.sr.Measurement(
                name=codes.VOLUME,
                value=round_volume_ml(prediction.volume_ml if prediction.hemorrhage_detected else 0.0),
                unit=codes.CUBIC_CENTIMETER,
            ),
            hd.sr.Measurement(
                name=codes.HE_PROBABILITY,
                value=round_probability(prediction.probability),
                unit=codes.NO_UNITS,
            ),
            hd.sr.Measurement(
                name=codes.HE_THRESHOLD,
                value=round_probability(model.threshold),
                unit=codes.NO_UNITS,
            ),
        ],
        qualitative_evaluations=[
            hd.sr.QualitativeEvaluation(
                name=codes.HE_RISK, value=codes.HIGH if prediction.high_risk else codes.LOW
            )
        ],
    )


def result_comments(prediction: Prediction, selection_note: str | None, revision: int) -> list[str]:
    model = prediction.model
    texts = [
        clinical_use_note(model),
        f"Model {model_label(model)}; HE risk High when probability >= "
        f"{round_probability(model.threshold):.3f}.",
    ]
    if not prediction.hemorrhage_detected:
        texts.append("No hemorrhage detected.")
    texts.extend(prediction.notes)
    if selection_note:
        texts.append(selection_note)
    texts.append(supersedes_text(revision) or "")
    return texts


def build_sr(
    sources: Sequence[Dataset],
    seg: Dataset,
    prediction: Prediction,
    *,
    revision: int = 0,
    selection_note: str | None = None,
) -> hd.sr.Comprehensive3DSR:
    src = first_image(sources)
    series_uid = str(src.SeriesInstanceUID)
    report = hd.sr.MeasurementReport(
        observation_context=observation_context(prediction.model),
        procedure_reported=codes.PROCEDURE_REPORTED,
        imaging_measurements=[measurement_group(seg, series_uid, prediction, revision)],
        title=codes.TITLE,
    )
    with_library_and_comments(report, sources, result_comments(prediction, selection_note, revision))
    return document(
        sources, report, prediction.model, revision=revision, not_analysed=False, extra_evidence=[seg]
    )
