"""What a reader's viewer sends back: a DICOM SEG of an edited (or confirmed) hemorrhage mask on a
series' slices, built with highdicom's public constructors. The corrections tests, the site-loop
test and `bench/site.py --through-dicom` send it to hexnode's SCP as a radiologist's correction."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pydicom


def reader_seg(sources: Sequence[pydicom.Dataset], mask: np.ndarray, *, label: str = "Hemorrhage",
               extra_segments: int = 0, kind: str = "BINARY", algorithm: str = "") -> pydicom.Dataset:
    """A SEG of `mask` (slice, row, column; slice k on `sources[k]`): one manual Hemorrhage segment
    with the viewer as manufacturer, as a viewer writes an edited mask. `extra_segments`: empty
    segments after it; `algorithm`: an automatic segment of that algorithm instead of a manual one;
    `kind`: BINARY or LABELMAP. Empty frames are left out, unless the whole mask is empty (a reader
    confirming "no hemorrhage"): then every frame is written, as a SEG needs at least one."""
    import highdicom as hd
    from pydicom.uid import generate_uid

    descriptions = []
    for n in range(1, 2 + extra_segments):
        descriptions.append(hd.seg.SegmentDescription(
            segment_number=n, segment_label=label if n == 1 else f"Other {n}",
            segmented_property_category=hd.sr.CodedConcept("49755003", "SCT", "Morphologically abnormal structure"),
            segmented_property_type=(hd.sr.CodedConcept("50960005", "SCT", "Hemorrhage") if n == 1
                                     else hd.sr.CodedConcept("85756007", "SCT", "Tissue")),
            algorithm_type=(hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC if algorithm
                            else hd.seg.SegmentAlgorithmTypeValues.MANUAL),
            algorithm_identification=(hd.AlgorithmIdentificationSequence(
                name=algorithm, version="1", family=hd.sr.CodedConcept("123110", "DCM", "Artificial Intelligence"))
                if algorithm else None)))
    mask = np.asarray(mask, np.uint8)
    pixels = mask if not extra_segments else np.stack([mask] + [np.zeros_like(mask)] * extra_segments, axis=-1)
    return hd.seg.Segmentation(
        source_images=list(sources), pixel_array=pixels, segmentation_type=hd.seg.SegmentationTypeValues(kind),
        segment_descriptions=descriptions, series_instance_uid=generate_uid(), series_number=99,
        sop_instance_uid=generate_uid(), instance_number=1, manufacturer="Reading Room Viewer",
        manufacturer_model_name="viewer", software_versions="1", device_serial_number="1",
        omit_empty_frames=bool(mask.any()))
