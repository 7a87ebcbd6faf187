"""TID 1600 Image Library with shared descriptors factored into each Image Library Group.

highdicom's ImageLibrary repeats ~16 descriptors (modality, frame of reference, matrix, spacing,
orientation, position) under every image; for a 300-slice series that is 5,000 content items,
and the SR build then spends seconds deep-copying and searching them. TID 1601 allows the
descriptors common to a group at group level, so each entry here carries only what differs
(normally its Image Position). Same information, a quarter of the items.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import highdicom as hd

# The SOP class -> modality code table highdicom's own ImageLibrary uses (pinned highdicom 0.28).
from highdicom.sr.templates import _get_coded_modality
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

ACQ = hd.sr.RelationshipTypeValues.HAS_ACQ_CONTEXT
MM = codes.UCUM.Millimeter
PIXELS = Code("{pixels}", "UCUM", "Pixels")
DIRECTION = Code("{-1:1}", "UCUM", "{-1:1}")
SOURCE = Code("260753009", "SCT", "Source")

# (concept, unit, getter) for TID 1602 + TID 1604 (cross-sectional) numeric descriptors.
_NUMERIC: list[tuple[Code, Code, Any]] = [
    (codes.DCM.PixelDataRows, PIXELS, lambda ds: ds.Rows),
    (codes.DCM.PixelDataColumns, PIXELS, lambda ds: ds.Columns),
    (codes.DCM.HorizontalPixelSpacing, MM, lambda ds: ds.PixelSpacing[1]),
    (codes.DCM.VerticalPixelSpacing, MM, lambda ds: ds.PixelSpacing[0]),
    (codes.DCM.SliceThickness, MM, lambda ds: ds.SliceThickness),
    (codes.DCM.ImagePositionPatientX, MM, lambda ds: ds.ImagePositionPatient[0]),
    (codes.DCM.ImagePositionPatientY, MM, lambda ds: ds.ImagePositionPatient[1]),
    (codes.DCM.ImagePositionPatientZ, MM, lambda ds: ds.ImagePositionPatient[2]),
    (codes.DCM.ImageOrientationPatientRowX, DIRECTION, lambda ds: ds.ImageOrientationPatient[0]),
    (codes.DCM.ImageOrientationPatientRowY, DIRECTION, lambda ds: ds.ImageOrientationPatient[1]),
    (codes.DCM.ImageOrientationPatientRowZ, DIRECTION, lambda ds: ds.ImageOrientationPatient[2]),
    (codes.DCM.ImageOrientationPatientColumnX, DIRECTION, lambda ds: ds.ImageOrientationPatient[3]),
    (codes.DCM.ImageOrientationPatientColumnY, DIRECTION, lambda ds: ds.ImageOrientationPatient[4]),
    (codes.DCM.ImageOrientationPatientColumnZ, DIRECTION, lambda ds: ds.ImageOrientationPatient[5]),
]


def _numeric_values(ds: Dataset) -> list[float | None]:
    values: list[float | None] = []
    for _, _, get in _NUMERIC:
        try:
            values.append(float(get(ds)))
        except (AttributeError, IndexError, KeyError, TypeError, ValueError):
            values.append(None)  # absent in this header: the descriptor is simply not listed
    return values


def _num_items(values: Sequence[float | None], keep: Sequence[bool]) -> list[hd.sr.NumContentItem]:
    return [
        hd.sr.NumContentItem(name=concept, value=value, unit=unit, relationship_type=ACQ)
        for (concept, unit, _), value, k in zip(_NUMERIC, values, keep, strict=True)
        if k and value is not None
    ]


def image_library(images: Sequence[Dataset]) -> hd.sr.ContainerContentItem:
    """The 'Image Library' container (TID 1600) for `images` (headers suffice)."""
    groups: dict[tuple[str, str, str], list[Dataset]] = defaultdict(list)
    for ds in images:
        groups[(str(ds.SOPClassUID), str(ds.get("Modality", "")), str(ds.get("FrameOfReferenceUID", "")))].append(ds)
    library = hd.sr.ContainerContentItem(name=codes.DCM.ImageLibrary, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS)
    library.ContentSequence = hd.sr.ContentSequence()
    for (sop_class_uid, _, frame_uid), members in groups.items():
        values = [_numeric_values(ds) for ds in members]
        shared = [all(v[i] == values[0][i] for v in values) for i in range(len(_NUMERIC))]
        group = hd.sr.ContainerContentItem(
            name=codes.DCM.ImageLibraryGroup, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
        )
        group.ContentSequence = hd.sr.ContentSequence()
        group.ContentSequence.append(
            hd.sr.CodeContentItem(
                name=codes.DCM.Modality, value=_get_coded_modality(sop_class_uid), relationship_type=ACQ
            )
        )
        if frame_uid:
            group.ContentSequence.append(
                hd.sr.UIDRefContentItem(name=codes.DCM.FrameOfReferenceUID, value=frame_uid, relationship_type=ACQ)
            )
        group.ContentSequence.extend(_num_items(values[0], shared))
        per_image = [not s for s in shared]
        for ds, v in zip(members, values, strict=True):
            entry = hd.sr.ImageContentItem(
                name=SOURCE,
                referenced_sop_class_uid=ds.SOPClassUID,
                referenced_sop_instance_uid=ds.SOPInstanceUID,
                relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
            )
            own = _num_items(v, per_image)
            if own:
                entry.ContentSequence = hd.sr.ContentSequence(own)
            group.ContentSequence.append(entry)
        library.ContentSequence.append(group)
    return library
