"""TID 1500 Measurement Report (Comprehensive 3D SR) for one analysed series (docs/architecture.md §4).

Layout:
  Imaging Measurement Report (DCM 126000)
    language, device observer (the algorithm), procedure reported (LN 30799-1 CT Head WO contrast)
    Imaging Measurements
      Measurement Group (TID 1411): finding Hemorrhage in the Brain, referencing SEG segment 1,
        algorithm (name, version), Volume (cm3), HE probability (%), threshold (%), risk High/Low,
        and each NCCT expansion sign (blend, island, swirl, black hole, hypodensities, irregular
        shape) as a qualitative evaluation Present / Absent
      Measurement Group (TID 1410), only with a hematoma: the same finding (same tracking UID)
        on the key slice (largest area): its closed POLYLINE outline on that CT image, the ABC/2
        estimate, area, long and short axis
    Qualitative Evaluations (TID 1500 row 12): TEXT comments, the one-line summary first, then
        what the risk means (expansion definition, the threshold's held-out figures, disclaimer),
        then the evidence of each sign (present ones first)
    Image Library (row 5): every CT image of the series (shared descriptors per group, library.py)

The Image Library is written last, after the findings and the comments, not at row 5's place:
a text renderer (dcmtk dsr2html, a PACS's SR text view) prints the tree in order, and a reader
must meet the findings and the summary before a list of every source image. This is
the one departure from the template's row order; dciodvfy and PixelMed's DicomSRValidator accept
it (tests/report/test_report.py, tests/report/test_sr_text.py).

The two groups share one Tracking Unique Identifier (and the SEG segment's): one hematoma,
measured two ways. Viewers that draw SR regions (OHIF) merge groups by that UID, so the outline
is labelled with the volume and probability too, and no group is left without an image region
(OHIF fails on such a group otherwise).

Every container but the Image Library is SEPARATE: renderers of CONTINUOUS content print the
values as running prose without their names ("60.35 cm3 0.732 1 High").
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable, Sequence

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes as sr_codes
from pydicom.sr.coding import Code
from pydicom.uid import Comprehensive3DSRStorage

from hexnode.pipeline.contracts import ModelInfo, Prediction
from hexnode.report import codes
from hexnode.report.common import (
    ALGORITHM_NAME,
    MANUFACTURER,
    SR_SERIES,
    add_contributing_equipment,
    character_set,
    first_image,
    model_label,
    percent,
    risk_meaning,
    round_area_cm2,
    round_length_mm,
    round_volume_ml,
    series_description,
    summary_sentence,
)
from hexnode.report.frames import n_slices, slice_source
from hexnode.report.library import image_library
from hexnode.report.outline import KeySliceROI
from hexnode.report.seg import SEGMENT_NUMBER, TRACKING_LABEL
from hexnode.report.uids import derive_uid, device_uid

QUALITATIVE_EVALUATIONS = Code("C0034375", "UMLS", "Qualitative Evaluations")
LANGUAGE = hd.sr.CodedConcept("en-US", "RFC5646", "English (United States)")  # what highdicom writes by default


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
    # Name and version only: the model label is the observer's Model Name and the threshold a
    # value of its own; parameters repeating them cost a text PACS two lines before each finding.
    return hd.sr.AlgorithmIdentification(name=ALGORITHM_NAME, version=model.version)


def plain(text: str) -> str:
    """ASCII form of our own free text (notes, reasons): it must encode under any character set
    the source declares (or none), whatever a note writer typed ("18°", an en dash)."""
    text = text.replace("\u00b0", " deg").replace("\u2013", "-").replace("\u2014", "-")
    return unicodedata.normalize("NFKD", text).encode("ascii", "replace").decode("ascii")


def comments_container(texts: Iterable[str]) -> hd.sr.ContainerContentItem:
    """TID 1500 row 12 'Qualitative Evaluations' holding free-text comments (row 14)."""
    container = hd.sr.ContainerContentItem(
        name=QUALITATIVE_EVALUATIONS, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
        is_content_continuous=False,
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


def separate_findings(items: Iterable[Dataset]) -> None:
    """Mark every container SEPARATE (findings, each printed with its name): highdicom's group
    templates take no continuity argument and make theirs CONTINUOUS."""
    for item in items:
        if item.ValueType != "CONTAINER":
            continue
        item.ContinuityOfContent = "SEPARATE"
        separate_findings(item.get("ContentSequence", []))


def measurement_report(
    model: ModelInfo,
    groups: Sequence[hd.sr.MeasurementsAndQualitativeEvaluations | hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations
                     | hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations],
    sources: Sequence[Dataset],
    comments: Iterable[str],
) -> hd.sr.ContentSequence:
    """TID 1500 assembled once, in the template's row order, from highdicom's public content items
    and templates. (Not typed through `MeasurementReport.from_sequence`: it re-creates every item
    of the tree, +170 ms for a 320-image library; test_report re-reads the SR with it instead.)

    Not `MeasurementReport(referenced_images=...)`: its TID 1600 library writes ~16 descriptors
    under every image (the screen of Image Position footnotes, tests/report/test_sr_text.py)
    and takes 31 x as long as library.py's (534 vs 17 ms for 40 images), and the constructor
    has no row 12 (Qualitative Evaluations) for the comments."""
    measurements = hd.sr.ContainerContentItem(
        name=sr_codes.DCM.ImagingMeasurements, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
        is_content_continuous=False,
    )
    measurements.ContentSequence = hd.sr.ContentSequence()
    for group in groups:
        separate_findings(group)
        measurements.ContentSequence.extend(group)
    rows = hd.sr.ContentSequence()
    rows.extend(hd.sr.LanguageOfContentItemAndDescendants(LANGUAGE))  # row 2
    rows.extend(observation_context(model))  # row 3
    rows.append(hd.sr.CodeContentItem(  # row 4
        name=sr_codes.DCM.ProcedureReported, value=codes.PROCEDURE_REPORTED,
        relationship_type=hd.sr.RelationshipTypeValues.HAS_CONCEPT_MOD,
    ))
    rows.append(measurements)  # row 6
    rows.append(comments_container(comments))  # row 12
    images = image_sources(sources)
    if images:
        # row 5 (TID 1600), placed last: the evidence after the findings (module docstring).
        # The only CONTINUOUS container.
        rows.append(image_library(images))
    root = hd.sr.ContainerContentItem(name=codes.TITLE, template_id="1500", is_content_continuous=False)
    root.ContentSequence = rows
    return hd.sr.ContentSequence([root], is_root=True)


def document(
    sources: Sequence[Dataset],
    report: hd.sr.ContentSequence,
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


def volume_measurement(prediction: Prediction) -> hd.sr.Measurement:
    volume = prediction.volume_ml if prediction.hemorrhage_detected else 0.0
    return hd.sr.Measurement(name=codes.VOLUME, value=round_volume_ml(volume), unit=codes.CUBIC_CENTIMETER)


def probability_measurement(prediction: Prediction) -> hd.sr.Measurement:
    return hd.sr.Measurement(name=codes.HE_PROBABILITY, value=percent(prediction.probability), unit=codes.PERCENT)


def planar_group(
    sources: Sequence[Dataset], key: int, roi: KeySliceROI, prediction: Prediction, revision: int
) -> hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations:
    """TID 1410 on the key slice: the outline a viewer draws on that CT image, and the hand
    measurements a radiologist makes there (ABC/2 beside the segmented volume of TID 1411)."""
    model = prediction.model
    src = first_image(sources)
    image, frame = slice_source(sources, key)
    region = hd.sr.ImageRegion(
        graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
        graphic_data=roi.polygon,
        source_image=hd.sr.SourceImageForRegion(
            referenced_sop_class_uid=image.SOPClassUID,
            referenced_sop_instance_uid=image.SOPInstanceUID,
            referenced_frame_numbers=[frame] if frame is not None else None,
        ),
    )
    return hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=derive_uid(str(src.SeriesInstanceUID), model.version, "tracking", revision),
            identifier=TRACKING_LABEL,
        ),
        referenced_region=region,
        finding_type=codes.HEMORRHAGE,
        finding_sites=[hd.sr.FindingSite(anatomic_location=codes.BRAIN)],
        algorithm_id=algorithm_id(model),
        measurements=[
            hd.sr.Measurement(name=codes.ABC2_VOLUME, value=round_volume_ml(roi.abc2_ml), unit=codes.CUBIC_CENTIMETER),
            hd.sr.Measurement(name=codes.AREA, value=round_area_cm2(roi.area_cm2), unit=codes.SQUARE_CENTIMETER),
            hd.sr.Measurement(name=codes.LONG_AXIS, value=round_length_mm(roi.long_axis_mm), unit=codes.MILLIMETER),
            hd.sr.Measurement(name=codes.SHORT_AXIS, value=round_length_mm(roi.short_axis_mm), unit=codes.MILLIMETER),
        ],
    )


def key_slice_text(sources: Sequence[Dataset], key: int, roi: KeySliceROI, prediction: Prediction) -> str:
    return (
        f"Key slice {key + 1} of {n_slices(sources)} (largest hematoma area): area "
        f"{round_area_cm2(roi.area_cm2):.2f} cm2, long axis {round_length_mm(roi.long_axis_mm):.1f} mm, "
        f"short axis {round_length_mm(roi.short_axis_mm):.1f} mm; ABC/2 estimate "
        f"{round_volume_ml(roi.abc2_ml):.1f} ml (segmented volume {round_volume_ml(prediction.volume_ml):.1f} ml)."
    )


def measurement_group(
    seg: Dataset, series_uid: str, prediction: Prediction, revision: int,
    sites: Sequence[hd.sr.FindingSite] | None = None, extra: Sequence[hd.sr.Measurement] = (),
) -> hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations:
    """`sites`: where the bleed is (report/findings.py); None: the brain. `extra`: the findings'
    measurements (intraventricular blood, midline shift, oedema), each with its own site."""
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
        finding_sites=list(sites) if sites else [hd.sr.FindingSite(anatomic_location=codes.BRAIN)],
        algorithm_id=algorithm_id(model),
        measurements=[
            volume_measurement(prediction),
            probability_measurement(prediction),
            hd.sr.Measurement(name=codes.HE_THRESHOLD, value=percent(model.threshold), unit=codes.PERCENT),
            *extra,
        ],
        qualitative_evaluations=[
            hd.sr.QualitativeEvaluation(
                name=codes.HE_RISK, value=codes.RISKS[prediction.risk]
            ),
            *sign_evaluations(prediction),
        ],
    )


def sign_evaluations(prediction: Prediction) -> list[hd.sr.QualitativeEvaluation]:
    """Each NCCT expansion sign as a coded finding of the hematoma: present or absent."""
    if not prediction.hemorrhage_detected:
        return []
    return [hd.sr.QualitativeEvaluation(name=codes.SIGN_CODES[s.name], value=codes.PRESENT if s.present else codes.ABSENT)
            for s in prediction.signs]


def sign_comments(prediction: Prediction) -> list[str]:
    """The evidence behind each sign, one comment each, the signs present first."""
    if not prediction.hemorrhage_detected or not prediction.signs:
        return []
    ordered = [s for s in prediction.signs if s.present] + [s for s in prediction.signs if not s.present]
    return [("Present: " if s.present else "Absent: ") + s.evidence + "." for s in ordered]


def result_comments(
    prediction: Prediction, selection_note: str | None, revision: int, key_slice: str | None = None,
    source_notes: Sequence[str] = (),
) -> list[str]:
    """The Qualitative Evaluations, in reading order: the summary, then what qualifies it."""
    model = prediction.model
    texts = [summary_sentence(prediction), risk_meaning(model)]
    if not prediction.hemorrhage_detected:
        texts.append("No hemorrhage detected.")
        if model.min_lesion_ml > 0:
            texts.append(f"Smallest hemorrhage reported: {model.min_lesion_ml:g} ml (isolated islands of "
                         "suspected blood below it are not called a hemorrhage).")
    # The series' own facts (gantry tilt; the lead's mixed slice thickness line, e.g. "slice
    # thickness 4 mm (14 slices) and 7 mm (14 slices)") arrive as prediction.notes: right after
    # the summary, before how the series was chosen.
    texts.extend(prediction.notes)
    texts.extend(source_notes)  # what the result objects had to supply for the source (a Frame of Reference)
    if selection_note:
        texts.append(selection_note)
    if key_slice:
        texts.append(key_slice)
    texts.extend(sign_comments(prediction))
    texts.append(f"Model {model_label(model)}.")
    texts.append(supersedes_text(revision) or "")
    return texts


def build_sr(
    sources: Sequence[Dataset],
    seg: Dataset,
    prediction: Prediction,
    *,
    key: tuple[int, KeySliceROI] | None = None,
    revision: int = 0,
    selection_note: str | None = None,
    source_notes: Sequence[str] = (),
) -> hd.sr.Comprehensive3DSR:
    """`key`: the key slice and its measured outline (outline.key_slice_roi); None: no hematoma.
    `source_notes`: what the results supplied that the source lacked (with_frame_of_reference)."""
    from hexnode.report import findings as section  # it builds on this module's helpers

    src = first_image(sources)
    series_uid = str(src.SeriesInstanceUID)
    sites = section.finding_sites(prediction.findings) if prediction.hemorrhage_detected else None
    groups: list[hd.sr.MeasurementsAndQualitativeEvaluations | hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations
                 | hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations] = [
        measurement_group(seg, series_uid, prediction, revision, sites, section.findings_measurements(prediction))
    ]
    key_text = None
    if key is not None and prediction.hemorrhage_detected:
        groups.append(planar_group(sources, key[0], key[1], prediction, revision))
        key_text = key_slice_text(sources, key[0], key[1], prediction)
    comments = result_comments(prediction, selection_note, revision, key_text, source_notes)
    findings_text = section.summary_text(prediction)
    if findings_text:
        comments.insert(1, findings_text)
    report = measurement_report(prediction.model, groups, sources, comments)
    return document(
        sources, report, prediction.model, revision=revision, not_analysed=False, extra_evidence=[seg]
    )
