"""What every result object shares: who made it, how it is numbered, how values are rounded."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

from pydicom.dataset import Dataset

from hexnode import __version__
from hexnode.pipeline.contracts import NOT_FOR_CLINICAL_USE, ModelInfo, Prediction
from hexnode.report import codes
from hexnode.report.uids import device_uid, results_frame_of_reference_uid

MANUFACTURER = "hexnode"
ALGORITHM_NAME = "hexnode"
SOFTWARE_VERSION = __version__


@dataclass(frozen=True)
class SeriesLabel:
    number: int
    description: str


# Fixed, high series numbers keep the outputs together at the end of a viewer's series list.
SEG_SERIES = SeriesLabel(9901, "hexnode hematoma SEG")
SR_SERIES = SeriesLabel(9902, "hexnode HE risk SR")
SC_SERIES = SeriesLabel(9903, "hexnode summary")


LO_MAX = 64  # characters in a Long String (Series Description, Segment Label, Content Description)
NOT_CLINICAL = "not for clinical use"


def series_description(label: SeriesLabel, revision: int, *, not_analysed: bool = False,
                       disclaimer: bool = False) -> str:
    """`disclaimer`: the object has no text of its own to carry "not for clinical use" (the SEG),
    so its series says it, within the 64 characters of a Long String whatever the revision."""
    text = label.description + (" (not analysed)" if not_analysed else "")
    if disclaimer:
        text += f", {NOT_CLINICAL}"
    if not revision:
        return text
    full = f"{text} (corrected, revision {revision})"
    return full if len(full) <= LO_MAX else f"{text} (corrected, rev {revision})"


def round_volume_ml(volume_ml: float) -> float:
    """The volume as stored in the SR and shown on the SC (0.01 ml; DS keeps it exactly)."""
    return round(float(volume_ml), 2)


def percent(p: float) -> float:
    """A probability/threshold (0-1) as stored in the SR and shown on the SC and in a viewer:
    percent to 0.1 (the 0.001 of a fraction)."""
    return round(float(p) * 100.0, 1)


def round_length_mm(value: float) -> float:
    return round(float(value), 1)


def round_area_cm2(value: float) -> float:
    return round(float(value), 2)


def series_number_text(src: Dataset) -> str:
    """'series 3', or 'series without number' (never '#?': a reader cannot look that up)."""
    number = src.get("SeriesNumber")
    return f"series {number}" if number not in (None, "") else "series without number"


def probability_pair(probability: float, threshold: float) -> tuple[str, str]:
    """Probability and threshold as whole percents, or to 0.1 where whole percents would look
    equal (a Low "29 % (threshold 29 %)" reads as a contradiction)."""
    p, t = percent(probability), percent(threshold)
    digits = 1 if round(p) == round(t) else 0
    return f"{p:.{digits}f} %", f"{t:.{digits}f} %"


def summary_sentence(prediction: Prediction) -> str:
    """The one line a radiologist reads first (the SR's first comment; the SC says the same)."""
    model = prediction.model
    prob, thr = probability_pair(prediction.probability, model.threshold)
    if prediction.hemorrhage_detected:
        risk = "High" if prediction.high_risk else "Low"
        finding = (f"Hematoma {round_volume_ml(prediction.volume_ml):.1f} ml; expansion probability {prob} "
                   f"(threshold {thr}): {risk} risk.")
    else:
        finding = "No hemorrhage detected (hematoma 0.0 ml): expansion risk not applicable."
    kind = "Synthetic-trained model" if model.synthetic_trained else "Research model"
    return f"{finding} {kind}, not for clinical use."


# The label the model is trained on (hexnode.synth.hemodel, the seed literature's definition).
EXPANSION_DEFINITION = "hematoma growth > 6 ml or > 33 % on follow-up CT"


def _pct(value: float) -> str:
    return f"{value * 100:.0f} %"


def threshold_performance(model: ModelInfo) -> str:
    """What the High/Low threshold does, in the model set's own held-out figures (never ours)."""
    op = model.operating_point
    if op is None:
        return " (the model set records no sensitivity or specificity for this threshold)"
    cases = "synthetic test cases" if model.synthetic_trained else "test cases"
    npv = f", NPV {_pct(op.npv)}" if op.npv is not None else ""
    return (f", which on {op.n} held-out {cases} had sensitivity {_pct(op.sensitivity)}, "
            f"specificity {_pct(op.specificity)}{npv}")


def short_use_note(model: ModelInfo) -> str:
    return "Synthetic-trained: not for clinical use." if model.synthetic_trained else \
        "Research model: not for clinical use."


def risk_meaning(model: ModelInfo) -> str:
    """The one line that says what a High or Low means (SR comment and SC band alike)."""
    return (f"What the risk means: expansion = {EXPANSION_DEFINITION}; High = probability "
            f"{percent(model.threshold):.1f} % or more{threshold_performance(model)}. {short_use_note(model)}")


def clinical_use_note(model: ModelInfo) -> str:
    if model.synthetic_trained:
        return NOT_FOR_CLINICAL_USE
    return "Research model: not for clinical use."


def burned_in_warning(model: ModelInfo) -> str:
    """The one-line form for the summary image (the SR carries the full sentence)."""
    kind = "SYNTHETIC-TRAINED MODEL" if model.synthetic_trained else "RESEARCH MODEL"
    return f"{kind}: NOT FOR CLINICAL USE"


def model_label(model: ModelInfo) -> str:
    return f"{model.name} {model.version}"


def add_contributing_equipment(ds: Dataset, model: ModelInfo) -> None:
    """IHE AI Results (AIR): list the algorithm in Contributing Equipment, purpose 99IHE 1630.

    Done after the highdicom build because highdicom only accepts purposes from CID 7005 and has
    no Device UID argument; AIR needs both.
    """
    purpose = Dataset()
    purpose.CodeValue = codes.PROCESSING_ALGORITHM.value
    purpose.CodingSchemeDesignator = codes.PROCESSING_ALGORITHM.scheme_designator
    purpose.CodeMeaning = codes.PROCESSING_ALGORITHM.meaning
    item = Dataset()
    item.Manufacturer = MANUFACTURER
    item.ManufacturerModelName = model.name
    item.SoftwareVersions = [SOFTWARE_VERSION, model.version]
    item.DeviceUID = device_uid(model.name, model.version)
    item.ContributionDescription = f"{model_label(model)}: hematoma segmentation and expansion risk"
    item.PurposeOfReferenceCodeSequence = [purpose]
    if "ContributingEquipmentSequence" not in ds:
        ds.ContributingEquipmentSequence = []
    ds.ContributingEquipmentSequence.append(item)


# Type 2 patient/study attributes highdicom reads from the first source without a default.
_TYPE2_PATIENT_STUDY = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
    "ReferringPhysicianName", "StudyID", "AccessionNumber",
)


def addressable(sources: Sequence[Dataset]) -> list[Dataset]:
    """`sources` with the first header completed by empty type 2 patient/study attributes.

    A sender may omit them; the report must still go back (empty, as the standard allows),
    rather than fail; so must it when Patient's Sex holds a value outside M/F/O. What the result
    objects copy from it must be conformant too: a de-identified source without its method, type 3
    sequences with no item and NUL-padded text in sequence items (all seen in real exports) are
    mended in the copy. The caller's header is not modified (a shallow copy is completed).
    """
    src = first_image(sources)
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID"):
        if not src.get(keyword):
            raise ValueError(f"source header without {keyword}: a report cannot be addressed")
    missing = [k for k in _TYPE2_PATIENT_STUDY if k not in src]
    odd_sex = src.get("PatientSex") not in (None, "", *PATIENT_SEX)
    unstated = _deidentified_without_method(src)
    empty, padded = _odd_sequences(src)
    if not missing and not odd_sex and not unstated and not empty and not padded:
        return list(sources)
    head = _copy(src)
    for keyword in missing:
        setattr(head, keyword, None)
    if unstated:
        # Patient Identity Removed YES requires the method (type 1C); the source did not say which
        if "DeidentificationMethod" in head:
            del head.DeidentificationMethod
        head.DeidentificationMethod = DEIDENTIFICATION_UNSTATED
    for keyword in empty:  # type 3 sequences exported with no item: absent, as the standard allows
        del head[keyword]
    for keyword in padded:  # text padded with NUL inside a sequence: copied items, the padding dropped
        setattr(head, keyword, _unpadded(src[keyword].value))
    if odd_sex:
        # M, F or O (the standard's enumerated values); exports write '0000', 'U', 'm': a case or
        # padding slip is kept, anything else becomes empty (unknown) rather than a report refused
        sex = str(src.PatientSex).strip().upper()
        del head.PatientSex  # a new element: the copy shares the caller's data elements
        head.PatientSex = sex if sex in PATIENT_SEX else None
    return [head, *sources[1:]]


# Patient's Sex (0010,0040): the enumerated values
PATIENT_SEX = ("M", "F", "O")
DEIDENTIFICATION_UNSTATED = "not stated in the source images"
_TEXT_VRS = frozenset({"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "PN", "SH", "TM", "UI"})


def _deidentified_without_method(src: Dataset) -> bool:
    if str(src.get("PatientIdentityRemoved", "") or "").strip().upper() != "YES":
        return False
    return not str(src.get("DeidentificationMethod", "") or "").strip() and \
        not src.get("DeidentificationMethodCodeSequence")


def _odd_sequences(src: Dataset) -> tuple[list[str], list[str]]:
    """Top-level sequences the result objects would copy as non-conformant: (with no item, with
    text padded with NUL instead of a space in an item, which pydicom writes back byte for byte
    while the element is still raw)."""
    empty, padded = [], []
    for element in src:
        if element.VR != "SQ" or not element.keyword:
            continue
        if len(element.value) == 0:
            empty.append(element.keyword)
        elif any(_nul_padded(item) for item in element.value):
            padded.append(element.keyword)
    return empty, padded


def _nul_padded(item: Dataset) -> bool:
    for element in item.elements():  # raw elements as read: their bytes, unconverted
        value = element.value
        if element.VR in _TEXT_VRS and isinstance(value, bytes) and value.endswith(b"\x00"):
            return True
        if element.VR == "SQ" and any(_nul_padded(i) for i in item[element.tag].value):
            return True
    return False


def _unpadded(items: Sequence[Dataset]) -> list[Dataset]:
    """Copies of `items` with every text value decoded (pydicom drops the NUL padding and writes
    the standard's space)."""
    out = []
    for item in items:
        clean = copy.deepcopy(item)
        for e in clean.iterall():
            if e.VR in _TEXT_VRS and isinstance(e.value, str):
                e.value = e.value.replace("\x00", "").strip()
        out.append(clean)
    return out


def _copy(src: Dataset) -> Dataset:
    """A shallow copy with its own element dict (Dataset(src) and .copy() share it)."""
    head = Dataset(dict(src.items()))
    if hasattr(src, "file_meta"):
        head.file_meta = src.file_meta
    return head


def with_frame_of_reference(sources: Sequence[Dataset]) -> tuple[list[Dataset], str | None]:
    """`sources` as the SEG needs them, and the sentence the SR carries when they were completed.

    The CT Image IOD requires a Frame of Reference; some exports drop it. A SEG of a slice stack
    states each frame's position within a Frame of Reference (PS3.3 A.51.5: with one, the segment
    is specified in that coordinate system by Pixel Measures and Plane Position/Orientation;
    without one, highdicom and the standard's indexing allow a single frame only), so the results
    get one of their own, derived from the series UID: the source images' positions in a
    coordinate system named for these results.
    Each SEG frame still references its own source image by SOP Instance UID (Derivation Image).
    The Frame of Reference is not written into the sources themselves (the SR's image library
    describes them as they are): shallow copies are completed, the caller's headers untouched."""
    src = first_image(sources)
    if str(src.get("FrameOfReferenceUID", "") or ""):
        return list(sources), None
    uid = results_frame_of_reference_uid(str(src.SeriesInstanceUID))
    completed = []
    for ds in sources:
        head = _copy(ds)
        head.FrameOfReferenceUID = uid
        if "PositionReferenceIndicator" not in head:
            head.PositionReferenceIndicator = ""
        completed.append(head)
    note = (f"The source series has no Frame of Reference UID: the segmentation uses frame of reference {uid}, "
            "created for these results, with the source images' positions, and references each source image "
            "by its SOP Instance UID.")
    return completed, note


def first_image(sources: Sequence[Dataset]) -> Dataset:
    if not sources:
        raise ValueError("no source datasets: the result objects need the series' headers")
    return sources[0]


def character_set(src: Dataset) -> str | list[str] | None:
    """The source's Specific Character Set in a form highdicom accepts.

    With code extensions the first value is often empty (the default repertoire, e.g.
    ``\\ISO 2022 IR 87`` for Japanese); highdicom's enum only knows it as ``ISO 2022 IR 6``.
    """
    value = src.get("SpecificCharacterSet")
    if value is None or isinstance(value, str):
        return value or None
    values = [str(v).strip() or "ISO 2022 IR 6" for v in value]
    return values[0] if len(values) == 1 else values
