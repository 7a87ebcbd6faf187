"""DICOM SEG of the hematoma mask (docs/architecture.md §4): binary, one segment, every frame kept."""

from __future__ import annotations

from collections.abc import Sequence

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian

from hexnode.pipeline.contracts import ModelInfo
from hexnode.report import codes
from hexnode.report.common import (
    ALGORITHM_NAME,
    LO_MAX,
    MANUFACTURER,
    NOT_CLINICAL,
    SEG_SERIES,
    SOFTWARE_VERSION,
    add_contributing_equipment,
    character_set,
    first_image,
    series_description,
)
from hexnode.report.frames import frame_order, is_multiframe, n_slices
from hexnode.report.uids import derive_uid

SEGMENT_NUMBER = 1
# What a viewer's segment panel shows beside the overlay: the disclaimer goes with the mask.
SEGMENT_LABEL = "Hemorrhage (not for clinical use)"
TRACKING_LABEL = "hematoma"
# Yellow, the outline colour of the summary image (sRGB 255,215,0 in CIELab).
DISPLAY_COLOR = hd.color.CIELabColor(88.0, -2.0, 88.0)


def segment_description(model: ModelInfo, tracking_uid: str) -> hd.seg.SegmentDescription:
    return hd.seg.SegmentDescription(
        segment_number=SEGMENT_NUMBER,
        segment_label=SEGMENT_LABEL,
        segmented_property_category=codes.MORPHOLOGICALLY_ABNORMAL_STRUCTURE,
        segmented_property_type=codes.HEMORRHAGE,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=hd.AlgorithmIdentificationSequence(
            name=ALGORITHM_NAME, version=model.version, family=codes.ALGORITHM_FAMILY
        ),
        anatomic_regions=[codes.BRAIN],
        # Same tracking identity as the SR's measurement group: a viewer can pair them.
        tracking_uid=tracking_uid,
        tracking_id=TRACKING_LABEL,
        display_color=DISPLAY_COLOR,
    )


def content_description(model: ModelInfo) -> str:
    """'Hematoma, not for clinical use (hexnode VERSION)', the version left out where a long one
    would pass the 64 characters of a Long String (it is also in Software Versions)."""
    text = f"Hematoma, {NOT_CLINICAL}"
    full = f"{text} (hexnode {model.version})"
    return full if len(full) <= LO_MAX else text


def build_seg(sources: Sequence[Dataset], mask: np.ndarray, model: ModelInfo, *, revision: int = 0) -> Dataset:
    """SEG referencing `sources` frame by frame: mask[i] lies on sources[i], and the SEG frame
    holding it references sources[i] (Derivation Image) at its position (highdicom stores the
    frames in its own order along the normal; each keeps its own reference and position). With
    mixed slice thickness each frame's slab is its source slice's: the Pixel Measures stay shared
    as highdicom writes them (the pinned OHIF cannot open a SEG whose Pixel Measures are per
    frame, tests/web/test_viewer.py), so a reader takes each frame's thickness from its source.

    One Enhanced CT multi-frame source is also accepted (mask in the loader's z order).
    `sources` may be headers read with stop_before_pixels: highdicom takes the geometry (position,
    orientation, spacing, frame of reference) from the headers and never decodes source pixels,
    so the source transfer syntax does not matter. The SEG itself is always explicit VR little
    endian, the transfer syntax every SEG reader handles for BINARY.
    """
    src = first_image(sources)
    if mask.ndim != 3 or mask.shape[0] != n_slices(sources):
        raise ValueError(f"mask shape {mask.shape} does not match {n_slices(sources)} source slices")
    if mask.shape[1:] != (int(src.Rows), int(src.Columns)):
        raise ValueError(f"mask slices {mask.shape[1:]} differ from the images {src.Rows}x{src.Columns}")
    # A 600 x 512^2 mask is 150 MB: reuse it when it is already 0/1 uint8 (the usual case).
    binary = mask if mask.dtype == np.uint8 and int(mask.max(initial=0)) <= 1 else (mask > 0).astype(np.uint8)
    if is_multiframe(sources):
        # highdicom pairs SEG frame i with source frame i: put each z slice back on its frame.
        frames = np.empty_like(binary)
        frames[frame_order(src)] = binary
        binary = frames
    series_uid = str(src.SeriesInstanceUID)
    seg = hd.seg.Segmentation(
        source_images=list(sources),
        pixel_array=binary,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[
            segment_description(model, derive_uid(series_uid, model.version, "tracking", revision))
        ],
        series_instance_uid=derive_uid(series_uid, model.version, "seg-series", revision),
        series_number=SEG_SERIES.number,
        sop_instance_uid=derive_uid(series_uid, model.version, "seg", revision),
        instance_number=1,
        manufacturer=MANUFACTURER,
        manufacturer_model_name=model.name,
        software_versions=f"{SOFTWARE_VERSION} model {model.version}",
        device_serial_number=model.version,
        # OHIF and several PACS viewers expect one frame per source image, empty or not.
        omit_empty_frames=False,
        transfer_syntax_uid=ExplicitVRLittleEndian,
        series_description=series_description(SEG_SERIES, revision, disclaimer=True),
        content_label="HEMORRHAGE",
        content_description=content_description(model),
        specific_character_set=character_set(src),
    )
    add_contributing_equipment(seg, model)
    return seg

