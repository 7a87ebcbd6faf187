"""The intracranial cavity, computed from the CT itself: what gates every finding.

Blood is only blood inside the skull. Real scans fooled the U-Net with the skull base (orbits,
sphenoid, petrous bone), the temporalis muscle and scalp (40-60 HU, outside the skull) and the
partial-volume crescent along the inner table; none of those is inside the cavity's core.

The method is classical and works slice by slice in the slice's own plane, so gantry tilt needs
nothing special:

1. bone = HU >= `BONE_HU`; a morphological closing of `CLOSE_MM` bridges sutures, foramina, thin
   fractures and the partial-volume breaks of a 5-7 mm slice through the vault;
2. the cavity of a slice is the closed bone's filled holes minus the bone itself, minus air
   (sinuses and mastoid cells that sit inside a ring of bone on the skull-base slices);
3. a slice whose ring is open over more than the closing bridges (a craniectomy, a large fracture
   gap) gets, instead, the convex hull of its bone: the chord across the defect bounds it, so the
   cavity never leaks into the scalp over the defect. Only on slices above the widest one: at the
   skull base an open ring is the foramen magnum, and a hull there would take in the neck;
4. across slices, the largest 3D component after an in-plane erosion of `SPLIT_MM` (the orbits and
   sinuses touch the brain through thin bony walls only), grown back by the same amount inside (2);
5. the core is the cavity eroded by `RIM_MM` in plane: the inner-table partial-volume rim is
   outside it. The cavity itself is then grown by one grid pixel, so blood touching the bone is
   not cut by the decimated grid.

`gate_mask` drops predicted blood outside the cavity and any component of it that lies mostly in
the rim. `coverage_problem` says whether the series covers the brain (vertex to posterior fossa).

Everything runs on a 2x-decimated grid for in-plane matrices of 384 or more (a 512^2 slice becomes
256^2, about 1 mm pixels), cropped to the box that holds bone (slices and rows without bone hold no
cavity): bone 4-8 mm thick and a 3 mm rim survive that. The disk morphology is run as 1D running
max/min along the rows plus shifted ORs/ANDs, which gives exactly the binary dilation/erosion by the
disk. A thin series (slices 0.75 mm apart or less) is computed on every second (or n-th) slice,
each slice between taking its nearest computed one's cavity: the gate decides per component, and a
component spans many thin slices.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage as ndi

BONE_HU = 250.0
AIR_HU = -200.0  # below this inside the ring: air cells and sinuses, not cavity
CLOSE_MM = 3.0
SPLIT_MM = 2.0
RIM_MM = 3.0
#: a slice's filled ring is trusted unless its hull holds this much more (then the ring is open)
HULL_RATIO = 1.6
#: a component of predicted blood is kept when at least this fraction of it lies in the core, or
#: when it lies within SATELLITE_REACH_MM of one that is (satellites of a lobar bleed that touches
#: the skull sit in the rim; the inner-table crescents real scans showed were far from any bleed)
CORE_FRACTION = 1.0 / 3.0
SATELLITE_REACH_MM = 20.0
#: a thin series' cavity is computed on slices at most this far apart along the normal (every
#: second slice of 0.625 mm, every fifth of 0.3 mm): the cavity's outline moves little between
#: them, and the gate keeps or drops whole components, which span many thin slices
Z_STEP_MM = 1.5

# Coverage: the brain is covered when the cavity closes at the vertex (the top slice's cavity is
# small against the widest one) and narrows again at the bottom (the posterior fossa and the
# foramen magnum, below the widest slice of the middle cranial fossa). A series that stops
# anywhere in between ends on a wide slice. Chosen with wide margins for real scanners' framing: on
# 120 synthetic heads (straight, tilted 20 degrees, mixed 4 + 7 mm) the top slice held at most
# 0.8 % and the bottom slice 0 % of the widest slice's cavity, and none was refused.
TOP_MAX_FRACTION = 0.40
BOTTOM_MAX_FRACTION = 0.70


@dataclass(frozen=True)
class Cavity:
    """The cavity on the (possibly decimated) analysis grid; `step` maps it to the full matrix."""

    mask: NDArray[np.bool_]  # (z, y/step, x/step)
    core: NDArray[np.bool_]
    step: int
    area_mm2: NDArray[np.float64]  # per slice, in z order
    extents_mm: NDArray[np.float64]  # per slice, its extent along the normal
    # The skull's interior on the slices the cavity was computed on: the holes of the closed bone,
    # soft tissue and air alike (an air-filled phantom's skull is hollow), on the analysis grid
    # cropped to `box` (y0, y1, x0, x1); `rows` are those slices' indices in the volume.
    interior: NDArray[np.bool_] = field(default_factory=lambda: np.zeros((0, 0, 0), bool))
    rows: NDArray[np.intp] = field(default_factory=lambda: np.zeros(0, np.intp))
    box: tuple[int, int, int, int] = (0, 0, 0, 0)

    def full(self, which: NDArray[np.bool_], box: tuple[slice, slice, slice]) -> NDArray[np.bool_]:
        """`which` (mask or core) at full resolution inside `box` of the full-resolution volume."""
        zs, ys, xs = box
        s = self.step
        sub = which[zs, ys.start // s:(ys.stop - 1) // s + 1, xs.start // s:(xs.stop - 1) // s + 1]
        if s > 1:
            sub = np.repeat(np.repeat(sub, s, axis=1), s, axis=2)
        y0, x0 = ys.start % s, xs.start % s
        return sub[:, y0:y0 + (ys.stop - ys.start), x0:x0 + (xs.stop - xs.start)]


def _disk(radius_px: float) -> NDArray[np.bool_]:
    r = max(1, int(round(radius_px)))
    y, x = np.mgrid[-r:r + 1, -r:r + 1]
    return np.asarray(x * x + y * y <= r * r + 0.5)


def _disk_op(x: NDArray[np.bool_], radius_px: float, *, dilate: bool) -> NDArray[np.bool_]:
    """Binary dilation (or erosion) of every slice of a stack (z, y, x) by `_disk(radius_px)`,
    outside the array counting as False: exactly what ndimage.binary_dilation / binary_erosion
    with that structure give, built from one 1D running max/min along x per distinct half-width
    of the disk's rows and one shifted OR/AND per row, a few times faster on 2 cores."""
    r = max(1, int(round(radius_px)))
    run = ndi.maximum_filter1d if dilate else ndi.minimum_filter1d
    xu = x.view(np.uint8)
    rows: dict[int, NDArray[np.bool_]] = {}
    out = np.zeros(x.shape, bool) if dilate else np.ones(x.shape, bool)
    ny = x.shape[1]
    for dy in range(-r, r + 1):
        w = int(np.floor(np.sqrt(r * r + 0.5 - dy * dy) + 1e-9))  # the half-width of the disk's row dy
        if w not in rows:
            rows[w] = run(xu, 2 * w + 1, axis=2, mode="constant", cval=0).view(bool) if w else x
        src = rows[w][:, dy:] if dy >= 0 else rows[w][:, :dy]
        dst = out[:, :ny - dy] if dy >= 0 else out[:, -dy:]
        if dilate:
            dst |= src
        else:
            dst &= src
            if dy > 0:  # rows whose neighbour dy lies outside the array: eroded
                out[:, ny - dy:] = False
            elif dy < 0:
                out[:, :-dy] = False
    return out


#: in-plane 4-connectivity for labelling a stack slice by slice (nothing links two slices)
_IN_PLANE = np.zeros((3, 3, 3), bool)
_IN_PLANE[1] = ndi.generate_binary_structure(2, 1)


def _fill_in_plane(closed: NDArray[np.bool_]) -> NDArray[np.bool_]:
    """`closed` with the holes of every slice filled (what ndimage.binary_fill_holes gives for each
    slice on its own): background not 4-connected to a slice's border is a hole."""
    labels, n = ndi.label(~closed, structure=_IN_PLANE)
    outside = np.zeros(n + 1, bool)
    for edge in (labels[:, 0], labels[:, -1], labels[:, :, 0], labels[:, :, -1]):
        outside[edge] = True
    outside[0] = False  # label 0 is `closed` itself
    return ~outside[labels]


def _hull(points: NDArray[np.int64], shape: tuple[int, int]) -> NDArray[np.bool_] | None:
    """The filled convex hull of pixel coordinates (row, col); None when there is none."""
    from scipy.spatial import ConvexHull, QhullError

    try:
        hull = ConvexHull(points.astype(np.float64))
    except (QhullError, ValueError):
        return None
    lo, hi = points.min(axis=0), points.max(axis=0) + 1
    yy, xx = np.mgrid[lo[0]:hi[0], lo[1]:hi[1]]
    inside = np.ones(yy.shape, bool)
    for a, b, c in hull.equations:  # a*row + b*col + c <= 0 inside
        inside &= a * yy + b * xx + c <= 1e-9
    out = np.zeros(shape, bool)
    out[lo[0]:hi[0], lo[1]:hi[1]] = inside
    return out


def _hull_area_bound(points: NDArray[np.int64]) -> float:
    """An upper bound of the pixel count of `_hull(points)`: the hull's area plus its perimeter
    (pixel centres on or near the outline) and a margin; 0 when there is no hull."""
    from scipy.spatial import ConvexHull, QhullError

    try:
        hull = ConvexHull(points.astype(np.float64))
    except (QhullError, ValueError):
        return 0.0
    return float(hull.volume + hull.area + 4.0)  # in 2D, qhull's volume is the area, its area the perimeter


def _open_rings(ring: NDArray[np.bool_], closed: NDArray[np.bool_], soft: NDArray[np.bool_],
                ring_area: NDArray[np.int64], slices: range) -> None:
    """Replace, in place, the cavity of each slice in `slices` whose ring is open (its bone's hull
    holds more than HULL_RATIO x what the ring filled) by the soft tissue inside that hull."""
    for k in slices:
        pts = np.argwhere(closed[k])
        if len(pts) < 3:
            continue
        limit = HULL_RATIO * max(int(ring_area[k]), 1)
        if _hull_area_bound(pts) <= limit:  # the usual case, a closed ring: no need to draw the hull
            continue
        hull = _hull(pts, ring.shape[1:])
        if hull is None:
            continue
        hull &= soft[k]
        if int(np.count_nonzero(hull)) > limit:
            ring[k] = hull


def _computed_slices(z: int, extents: NDArray[np.float64]) -> NDArray[np.intp]:
    """The slices the cavity is computed on: every one, or for a thin series every `stride`-th
    (and the last) so that none is more than Z_STEP_MM from its nearest computed one."""
    stride = max(1, int(Z_STEP_MM // max(float(extents.max(initial=0.0)), 1e-3)))
    return np.unique(np.r_[np.arange(0, z, stride), z - 1]).astype(np.intp)


def _nearest_rows(ks: NDArray[np.intp], z: int) -> NDArray[np.intp]:
    """For each of `z` slices, the index into `ks` (sorted slice indices) of the nearest one."""
    if len(ks) == 1:
        return np.zeros(z, np.intp)
    j = np.arange(z)
    pos = np.clip(np.searchsorted(ks, j), 1, len(ks) - 1)
    return np.where(j - ks[pos - 1] <= ks[pos] - j, pos - 1, pos).astype(np.intp)


def intracranial(hu: NDArray[Any], spacing: Sequence[float], *, head_up: bool = True,
                 extents: Sequence[float] | None = None) -> Cavity:
    """The intracranial cavity of an HU volume (z, y, x) with `spacing` (sx, sy, sz) mm.

    `head_up`: slice index grows towards the vertex (the normal points to the patient's head).
    `extents`: each slice's extent along the normal (mixed slice thickness); default sz each.
    """
    z, ny, nx = hu.shape
    step = 2 if min(ny, nx) >= 384 else 1
    px = float(min(spacing[0], spacing[1])) * step
    ext = np.full(z, float(spacing[2])) if extents is None else np.asarray(extents, np.float64)
    dec_shape = (z, (ny + step - 1) // step, (nx + step - 1) // step)
    mask = np.zeros(dec_shape, bool)
    core = np.zeros(dec_shape, bool)
    empty = Cavity(mask=mask, core=core, step=step, area_mm2=np.zeros(z), extents_mm=ext)
    if z == 0:
        return empty
    # Thin series: the slices computed, and for every slice the row of the computed one nearest to it
    ks = _computed_slices(z, ext)
    row = _nearest_rows(ks, z)
    dec = hu[ks, ::step, ::step] if len(ks) < z else hu[:, ::step, ::step]
    bone = dec >= BONE_HU
    # Only the box holding bone can hold the cavity (it lies inside the closed bone's holes or hull)
    zs = np.flatnonzero(bone.any(axis=(1, 2)))
    if zs.size == 0:
        return empty
    z0, z1 = int(zs[0]), int(zs[-1]) + 1
    bone = bone[z0:z1]
    ys = np.flatnonzero(bone.any(axis=(0, 2)))
    xs = np.flatnonzero(bone.any(axis=(0, 1)))
    y0, y1, x0, x1 = int(ys[0]), int(ys[-1]) + 1, int(xs[0]), int(xs[-1]) + 1
    bone = bone[:, y0:y1, x0:x1]
    sub = dec[z0:z1, y0:y1, x0:x1]
    soft = (sub > AIR_HU) & (sub < BONE_HU)
    del dec, sub
    # 1. the closing bridges gaps in the ring; padded so that it never reaches the box's edge
    pad = 2 * max(1, int(round(CLOSE_MM / px))) + 1
    padded = np.pad(bone, ((0, 0), (pad, pad), (pad, pad)))
    closed = _disk_op(_disk_op(padded, CLOSE_MM / px, dilate=True), CLOSE_MM / px, dilate=False)
    closed = closed[:, pad:-pad, pad:-pad] | bone
    del padded
    # 2. what it bridged is soft tissue and stays in (blood touching an oblique cut through the
    # frontal bone lies in such a bay)
    interior = _fill_in_plane(closed) & ~bone
    inside = interior & soft
    # 3. an open ring (craniectomy, fracture gap) fills nothing or little: the hull instead, on the
    # slices above the widest ring only
    n = z1 - z0
    ring_area = inside.sum(axis=(1, 2))
    widest = int(np.argmax(ring_area)) if ring_area.any() else (n - 1 if head_up else 0)
    _open_rings(inside, closed, soft, ring_area, range(widest + 1, n) if head_up else range(0, widest))
    del closed, soft, bone
    rows, box = ks[z0:z1], (y0, y1, x0, x1)
    # 4. the largest 3D component once thin bony walls are split, grown back inside (2)
    seeds = _disk_op(inside, SPLIT_MM / px, dilate=False)
    labels, count = ndi.label(seeds)
    del seeds
    if count == 0:
        return replace(empty, interior=interior, rows=rows, box=box)
    sizes = np.bincount(labels.ravel(), minlength=count + 1)
    sizes[0] = 0
    biggest = int(np.argmax(sizes))
    # work on the largest component's box only (plus what growing it back can reach)
    g = max(1, int(round(SPLIT_MM / px))) + 1
    bz, by, bx = ndi.find_objects(labels, max_label=biggest)[biggest - 1]  # type: ignore[misc]
    by = slice(max(by.start - g, 0), by.stop + g)
    bx = slice(max(bx.start - g, 0), bx.stop + g)
    cav = labels[bz, by, bx] == biggest
    del labels
    cav = _disk_op(cav, SPLIT_MM / px, dilate=True) & inside[bz, by, bx]
    # 5. the core: the cavity less the inner-table rim
    cav_core = _disk_op(cav, RIM_MM / px, dilate=False)
    # One grid pixel more: on the decimated grid the boundary pixel is sampled in the inner table,
    # while the full-resolution pixels beside it can be blood touching the bone. The skull (4-8 mm)
    # still separates the cavity from the scalp.
    cav = _disk_op(np.pad(cav, ((0, 0), (1, 1), (1, 1))), 1.0, dilate=True)
    # back onto the decimated grid, every slice taking its computed slice's cavity
    where = np.full(len(ks), -1, np.intp)
    where[z0 + bz.start:z0 + bz.stop] = np.arange(bz.stop - bz.start)
    src = where[row]
    have = src >= 0
    ya, xa = y0 + by.start, x0 + bx.start
    yb, xb = ya + cav_core.shape[1], xa + cav_core.shape[2]
    core[have, ya:yb, xa:xb] = cav_core[src[have]]
    # the grown cavity is one pixel larger on each side (clipped at the grid's edge)
    gy0, gx0 = max(ya - 1, 0), max(xa - 1, 0)
    gy1, gx1 = min(yb + 1, dec_shape[1]), min(xb + 1, dec_shape[2])
    mask[have, gy0:gy1, gx0:gx1] = cav[src[have]][:, gy0 - (ya - 1):gy1 - (ya - 1), gx0 - (xa - 1):gx1 - (xa - 1)]
    area = mask.sum(axis=(1, 2)).astype(np.float64) * px * px
    return Cavity(mask=mask, core=core, step=step, area_mm2=area, extents_mm=ext, interior=interior, rows=rows,
                  box=box)


def gate_mask(mask: NDArray[np.bool_], cavity: Cavity, spacing: Sequence[float]) -> int:
    """Remove predicted blood outside the cavity, and components lying mostly in its rim far from
    any other blood, in place (`spacing` (sx, sy, sz) mm). Returns the number of voxels removed.

    The raw U-Net mask can span the whole head (scalp, skull base), so its box is most of a thin
    series: the cavity is upsampled and applied `GATE_CHUNK` slices at a time, and the 3D labels
    cover only the box of what lies inside the cavity (the int32 labels and the full-resolution
    cavity of the raw box were a worker's peak memory, bench/memory.py)."""
    if not mask.any():
        return 0
    before = int(np.count_nonzero(mask))
    box = _box(mask)
    sub = mask[box]
    for c in _chunks(sub.shape[0]):
        sub[c] &= cavity.full(cavity.mask, _sub_box(box, c))
    if sub.any():
        inner = _box(sub)  # what lies inside the cavity: a smaller box to label
        box = (slice(box[0].start + inner[0].start, box[0].start + inner[0].stop),
               slice(box[1].start + inner[1].start, box[1].start + inner[1].stop),
               slice(box[2].start + inner[2].start, box[2].start + inner[2].stop))
        sub = sub[inner]
        labels, n = label_compact(sub)
        total = np.bincount(labels.ravel(), minlength=n + 1)
        in_core = np.zeros(n + 1, np.int64)
        for c in _chunks(sub.shape[0]):
            core = cavity.full(cavity.core, _sub_box(box, c))
            in_core += np.bincount(labels[c][core], minlength=n + 1)
        keep = in_core >= CORE_FRACTION * total
        keep[0] = False
        rim_only = np.flatnonzero(~keep[1:]) + 1
        if rim_only.size and keep.any():
            keep |= _near_kept(labels, keep, rim_only, spacing)
        for c in _chunks(sub.shape[0]):
            sub[c] = keep[labels[c]]
    return before - int(np.count_nonzero(mask))


def label_compact(mask: NDArray[np.bool_]) -> tuple[NDArray[np.integer[Any]], int]:
    """`ndi.label` with the 26-neighbourhood into uint16 labels (half the memory of int32: the
    box of a raw U-Net mask is most of a thin series); int32 when there are more components.
    The labels are the same numbers either way."""
    structure = np.ones((3, 3, 3), bool)
    labels = np.empty(mask.shape, np.uint16)
    try:
        n = ndi.label(mask, structure=structure, output=labels)
    except RuntimeError:  # more than 65,535 components: scipy refuses to truncate
        del labels
        labels, n = ndi.label(mask, structure=structure)
    return labels, int(n)


#: slices upsampled (or relabelled) at a time by `gate_mask`: 32 x 512^2 is 8 MB of bool
GATE_CHUNK = 32


def _box(mask: NDArray[np.bool_]) -> tuple[slice, slice, slice]:
    """The bounding box of a non-empty mask, from its per-axis projections."""
    z, y, x = (np.flatnonzero(mask.any(axis=axes)) for axes in ((1, 2), (0, 2), (0, 1)))
    return slice(int(z[0]), int(z[-1]) + 1), slice(int(y[0]), int(y[-1]) + 1), slice(int(x[0]), int(x[-1]) + 1)


def _chunks(n: int) -> list[slice]:
    return [slice(i, min(i + GATE_CHUNK, n)) for i in range(0, n, GATE_CHUNK)]


def _sub_box(box: tuple[slice, slice, slice], zs: slice) -> tuple[slice, slice, slice]:
    """`box` restricted to its slices `zs` (relative to the box)."""
    return slice(box[0].start + zs.start, box[0].start + zs.stop), box[1], box[2]


def _near_kept(labels: NDArray[np.integer[Any]], keep: NDArray[np.bool_], candidates: NDArray[np.int64],
               spacing: Sequence[float]) -> NDArray[np.bool_]:
    """Per label: is the component within SATELLITE_REACH_MM of a kept one (candidates only)."""
    from scipy.spatial import cKDTree

    scale = np.array([float(spacing[2]), float(spacing[1]), float(spacing[0])])
    kept = keep[labels]
    surface = kept & ~ndi.binary_erosion(kept)
    tree = cKDTree(np.argwhere(surface) * scale)
    out = np.zeros(keep.size, bool)
    for j in candidates:
        d, _ = tree.query(np.argwhere(labels == j) * scale, k=1, distance_upper_bound=SATELLITE_REACH_MM)
        out[j] = bool(np.isfinite(d).any())
    return out


def coverage_problem(cavity: Cavity, *, head_up: bool = True) -> str | None:
    """None when the series covers the brain; else the reason for the not-analysed report."""
    area = cavity.area_mm2
    n = len(area)
    covered = float(np.sum(cavity.extents_mm))
    what = f"{n} slices cover {covered:.0f} mm"
    if n == 0 or float(area.max()) <= 0.0:
        return f"incomplete coverage: no intracranial cavity found ({what})"
    widest = float(area.max())
    top, bottom = (area[-1], area[0]) if head_up else (area[0], area[-1])
    if top > TOP_MAX_FRACTION * widest:
        return f"incomplete coverage: {what}, the brain extends beyond the top slice"
    if bottom > BOTTOM_MAX_FRACTION * widest:
        return f"incomplete coverage: {what}, the brain extends below the bottom slice"
    return None
