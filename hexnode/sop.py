"""The SOP classes the node knows by name: the CT image storage classes it analyses, and the
segmentation classes it takes back as corrections.

One place for receive (which presentation contexts to accept, which objects are filed as
corrections), route (which series can ever be a candidate) and the volume loader (what it can read)."""

from __future__ import annotations

from pydicom.uid import UID

CT_SOP_CLASSES: dict[str, str] = {
    "1.2.840.10008.5.1.4.1.1.2": "CT Image Storage",
    "1.2.840.10008.5.1.4.1.1.2.1": "Enhanced CT Image Storage",
    "1.2.840.10008.5.1.4.1.1.2.2": "Legacy Converted Enhanced CT Image Storage",
}

# A reader's corrected mask comes back as one of these (hexnode/receive/corrections.py files it).
SEGMENTATION_SOP_CLASSES: dict[str, str] = {
    "1.2.840.10008.5.1.4.1.1.66.4": "Segmentation Storage",
    "1.2.840.10008.5.1.4.1.1.66.7": "Label Map Segmentation Storage",
}


def is_segmentation(uid: str | None) -> bool:
    return (uid or "") in SEGMENTATION_SOP_CLASSES


def is_ct(uid: str | None) -> bool:
    return (uid or "") in CT_SOP_CLASSES


def sop_class_name(uid: str) -> str:
    name = UID(uid).name if uid else ""
    return name if name and name != uid else f"SOP class {uid[:64]}"
