"""The SOP classes the node knows by name: the CT image storage classes it analyses.

One place for receive (which presentation contexts to accept), route (which series can ever be a
candidate) and the volume loader (what it can read)."""

from __future__ import annotations

from pydicom.uid import UID

CT_SOP_CLASSES: dict[str, str] = {
    "1.2.840.10008.5.1.4.1.1.2": "CT Image Storage",
    "1.2.840.10008.5.1.4.1.1.2.1": "Enhanced CT Image Storage",
    "1.2.840.10008.5.1.4.1.1.2.2": "Legacy Converted Enhanced CT Image Storage",
}


def is_ct(uid: str | None) -> bool:
    return (uid or "") in CT_SOP_CLASSES


def sop_class_name(uid: str) -> str:
    name = UID(uid).name if uid else ""
    return name if name and name != uid else f"SOP class {uid[:64]}"
