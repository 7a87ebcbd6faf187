"""TID 1600 Image Library: the source images, with only the descriptors a reader can use.

A PACS that shows an SR as text prints every per-image descriptor (Image Position X/Y/Z of each
slice) as a footnote, a screen of numbers before the first finding. highdicom's
ImageLibrary writes those ~16 descriptors under every image. Here each Image Library Group
(one per SOP class, modality and frame of reference) carries the descriptors its images share
- modality, frame of reference, slice thickness when all slices have the same - and each entry
is the bare image reference. TID 1601/1602 make every descriptor optional
at entry level; geometry per slice is in the images themselves, which every reference points to.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

ACQ = hd.sr.RelationshipTypeValues.HAS_ACQ_CONTEXT
MM = codes.UCUM.Millimeter
SOURCE = Code("260753009", "SCT", "Source")
UNKNOWN_MODALITY = Code("OT", "DCM", "Other")

# (concept, unit, getter): the TID 1602/1604 descriptors worth a line to a reader when a whole
# group shares them. Matrix and pixel spacing are not: a reader never looks them up in the report.
_SHARED: list[tuple[Code, Code, Callable[[Dataset], object]]] = [
    (codes.DCM.SliceThickness, MM, lambda ds: ds.SliceThickness),
]


def coded_modality(modality: str) -> Code:
    """The CID 29 code of a header's Modality (CT -> DCM 'Computed Tomography')."""
    for code in codes.cid29.concepts.values():
        if code.value == modality:
            return code
    return UNKNOWN_MODALITY


def _value(ds: Dataset, get: Callable[[Dataset], object]) -> float | None:
    try:
        return float(get(ds))  # type: ignore[arg-type]
    except (AttributeError, IndexError, KeyError, TypeError, ValueError):
        return None  # absent in this header (e.g. an Enhanced CT keeps spacing per frame)


def shared_descriptors(members: Sequence[Dataset]) -> list[hd.sr.NumContentItem]:
    items = []
    for concept, unit, get in _SHARED:
        values = {_value(ds, get) for ds in members}
        if len(values) == 1 and (value := values.pop()) is not None:
            items.append(hd.sr.NumContentItem(name=concept, value=value, unit=unit, relationship_type=ACQ))
    return items


def image_library(images: Sequence[Dataset]) -> hd.sr.ContainerContentItem:
    """The 'Image Library' container (TID 1600) for `images` (headers suffice)."""
    groups: dict[tuple[str, str, str], list[Dataset]] = defaultdict(list)
    for ds in images:
        groups[(str(ds.SOPClassUID), str(ds.get("Modality", "")), str(ds.get("FrameOfReferenceUID", "")))].append(ds)
    library = hd.sr.ContainerContentItem(name=codes.DCM.ImageLibrary, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS)
    library.ContentSequence = hd.sr.ContentSequence()
    for (_, modality, frame_uid), members in groups.items():
        group = hd.sr.ContainerContentItem(
            name=codes.DCM.ImageLibraryGroup, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
        )
        group.ContentSequence = hd.sr.ContentSequence()
        group.ContentSequence.append(
            hd.sr.CodeContentItem(name=codes.DCM.Modality, value=coded_modality(modality), relationship_type=ACQ)
        )
        if frame_uid:
            group.ContentSequence.append(
                hd.sr.UIDRefContentItem(name=codes.DCM.FrameOfReferenceUID, value=frame_uid, relationship_type=ACQ)
            )
        group.ContentSequence.extend(shared_descriptors(members))
        group.ContentSequence.extend(
            hd.sr.ImageContentItem(
                name=SOURCE,
                referenced_sop_class_uid=ds.SOPClassUID,
                referenced_sop_instance_uid=ds.SOPInstanceUID,
                relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
            )
            for ds in members
        )
        library.ContentSequence.append(group)
    return library
