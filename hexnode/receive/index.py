"""Index received instances: read the header (never the pixels) and record study/series/instance.

``index_header(path) -> Header`` reads the elements indexing needs and nothing else, with bounded
memory: pydicom's ``specific_tags`` skips every other element, ``defer_size`` leaves large values
unread, and a deflated file (received before receive inflated deflate on arrival) is inflated as a
stream within ``max_instance_bytes`` first. Malformed numeric values become None rather than
errors (select decides what is analysable, not the receiver); integers outside 32 bits, NaN and
infinities too, and text is cut to its column, so that no value can make the database refuse a
row. The dataset's UIDs must be valid UIDs and its SOP Instance UID the one receive stored it
under (the C-STORE command's, in the file meta), else the file is quarantined
(:class:`HeaderError`).

``record_instance(s, header, relpath, size, calling_ae, received_at) -> Recorded`` is idempotent
on the SOP Instance UID. It records and counts, and decides nothing: a series whose SOP class is
not CT, or an instance that arrives after its series was decided, is route's to act on
(``hexnode.route.completion.settle_arrivals``: rejected with the reason, or re-opened as a new
revision), so nothing sent to us disappears silently.

The series header (``series.header``) is an allow-list (:data:`SERIES_HEADER`), applied at every
depth: what route's built-in rules, ranking and report read, equipment and acquisition
attributes a site rule may name, and any other attribute the site's ``[series.selection]`` rules
name (:func:`header_keywords`) unless it is in the Patient module (group 0010), a person name,
private, a sequence or bulk data. Nothing else is stored, so no patient name, ID or birth date
reaches the database from any depth of a header.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.filereader import read_file_meta_info
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from hexnode.receive.admission import InflateError, inflate, is_deflated, uid_text
from hexnode.sop import sop_class_name
from hexnode.store.db import Instance, Series, Study
from hexnode.store.spool import uid_hash

log = logging.getLogger(__name__)

# Values larger than this are not read (pydicom defers them); none of the indexed ones comes close.
DEFER_BYTES = 64 * 1024
INT32 = 2**31

class HeaderError(ValueError):
    """The file is not a DICOM dataset we can index (reason in the message)."""


@dataclass(frozen=True)
class Header:
    study_uid: str
    series_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax: str
    modality: str | None = None
    series_number: int | None = None
    instance_number: int | None = None
    position: list[float] | None = None
    orientation: list[float] | None = None
    rows: int | None = None
    columns: int | None = None
    number_of_frames: int | None = None
    slice_thickness: float | None = None
    images_in_acquisition: int | None = None
    image_type: str | None = None
    # the parsed header, kept only so the first instance of a series can index its series header
    dataset: Any = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Recorded:
    created: bool  # False: this SOP Instance UID was already indexed
    series_id: int
    series_state: str
    new_series: bool = False


# --- the series header's allow-list ------------------------------------------------------------------
# keyword -> None (a value is kept) or a dict (a sequence: what each of its items may keep)
_CODE: dict[str, Any] = {"CodeValue": None, "CodingSchemeDesignator": None, "CodeMeaning": None}
_FUNCTIONAL_GROUPS: dict[str, Any] = {
    "PixelMeasuresSequence": {"SliceThickness": None, "PixelSpacing": None, "SpacingBetweenSlices": None},
    "PlaneOrientationSequence": {"ImageOrientationPatient": None},
    "ContrastBolusUsageSequence": {"ContrastBolusAgentNumber": None, "ContrastBolusAgentAdministered": None,
                                   "ContrastBolusAgentDetected": None, "ContrastBolusAgentPhase": None},
    "CTReconstructionSequence": {"ConvolutionKernel": None, "ReconstructionAlgorithm": None,
                                 "ReconstructionDiameter": None},
    "CTAcquisitionTypeSequence": {"AcquisitionType": None},
    "FrameVOILUTSequence": {"WindowCenter": None, "WindowWidth": None},
    "PixelValueTransformationSequence": {"RescaleIntercept": None, "RescaleSlope": None},
}
SERIES_HEADER: dict[str, Any] = {
    # read by route's built-in rules, ranking and report note (hexnode/series/rules.py, info.py, ranking.py)
    "Modality": None, "SOPClassUID": None, "ImageType": None, "BodyPartExamined": None,
    "SeriesDescription": None, "StudyDescription": None, "ProtocolName": None, "ConvolutionKernel": None,
    "SliceThickness": None, "SeriesNumber": None, "NumberOfFrames": None, "ImageOrientationPatient": None,
    "ImagesInAcquisition": None, "ContrastBolusAgent": None, "ContrastBolusAgentSequence": _CODE,
    "SharedFunctionalGroupsSequence": _FUNCTIONAL_GROUPS,
    # route reads the first item only (the orientation of an enhanced CT): one item is kept
    "PerFrameFunctionalGroupsSequence": _FUNCTIONAL_GROUPS,
    # the order's number, not the patient's: what `hexnode series ACCESSION` and the notifications
    # find a study by (store/db.py fills series.accession_number from it)
    "AccessionNumber": None,
    # equipment, acquisition and image attributes a site rule may name
    "Manufacturer": None, "ManufacturerModelName": None, "StationName": None, "InstitutionName": None,
    "InstitutionalDepartmentName": None, "SoftwareVersions": None, "ContrastBolusRoute": None,
    "ContrastBolusVolume": None, "ScanOptions": None, "KVP": None, "XRayTubeCurrent": None, "Exposure": None,
    "ExposureTime": None, "FilterType": None, "GantryDetectorTilt": None, "SpiralPitchFactor": None,
    "ReconstructionDiameter": None, "DataCollectionDiameter": None, "PatientPosition": None,
    "SpacingBetweenSlices": None, "PixelSpacing": None, "Rows": None, "Columns": None,
    "BitsAllocated": None, "BitsStored": None, "PixelRepresentation": None, "PhotometricInterpretation": None,
    "SamplesPerPixel": None, "RescaleIntercept": None, "RescaleSlope": None, "WindowCenter": None,
    "WindowWidth": None, "ImageComments": None, "AcquisitionType": None, "ReconstructionAlgorithm": None,
}
_FIRST_ITEM_ONLY = {"PerFrameFunctionalGroupsSequence"}
# Per instance (instance rows) and identity: read for every instance, not kept in the series header.
_INSTANCE_KEYWORDS = ("SOPInstanceUID", "SOPClassUID", "StudyInstanceUID", "SeriesInstanceUID", "InstanceNumber",
                      "ImagePositionPatient", "ImageOrientationPatient", "Rows", "Columns", "NumberOfFrames",
                      "SliceThickness", "ImagesInAcquisition", "ImageType", "Modality", "SeriesNumber",
                      "SpecificCharacterSet")
_BULK_VRS = {"OB", "OW", "OF", "OD", "OL", "OV", "UN", "SQ", "PN"}
# A value longer than this is not kept in the series header (a description is at most 64 characters).
MAX_HEADER_VALUE = 1024


def header_keywords(selection: Mapping[str, Any] | None) -> tuple[str, ...]:
    """DICOM keywords the site's ``[series.selection]`` rules name (``attr``, ``value_attr``) that
    may be kept in the series header besides :data:`SERIES_HEADER`: not in group 0010, not a
    person name, not a sequence or bulk data. Derived names (SliceCount, Orientation ...) are not
    keywords and are left out."""
    found: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, Mapping):
            for key, value in node.items():
                if key in ("attr", "value_attr") and isinstance(value, str):
                    found.add(value)
                else:
                    walk(value)
        elif isinstance(node, list | tuple):
            for x in node:
                walk(x)

    walk(dict(selection or {}))
    return tuple(sorted(k for k in found if k not in SERIES_HEADER and _keepable(k)))


def _keepable(keyword: str) -> bool:
    tag = tag_for_keyword(keyword)
    if tag is None or (tag >> 16) in (0x0002, 0x0010, 0x7FE0) or (tag >> 16) % 2:
        return False
    try:
        return dictionary_VR(tag) not in _BULK_VRS
    except KeyError:
        return False


def _read_tags(extra: Iterable[str]) -> list[int]:
    keywords = set(SERIES_HEADER) | set(_INSTANCE_KEYWORDS) | set(extra)
    return sorted(t for k in keywords if (t := tag_for_keyword(k)) is not None)


# Longest value of each text VR (PS3.5 6.2); longer free text is cut to this, other VRs are dropped.
_VR_MAX = {"AE": 16, "AS": 4, "CS": 16, "DA": 8, "DS": 16, "DT": 26, "IS": 12, "LO": 64, "SH": 16, "TM": 16,
           "UI": 64, "ST": 1024, "LT": 1024, "UT": 1024, "UC": 1024}
_FREE_TEXT = {"LO", "SH", "ST", "LT", "UT", "UC"}
_CONTROL = {chr(c) for c in range(0x20) if chr(c) not in "\t\n\r\x0c\x1b"} | {"\x7f"}


def _sane(elem: Any) -> Any:
    """`elem` as it may be kept, or None. A value with control characters is what a broken length
    makes of the next elements' bytes (tags and lengths hold NULs), patient name among them: it is
    dropped. Over-long free text is cut to its VR's maximum; any other over-long value is dropped."""
    from pydicom.dataelem import DataElement

    value = elem.value
    if isinstance(value, bytes | bytearray):
        return None
    values = list(value) if isinstance(value, list | tuple) or type(value).__name__ == "MultiValue" else [value]
    texts = [str(v) for v in values]
    if any(ch in _CONTROL for t in texts for ch in t) or sum(len(t) for t in texts) > MAX_HEADER_VALUE * 4:
        return None
    limit = _VR_MAX.get(elem.VR)
    if limit is None or all(len(t) <= limit for t in texts):
        return elem
    if elem.VR not in _FREE_TEXT:
        return None
    cut = [t[:limit] for t in texts]
    return DataElement(elem.tag, elem.VR, cut if len(cut) > 1 else cut[0])


def series_header(ds: Any, extra: Iterable[str] = ()) -> dict[str, Any] | None:
    """The series-level header route selects on, as DICOM JSON: only the allow-listed attributes
    (and `extra`, from :func:`header_keywords`), at every depth; None when it cannot be converted."""
    allowed = dict(SERIES_HEADER)
    for k in extra:
        if _keepable(k):
            allowed.setdefault(k, None)
    try:
        keep = _filtered(ds, allowed, depth=0)
        out = keep.to_json_dict(bulk_data_threshold=1 << 20)
    except Exception:  # a malformed value pydicom cannot write as JSON: route reads the file instead
        return None
    _drop_non_finite(out)  # a DS of "NaN" or "1e400": not JSON, and PostgreSQL refuses the row
    return out if _clean(out) else None


def _drop_non_finite(node: Any) -> None:
    if isinstance(node, dict):
        for key in list(node):
            value = node[key]
            if isinstance(value, dict) and any(isinstance(v, float) and not math.isfinite(v)
                                               for v in value.get("Value", []) or []):
                del node[key]
            else:
                _drop_non_finite(value)
    elif isinstance(node, list):
        for x in node:
            _drop_non_finite(x)


def _filtered(ds: Any, allowed: Mapping[str, Any], depth: int) -> Dataset:
    keep = Dataset()
    for keyword, inner in allowed.items():
        tag = tag_for_keyword(keyword)
        if tag is None or tag not in ds:
            continue
        raw = ds.get_item(tag, keep_deferred=True)
        length = getattr(raw, "length", 0) or 0
        if getattr(raw, "value", b"") is None or (inner is None and length > MAX_HEADER_VALUE):
            continue  # deferred (large) or over-long: no attribute route reads is that long
        try:
            elem = ds[tag]
            vr = elem.VR
        except Exception:  # a malformed value: left out, as if absent
            continue
        if vr == "PN" or (inner is None and vr in _BULK_VRS):
            continue
        if inner is None:
            kept = _sane(elem)
            if kept is not None:
                keep.add(kept)
            continue
        if vr != "SQ" or depth > 4:
            continue
        items = list(elem.value)[:1] if keyword in _FIRST_ITEM_ONLY else list(elem.value)[:16]
        seq = [_filtered(item, inner, depth + 1) for item in items]
        setattr(keep, keyword, seq)
    return keep


def _clean(node: Any) -> bool:
    """No element of group 0010, no private tag, no person name and no bulk data at any depth of
    the JSON (a second look, after the allow-list)."""
    if isinstance(node, dict):
        for key, value in node.items():
            if len(key) == 8 and all(c in "0123456789ABCDEFabcdef" for c in key):
                group = int(key[:4], 16)
                if group == 0x0010 or group % 2 or (isinstance(value, dict) and value.get("vr") in ("PN",) + tuple(
                        v for v in _BULK_VRS if v != "SQ")):
                    return False
            if not _clean(value):
                return False
    elif isinstance(node, list):
        return all(_clean(x) for x in node)
    return True


# --- reading one header ---------------------------------------------------------------------------------

def _value(ds: Any, keyword: str) -> Any:
    """The element's value, None when absent or when pydicom cannot convert it (malformed)."""
    try:
        return ds.get(keyword)
    except Exception:
        return None


def _text(ds: Any, keyword: str, limit: int | None = None) -> str | None:
    value = _value(ds, keyword)
    if value is None:
        return None
    text = str(value).strip().rstrip("\x00").strip()
    if any(ch in _CONTROL for ch in text):  # a broken length's catch (see _sane): not a value
        return None
    if limit is not None:
        text = text[:limit]
    return text or None


def _int(ds: Any, keyword: str) -> int | None:
    try:
        value = ds.get(keyword)
        number = None if value is None or value == "" else int(value)
    except Exception:
        return None
    return number if number is not None and -INT32 <= number < INT32 else None


def _finite(value: Any) -> float | None:
    number = float(value)
    return number if math.isfinite(number) else None


def _float(ds: Any, keyword: str) -> float | None:
    try:
        value = ds.get(keyword)
        return None if value is None or value == "" else _finite(value)
    except Exception:
        return None


def _floats(ds: Any, keyword: str, n: int) -> list[float] | None:
    try:
        value = ds.get(keyword)
        if value is None:
            return None
        out = [_finite(v) for v in value]
        return out if len(out) == n and None not in out else None  # type: ignore[return-value]
    except Exception:
        return None


def _joined(ds: Any, keyword: str) -> str | None:
    value = _value(ds, keyword)
    if value is None:
        return None
    parts = [str(v) for v in value] if hasattr(value, "__iter__") and not isinstance(value, str) else [str(value)]
    if any(ch in _CONTROL for p in parts for ch in p):
        return None
    return "\\".join(parts)[:MAX_HEADER_VALUE] or None


def _inflate_in_place(path: Path, max_bytes: int, min_free: int) -> None:
    """A deflated file spooled before receive inflated on arrival: inflated, or HeaderError."""
    tmp = path.with_name(path.name + ".inflating")
    try:
        inflate(str(path), str(tmp), max_bytes, min_free, lambda: _free(path))
        os.replace(tmp, path)
    except InflateError as exc:
        raise HeaderError(f"deflated data set: {exc}") from None
    except (OSError, ValueError) as exc:
        raise HeaderError(f"deflated data set cannot be inflated: {type(exc).__name__}") from None
    finally:
        tmp.unlink(missing_ok=True)


def _free(path: Path) -> int:
    st = os.statvfs(path.parent)
    return st.f_bavail * st.f_frsize


def index_header(path: Path, extra: Iterable[str] = (), *, max_bytes: int = 1 << 30, min_free: int = 0) -> Header:
    """The indexed values of one spooled file (`extra`: keywords for the series header besides
    :data:`SERIES_HEADER`); HeaderError when it cannot be indexed, with the reason."""
    try:
        meta = read_file_meta_info(path)
    except Exception as exc:
        raise HeaderError(f"not a readable DICOM file: {type(exc).__name__}") from None
    if is_deflated(_text(meta, "TransferSyntaxUID") or ""):
        _inflate_in_place(Path(path), max_bytes, min_free)
    try:
        ds = dcmread(path, stop_before_pixels=True, defer_size=DEFER_BYTES, specific_tags=_read_tags(extra))
    except Exception as exc:  # MemoryError too: a header that needs more than the indexer may use
        raise HeaderError(f"not a readable DICOM file: {type(exc).__name__}") from None
    meta = getattr(ds, "file_meta", None) or meta
    uids = {k: _value(ds, k) for k in ("SOPInstanceUID", "SOPClassUID", "StudyInstanceUID", "SeriesInstanceUID")}
    missing = [k for k, v in uids.items() if v is None or not str(v).strip("\x00 ")]
    if missing:
        raise HeaderError(f"missing {', '.join(missing)}")
    valid = {k: uid_text(str(v)) for k, v in uids.items()}
    invalid = [k for k, v in valid.items() if v is None]
    if invalid:
        raise HeaderError(f"{', '.join(invalid)} not a valid UID (digits and dots, at most 64 characters)")
    sop_uid, sop_class = valid["SOPInstanceUID"], valid["SOPClassUID"]
    study_uid, series_uid = valid["StudyInstanceUID"], valid["SeriesInstanceUID"]
    stored_as = uid_text(str(_value(meta, "MediaStorageSOPInstanceUID") or ""))
    if stored_as is not None and stored_as != sop_uid:
        raise HeaderError("SOP Instance UID differs from the one it was sent (and stored) under")
    assert sop_uid and sop_class and study_uid and series_uid
    return Header(
        study_uid=study_uid,
        series_uid=series_uid,
        sop_instance_uid=sop_uid,
        sop_class_uid=sop_class,
        transfer_syntax=(_text(meta, "TransferSyntaxUID", 64) if meta else None) or "",
        modality=_text(ds, "Modality", 16),
        series_number=_int(ds, "SeriesNumber"),
        instance_number=_int(ds, "InstanceNumber"),
        position=_floats(ds, "ImagePositionPatient", 3),
        orientation=_floats(ds, "ImageOrientationPatient", 6),
        rows=_int(ds, "Rows"),
        columns=_int(ds, "Columns"),
        number_of_frames=_int(ds, "NumberOfFrames"),
        slice_thickness=_float(ds, "SliceThickness"),
        images_in_acquisition=_int(ds, "ImagesInAcquisition"),
        image_type=_joined(ds, "ImageType"),
        dataset=ds,
    )


def _get_or_create_study(s: Session, study_uid: str) -> Study:
    study = s.execute(select(Study).where(Study.study_uid == study_uid)).scalar_one_or_none()
    if study is None:
        try:
            with s.begin_nested():
                study = Study(study_uid=study_uid)
                s.add(study)
        except IntegrityError:  # created meanwhile by another process (PostgreSQL)
            study = s.execute(select(Study).where(Study.study_uid == study_uid)).scalar_one()
    return study


@dataclass(frozen=True)
class Arrival:
    """One received instance to record: its header, where the spool holds it, who sent it, when."""

    header: Header
    relpath: str
    size: int
    calling_ae: str
    received_at: datetime


def record_instance(
    s: Session, h: Header, relpath: str, size: int, calling_ae: str, received_at: datetime,
    extra: Iterable[str] = (),
) -> Recorded:
    return record_instances(s, [Arrival(h, relpath, size, calling_ae, received_at)], extra)[0]


# SQLite allows 32,766 bound parameters per statement; PostgreSQL 65,535
_LOOKUP_CHUNK = 1000


def record_instances(s: Session, arrivals: Iterable[Arrival], extra: Iterable[str] = ()) -> list[Recorded]:
    """`record_instance` for a batch in one transaction, in order: the batch's SOP Instance UIDs
    are looked up in one query and the rows written in one flush at the end (per instance, a
    look-up and a flush took half of the indexer's time). An instance twice in the batch counts
    once, as if indexed before."""
    arrivals = list(arrivals)
    extra = tuple(extra)
    uids = list({a.header.sop_instance_uid for a in arrivals})
    known: dict[str, int] = {}
    for i in range(0, len(uids), _LOOKUP_CHUNK):
        rows = s.execute(select(Instance.sop_instance_uid, Instance.series_id)
                         .where(Instance.sop_instance_uid.in_(uids[i:i + _LOOKUP_CHUNK])))
        known.update({uid: series_id for uid, series_id in rows})
    series_by_uid: dict[str, Series] = {}
    out: list[Recorded] = []
    with s.no_autoflush:
        for a in arrivals:
            h = a.header
            series_id = known.get(h.sop_instance_uid)
            if series_id is not None:
                ser = s.get(Series, series_id)
                out.append(Recorded(created=False, series_id=series_id, series_state=ser.state if ser else "?"))
                continue
            series = series_by_uid.get(h.series_uid)
            rec, series = _record_new(s, a, series, extra)
            series_by_uid[h.series_uid] = series
            known[h.sop_instance_uid] = series.id
            out.append(rec)
    return out


def _record_new(s: Session, a: Arrival, series: Series | None, extra: tuple[str, ...]) -> tuple[Recorded, Series]:
    h = a.header
    if series is None:
        series = s.execute(select(Series).where(Series.series_uid == h.series_uid)).scalar_one_or_none()
    new_series = series is None
    if series is None:
        study = _get_or_create_study(s, h.study_uid)
        try:
            with s.begin_nested():  # flushes what the batch holds so far, then the series alone
                series = Series(
                    series_uid=h.series_uid,
                    study_id=study.id,
                    calling_ae=a.calling_ae,
                    modality=h.modality,
                    sop_class_uid=h.sop_class_uid,
                    series_number=h.series_number,
                    state="received",
                    revision=0,
                    instance_count=0,
                    first_instance_at=a.received_at,
                    last_instance_at=a.received_at,
                    state_at=a.received_at,
                    header=series_header(h.dataset, extra) if h.dataset is not None else None,
                )
                s.add(series)
        except IntegrityError:
            series = s.execute(select(Series).where(Series.series_uid == h.series_uid)).scalar_one()
            new_series = False
    assert series is not None

    s.add(
        Instance(
            sop_instance_uid=h.sop_instance_uid,
            series_id=series.id,
            sop_class_uid=h.sop_class_uid,
            transfer_syntax=h.transfer_syntax,
            path=a.relpath,
            size_bytes=a.size,
            calling_ae=a.calling_ae,
            instance_number=h.instance_number,
            position=h.position,
            orientation=h.orientation,
            rows=h.rows,
            columns=h.columns,
            number_of_frames=h.number_of_frames,
            slice_thickness=h.slice_thickness,
            images_in_acquisition=h.images_in_acquisition,
            image_type=h.image_type,
            received_at=a.received_at,
        )
    )
    series.instance_count += 1
    if a.received_at > series.last_instance_at:
        series.last_instance_at = a.received_at
    if new_series:
        log.info("series %s: first instance from %s (%s)", uid_hash(h.series_uid), a.calling_ae,
                 sop_class_name(h.sop_class_uid))
    return Recorded(created=True, series_id=series.id, series_state=series.state, new_series=new_series), series
