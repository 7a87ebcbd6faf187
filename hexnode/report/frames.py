"""Which source image (and frame) each z slice of the mask came from.

Single-frame series: slice z is sources[z] (the caller passes them in the mask's z order).
One Enhanced CT multi-frame image: the volume loader orders its frames by position along the
slice normal (stable sort), so the same ordering is recomputed here from the frame headers.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from pydicom.dataset import Dataset


def is_multiframe(sources: Sequence[Dataset]) -> bool:
    return len(sources) == 1 and int(sources[0].get("NumberOfFrames", 1) or 1) > 1


def _frame_item(ds: Dataset, i: int, seq: str) -> Dataset | None:
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    shared = ds.get("SharedFunctionalGroupsSequence")
    for group in ([per_frame[i]] if per_frame and i < len(per_frame) else []) + ([shared[0]] if shared else []):
        inner = group.get(seq)
        if inner:
            return inner[0]  # type: ignore[no-any-return]
    return None


def frame_order(src: Dataset) -> list[int]:
    """0-based source frame index of each z slice (ascending position along the normal)."""
    n = int(src.NumberOfFrames)
    orient = _frame_item(src, 0, "PlaneOrientationSequence")
    if orient is None:
        raise ValueError("multi-frame source without Plane Orientation")
    iop = np.array([float(v) for v in orient.ImageOrientationPatient])
    normal = np.cross(iop[:3], iop[3:])
    d = []
    for i in range(n):
        pos = _frame_item(src, i, "PlanePositionSequence")
        if pos is None:
            raise ValueError(f"multi-frame source: frame {i + 1} has no Plane Position")
        d.append(float(np.dot([float(v) for v in pos.ImagePositionPatient], normal)))
    return [int(i) for i in np.argsort(np.array(d), kind="stable")]


def n_slices(sources: Sequence[Dataset]) -> int:
    return int(sources[0].NumberOfFrames) if is_multiframe(sources) else len(sources)


def slice_source(sources: Sequence[Dataset], z: int) -> tuple[Dataset, int | None]:
    """The source dataset of z slice `z`, and its 1-based frame number for a multi-frame source."""
    if is_multiframe(sources):
        return sources[0], frame_order(sources[0])[z] + 1
    return sources[z], None


def _normal(iop: Sequence[float]) -> np.ndarray:
    v = np.array([float(x) for x in iop])
    return np.cross(v[:3], v[3:])


def slice_positions(sources: Sequence[Dataset]) -> list[float]:
    """Each z slice's position (mm) along the slice normal, in the mask's z order."""
    if is_multiframe(sources):
        src = sources[0]
        orient = _frame_item(src, 0, "PlaneOrientationSequence")
        if orient is None:
            raise ValueError("multi-frame source without Plane Orientation")
        normal = _normal(orient.ImageOrientationPatient)
        out = []
        for i in frame_order(src):
            pos = _frame_item(src, i, "PlanePositionSequence")
            assert pos is not None  # frame_order checked every frame
            out.append(float(np.dot([float(v) for v in pos.ImagePositionPatient], normal)))
        return out
    normal = _normal(sources[0].ImageOrientationPatient)
    return [float(np.dot([float(v) for v in ds.ImagePositionPatient], normal)) for ds in sources]


def pixel_spacing(sources: Sequence[Dataset]) -> tuple[float, float]:
    """(row, column) spacing in mm of the source images."""
    src = sources[0]
    if is_multiframe(sources):
        measures = _frame_item(src, 0, "PixelMeasuresSequence")
        if measures is None:
            raise ValueError("multi-frame source without Pixel Measures")
        row, col = measures.PixelSpacing
    else:
        row, col = src.PixelSpacing
    return float(row), float(col)


def slice_thickness(sources: Sequence[Dataset]) -> float:
    src = sources[0]
    if is_multiframe(sources):
        measures = _frame_item(src, 0, "PixelMeasuresSequence")
        return float(measures.get("SliceThickness", 0) or 0) if measures is not None else 0.0
    return float(src.get("SliceThickness", 0) or 0)
