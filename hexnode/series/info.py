"""What selection knows about one series (`SeriesInfo`): its header, its instance count and the
values derived from them that rules can name (`SliceCount`, `Orientation`, `ContrastAgent`,
`BodyRegion`)."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from pydicom.dataset import Dataset

from hexnode.series.rules import OTHER_REGION

# A head CT may be tilted up to about 30 degrees and still be axial.
AXIAL_MAX_DEG = 35.0


@dataclass(frozen=True)
class SeriesInfo:
    """What selection knows about one series: one representative header and how many instances."""

    series_uid: str
    header: Dataset
    instance_count: int
    ref: Any = None  # caller's handle (e.g. a database id), carried through unchanged

    def value(self, attr: str) -> Any:
        if attr == "SliceCount":
            frames = int(self.header.get("NumberOfFrames", 1) or 1)
            return frames if frames > 1 else self.instance_count
        if attr == "Orientation":
            return orientation_label(self.header)
        if attr == "ContrastAgent":
            return contrast_agent(self.header)
        if attr == "BodyRegion":
            return body_region(self.header)
        if attr == "SliceThickness" and "SliceThickness" not in self.header:
            return _enhanced_thickness(self.header)
        value = self.header.get(attr)
        if value is None:
            return None
        if hasattr(value, "__iter__") and not isinstance(value, str | bytes):
            return [str(v) for v in value]
        return value


def _enhanced_thickness(ds: Dataset) -> Any:
    shared = ds.get("SharedFunctionalGroupsSequence")
    try:
        return shared[0].PixelMeasuresSequence[0].SliceThickness if shared else None
    except (AttributeError, IndexError):
        return None


def _iop(ds: Dataset) -> Any:
    if "ImageOrientationPatient" in ds:
        return ds.ImageOrientationPatient
    shared = ds.get("SharedFunctionalGroupsSequence")
    try:
        return shared[0].PlaneOrientationSequence[0].ImageOrientationPatient if shared else None
    except (AttributeError, IndexError):
        pf = ds.get("PerFrameFunctionalGroupsSequence")
        try:
            return pf[0].PlaneOrientationSequence[0].ImageOrientationPatient if pf else None
        except (AttributeError, IndexError):
            return None


def orientation_label(ds: Dataset) -> str:
    """axial / coronal / sagittal / oblique / unknown, from the slice normal."""
    iop = _iop(ds)
    try:
        r = [float(v) for v in iop]
    except (TypeError, ValueError):
        return "unknown"
    if len(r) != 6:
        return "unknown"
    n = (r[1] * r[5] - r[2] * r[4], r[2] * r[3] - r[0] * r[5], r[0] * r[4] - r[1] * r[3])
    norm = math.sqrt(sum(v * v for v in n)) or 1.0
    angles = [math.degrees(math.acos(min(1.0, abs(v) / norm))) for v in n]
    if angles[2] <= AXIAL_MAX_DEG:
        return "axial"
    if angles[1] <= 20:
        return "coronal"
    if angles[0] <= 20:
        return "sagittal"
    return "oblique"


def contrast_agent(ds: Dataset) -> str:
    """The contrast agent named in the header, '' when none (a bare 'NONE'/'NO' counts as none)."""
    parts = [str(ds.get("ContrastBolusAgent", "") or "").strip()]
    for item in ds.get("ContrastBolusAgentSequence", []) or []:
        parts.append(str(item.get("CodeMeaning", "") or "contrast"))
    shared = ds.get("SharedFunctionalGroupsSequence")
    if shared and shared[0].get("ContrastBolusUsageSequence"):
        for item in shared[0].ContrastBolusUsageSequence:
            if str(item.get("ContrastBolusAgentAdministered", "")).upper() == "YES":
                parts.append("contrast")
    agent = "; ".join(p for p in parts if p and p.upper() not in ("NONE", "NO", "N", "0", "NIL", "-"))
    return agent


_TEXT_LABELS = {"SeriesDescription": "series description", "ProtocolName": "protocol",
                "StudyDescription": "study description"}


def body_region(ds: Dataset) -> str:
    """What the headers say about the body part, for a reason: "body part CHEST", or "no body
    part; series description names THORAX" when a description names another region (the word
    matched, never the free text around it: reasons reach the logs)."""
    part = str(ds.get("BodyPartExamined", "") or "").strip()
    out = f"body part {part}" if part else "no body part"
    if part and re.search(OTHER_REGION, part):
        return out
    for keyword, label in _TEXT_LABELS.items():
        text = str(ds.get(keyword, "") or "")
        found = re.search(OTHER_REGION, text)
        if found:
            word = re.match(r"[A-Za-z-]*", text[found.start():])
            return f"{out}; {label} names {(word.group(0) if word else found.group(0)).upper()}"
    return out


def as_text(value: Any) -> str:
    """A header value as rules compare it: multi-values joined by a backslash, floats short."""
    if value is None:
        return ""
    if isinstance(value, list):
        return "\\".join(as_text(v) for v in value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value).strip()


def as_number(value: Any) -> float | None:
    """A header value as a number (the first of a multi-value), None when it is not one."""
    if isinstance(value, list):
        value = value[0] if value else None
    try:
        return float(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None
