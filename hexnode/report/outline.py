"""The hematoma on its key slice as a radiologist measures it by hand: outline, area, axes, ABC/2.

The outline follows the mask's pixel edges (a closed polygon in DICOM image coordinates, where
(0, 0) is the top-left corner of the top-left pixel), so what a viewer draws is exactly the
segmented region and the polygon's area is exactly its pixel count times the pixel area.
ABC/2 is Kothari's bedside estimate (Stroke 1996): A the longest diameter on the slice with the
largest area, B the longest diameter perpendicular to A, C the slice count weighted 1 (area >= 75 %
of the largest), 0.5 (25-75 %) or 0 (< 25 %), times the slice spacing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset
from scipy import ndimage
from scipy.spatial import ConvexHull

from hexnode.report.frames import pixel_spacing, slice_positions, slice_thickness
from hexnode.report.render import key_slice

# Edge directions in (col, row) image coordinates, clockwise on screen (rows grow downwards).
_RIGHT, _DOWN, _LEFT, _UP = (1, 0), (0, 1), (-1, 0), (0, -1)


@dataclass(frozen=True)
class KeySliceROI:
    """The largest connected hematoma region on the key slice, measured."""

    polygon: np.ndarray  # (n, 2) float (col, row), closed: first point == last point
    area_cm2: float
    long_axis_mm: float
    short_axis_mm: float
    abc2_ml: float


def largest_region(mask2d: np.ndarray) -> np.ndarray:
    """The largest 4-connected region of a 2-D mask, holes filled (the outline is its rim)."""
    labels, n = ndimage.label(mask2d > 0)
    if n == 0:
        raise ValueError("no hematoma on the key slice")
    sizes = ndimage.sum_labels(np.ones_like(labels), labels, index=np.arange(1, n + 1))
    region = labels == int(np.argmax(sizes)) + 1
    return np.asarray(ndimage.binary_fill_holes(region), dtype=bool)


def trace_outline(region: np.ndarray) -> np.ndarray:
    """Closed polygon along the outer pixel edges of a 4-connected, hole-free region.

    Each boundary edge of an inside pixel is a directed edge with the inside on its right
    (clockwise on screen); edges are chained, turning right first where two chains touch at a
    corner, and collinear vertices are dropped.
    """
    rows, cols = np.nonzero(region)
    padded = np.pad(region, 1)
    starts: dict[tuple[int, int], list[tuple[int, int]]] = {}

    def add(a: tuple[int, int], b: tuple[int, int]) -> None:
        starts.setdefault(a, []).append(b)

    for r, c in zip(rows.tolist(), cols.tolist(), strict=True):
        pr, pc = r + 1, c + 1
        if not padded[pr - 1, pc]:
            add((c, r), (c + 1, r))  # top edge, going right
        if not padded[pr, pc + 1]:
            add((c + 1, r), (c + 1, r + 1))  # right edge, going down
        if not padded[pr + 1, pc]:
            add((c + 1, r + 1), (c, r + 1))  # bottom edge, going left
        if not padded[pr, pc - 1]:
            add((c, r + 1), (c, r))  # left edge, going up
    first = min(starts, key=lambda p: (p[1], p[0]))  # top-left corner: always on the outer rim
    points = [first]
    heading = _RIGHT
    current = first
    order = {_RIGHT: (_DOWN, _RIGHT, _UP), _DOWN: (_LEFT, _DOWN, _RIGHT),
             _LEFT: (_UP, _LEFT, _DOWN), _UP: (_RIGHT, _UP, _LEFT)}
    while True:
        options = starts[current]
        nxt = None
        for turn in order[heading]:
            candidate = (current[0] + turn[0], current[1] + turn[1])
            if candidate in options:
                nxt, heading = candidate, turn
                break
        if nxt is None:
            raise RuntimeError("outline tracing lost its edge chain")
        options.remove(nxt)
        if nxt == first:
            break
        points.append(nxt)
        current = nxt
    kept = [
        p for i, p in enumerate(points)
        if (p[0] - points[i - 1][0]) * (points[(i + 1) % len(points)][1] - p[1])
        != (p[1] - points[i - 1][1]) * (points[(i + 1) % len(points)][0] - p[0])
    ]
    return np.array([*kept, kept[0]], dtype=float)


def polygon_area(polygon: np.ndarray) -> float:
    """Shoelace area of a closed polygon, in the units of its coordinates squared."""
    x, y = polygon[:, 0], polygon[:, 1]
    return float(abs(np.dot(x[:-1], y[1:]) - np.dot(x[1:], y[:-1])) / 2.0)


def axes_mm(polygon: np.ndarray, spacing_rc: tuple[float, float]) -> tuple[float, float]:
    """(long, short) axis: the longest chord between outline vertices, and the region's width
    perpendicular to it (the B of ABC/2), in mm."""
    mm = polygon[:-1] * np.array([spacing_rc[1], spacing_rc[0]])
    # both extremes lie on the convex hull: a ragged outline of thousands of vertices stays cheap
    mm = mm[ConvexHull(mm).vertices]
    d = np.linalg.norm(mm[:, None, :] - mm[None, :, :], axis=-1)
    i, j = np.unravel_index(int(np.argmax(d)), d.shape)
    long_axis = float(d[i, j])
    if long_axis == 0.0:
        return 0.0, 0.0
    u = (mm[j] - mm[i]) / long_axis
    across = mm @ np.array([-u[1], u[0]])
    return long_axis, float(across.max() - across.min())


def kothari_depth_mm(areas: Sequence[float], spacing_mm: Sequence[float]) -> float:
    """C of ABC/2: slices weighted by their area relative to the largest, times their spacing."""
    largest = max(areas, default=0.0)
    if largest <= 0:
        return 0.0
    depth = 0.0
    for area, step in zip(areas, spacing_mm, strict=True):
        ratio = area / largest
        depth += step * (1.0 if ratio >= 0.75 else 0.5 if ratio >= 0.25 else 0.0)
    return depth


def slice_steps(positions_mm: Sequence[float], fallback_mm: float) -> list[float]:
    """Each slice's share of the stack along the normal (half the gaps to its neighbours), so
    that a series of mixed slice spacing weighs each slice by its own extent."""
    z = np.asarray(positions_mm, dtype=float)
    if z.size < 2:
        return [fallback_mm] * int(z.size)
    gaps = np.abs(np.diff(z))
    steps = np.empty_like(z)
    steps[0], steps[-1] = gaps[0], gaps[-1]
    steps[1:-1] = (gaps[:-1] + gaps[1:]) / 2.0
    return [float(s) for s in steps]


def measure_key_slice(
    mask: np.ndarray, key: int, spacing_rc: tuple[float, float], positions_mm: Sequence[float],
    thickness_mm: float,
) -> KeySliceROI:
    """Outline and measurements of the hematoma on slice `key` of `mask` (z, rows, cols).

    `spacing_rc`: pixel spacing (row, column) in mm; `positions_mm`: each slice's position along
    the slice normal (for C); `thickness_mm`: the step used when the series has a single slice.
    """
    region = largest_region(mask[key])
    polygon = trace_outline(region)
    pixel_mm2 = spacing_rc[0] * spacing_rc[1]
    long_axis, short_axis = axes_mm(polygon, spacing_rc)
    areas = [float(np.count_nonzero(m)) * pixel_mm2 for m in mask]
    depth = kothari_depth_mm(areas, slice_steps(positions_mm, thickness_mm))
    return KeySliceROI(
        polygon=polygon,
        area_cm2=polygon_area(polygon) * pixel_mm2 / 100.0,
        long_axis_mm=long_axis,
        short_axis_mm=short_axis,
        abc2_ml=(long_axis / 10.0) * (short_axis / 10.0) * (depth / 10.0) / 2.0,
    )


def key_slice_roi(sources: Sequence[Dataset], mask: np.ndarray) -> tuple[int, KeySliceROI] | None:
    """(z, measured region) of the slice with the largest hematoma area; None without hematoma."""
    if not mask.any():
        return None
    key = key_slice(mask)
    thickness = slice_thickness(sources) or 1.0
    return key, measure_key_slice(mask, key, pixel_spacing(sources), slice_positions(sources), thickness)
