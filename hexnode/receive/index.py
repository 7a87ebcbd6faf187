"""Index received instances: read the header (never the pixels) and record study/series/instance.

``read_header(path) -> Header`` parses with ``stop_before_pixels``; malformed numeric values
become None rather than errors (select decides what is analysable, not the receiver).
``record_instance(s, header, relpath, size, calling_ae, received_at) -> Recorded`` is idempotent
on the SOP Instance UID. It records and counts, and decides nothing: a series whose SOP class is
not CT, or an instance that arrives after its series was decided, is route's to act on
(``hexnode.route.stable.settle_arrivals``: rejected with the reason, or re-opened as a new
revision), so nothing sent to us disappears silently.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from hexnode.sop import sop_class_name
from hexnode.store.db import Instance, Series, Study
from hexnode.store.spool import uid_hash

log = logging.getLogger(__name__)

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


def _value(ds: Any, keyword: str) -> Any:
    """The element's value, None when absent or when pydicom cannot convert it (malformed)."""
    try:
        return ds.get(keyword)
    except Exception:
        return None


def _text(ds: Any, keyword: str) -> str | None:
    value = _value(ds, keyword)
    if value is None:
        return None
    text = str(value).strip().rstrip("\x00").strip()
    return text or None


def _int(ds: Any, keyword: str) -> int | None:
    try:
        value = ds.get(keyword)
        return None if value is None or value == "" else int(value)
    except Exception:
        return None


def _float(ds: Any, keyword: str) -> float | None:
    try:
        value = ds.get(keyword)
        return None if value is None or value == "" else float(value)
    except Exception:
        return None


def _floats(ds: Any, keyword: str, n: int) -> list[float] | None:
    try:
        value = ds.get(keyword)
        if value is None:
            return None
        out = [float(v) for v in value]
        return out if len(out) == n else None
    except Exception:
        return None


def read_header(path: Path) -> Header:
    try:
        ds = dcmread(path, stop_before_pixels=True)
    except Exception as exc:
        raise HeaderError(f"not a readable DICOM file: {type(exc).__name__}") from None
    meta = getattr(ds, "file_meta", None)
    sop_uid = _text(ds, "SOPInstanceUID") or (_text(meta, "MediaStorageSOPInstanceUID") if meta else None)
    sop_class = _text(ds, "SOPClassUID") or (_text(meta, "MediaStorageSOPClassUID") if meta else None)
    study_uid, series_uid = _text(ds, "StudyInstanceUID"), _text(ds, "SeriesInstanceUID")
    missing = [
        k for k, v in (("SOPInstanceUID", sop_uid), ("SOPClassUID", sop_class), ("StudyInstanceUID", study_uid),
                       ("SeriesInstanceUID", series_uid)) if not v
    ]
    if missing:
        raise HeaderError(f"missing {', '.join(missing)}")
    assert sop_uid and sop_class and study_uid and series_uid
    return Header(
        study_uid=study_uid,
        series_uid=series_uid,
        sop_instance_uid=sop_uid,
        sop_class_uid=sop_class,
        transfer_syntax=(_text(meta, "TransferSyntaxUID") if meta else None) or "",
        modality=_text(ds, "Modality"),
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


# Not indexed in the series header: pixels and other bulk data (route never needs them), private
# tags, the file meta, the Patient module (group 0010: no name, ID or birth date in the
# database; what needs them reads the spooled file) and every person name at any depth
# (physicians, operators: no selection rule needs them).
_BULK_VRS = {"OB", "OW", "OF", "OD", "OL", "OV", "UN"}
_SKIPPED_GROUPS = {0x0002, 0x0010, 0x7FE0}


def series_header(ds: Any) -> dict[str, Any] | None:
    """The series-level header route selects on, as DICOM JSON; None when it cannot be converted."""
    try:
        keep = Dataset()
        for elem in ds:
            if elem.tag.is_private or elem.tag.group in _SKIPPED_GROUPS or elem.VR in _BULK_VRS:
                continue
            keep.add(elem)
        keep.walk(_drop_person_names)
        return keep.to_json_dict(bulk_data_threshold=1 << 20)
    except Exception:  # a malformed value pydicom cannot write as JSON: route reads the file instead
        return None


def _drop_person_names(ds: Dataset, elem: Any) -> None:
    if elem.VR == "PN":  # pydicom's walk iterates over a copy of the tags: deleting is safe
        del ds[elem.tag]


def _joined(ds: Any, keyword: str) -> str | None:
    value = _value(ds, keyword)
    if value is None:
        return None
    parts = [str(v) for v in value] if hasattr(value, "__iter__") and not isinstance(value, str) else [str(value)]
    return "\\".join(parts) or None


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


def record_instance(
    s: Session, h: Header, relpath: str, size: int, calling_ae: str, received_at: datetime
) -> Recorded:
    existing = s.execute(
        select(Instance.series_id).where(Instance.sop_instance_uid == h.sop_instance_uid)
    ).scalar_one_or_none()
    if existing is not None:
        ser = s.get(Series, existing)
        return Recorded(created=False, series_id=existing, series_state=ser.state if ser else "?")

    series = s.execute(select(Series).where(Series.series_uid == h.series_uid)).scalar_one_or_none()
    new_series = series is None
    if series is None:
        study = _get_or_create_study(s, h.study_uid)
        try:
            with s.begin_nested():
                series = Series(
                    series_uid=h.series_uid,
                    study_id=study.id,
                    calling_ae=calling_ae,
                    modality=h.modality,
                    sop_class_uid=h.sop_class_uid,
                    series_number=h.series_number,
                    state="received",
                    revision=0,
                    instance_count=0,
                    first_instance_at=received_at,
                    last_instance_at=received_at,
                    state_at=received_at,
                    header=series_header(h.dataset) if h.dataset is not None else None,
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
            path=relpath,
            size_bytes=size,
            calling_ae=calling_ae,
            instance_number=h.instance_number,
            position=h.position,
            orientation=h.orientation,
            rows=h.rows,
            columns=h.columns,
            number_of_frames=h.number_of_frames,
            slice_thickness=h.slice_thickness,
            images_in_acquisition=h.images_in_acquisition,
            image_type=h.image_type,
            received_at=received_at,
        )
    )
    series.instance_count += 1
    if received_at > series.last_instance_at:
        series.last_instance_at = received_at
    if new_series:
        log.info("series %s: first instance from %s (%s)", uid_hash(h.series_uid), calling_ae,
                 sop_class_name(h.sop_class_uid))
    return Recorded(created=True, series_id=series.id, series_state=series.state, new_series=new_series)
