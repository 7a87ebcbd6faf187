"""What the radiologist reads besides the volume: where the bleed is and how far it reaches.

From the HU volume, the hematoma mask and the intracranial cavity (`brain.intracranial`), with the
patient's directions from Image Orientation (Patient) (DICOM LPS: +x is the patient's left, -y
anterior), never assumed from the matrix:

* **head frame** — the skull's symmetry plane is the cavity's long (antero-posterior) axis
  through its centroid, slice by slice (the axis angle is the median over the wide slices; its
  sign and the left-right sign come from the orientation); the vertex is the highest slice whose
  cavity holds 2 % of the widest one's area.
* **ventricles** — CSF-dense voxels (smoothed 0.8 mm in-plane, -5 to 14 HU) at least 12 mm inside
  the inner table, opened by a 2.2 mm disc (the interhemispheric fissure and sulci are narrower
  than that; the lateral ventricles are wider), within 28 mm of the midline and 25-65 mm below the
  vertex (above the basal cisterns).
* **midline shift** — the septum pellucidum: on each antero-posterior line through the ventricle
  slices, the gap (1-10 mm) between ventricular content (CSF or blood) on the left and on the
  right nearest the midline; its centre's median distance from the skull's symmetry plane, signed
  (+ towards the patient's left), as the foramen-of-Monro measurement reads it.
* **intraventricular blood** — blood inside the ventricles' envelope: the CSF ventricles and their
  mirror image about the septum (a lateral ventricle filled with blood is where the other one's
  mirror lies), grown 1.5 mm. A bleed that lies on both sides of the midline, close to it, deep,
  and in the ventricle range is intraventricular as a whole.
* **location** (an anatomical rule, no atlas; the rule is in `site_rule`): the parenchymal blood's
  largest component's centroid: infratentorial when 85 mm or more below the vertex in the back
  half of the cavity (cerebellum, or brainstem within 10 mm of the midline); deep when at least 30
  mm inside the inner table and within 35 mm of the midline (thalamus when more than 6.5 mm behind
  the level's cavity centre, else basal ganglia); otherwise lobar, the lobe by `lobe_of`.
* **side** — the parenchymal blood's share left of the midline (or all blood when the bleed is
  intraventricular): >= 85 % left, <= 15 % right, else midline when its centroid is within 5 mm
  of the plane and half of it within 3 mm, else bilateral.
* **perihematomal oedema** — voxels within 12 mm of the blood, in the cavity's core, smoothed
  (1.2 mm in-plane) to at least 10 HU (not CSF) and at least `OEDEMA_DROP_HU` below the median of
  the parenchyma 12-20 mm away, connected to the blood; ventricles excluded.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage as ndi

from hexnode.models.brain import Cavity
from hexnode.pipeline.contracts import Findings

#: lobes along the antero-posterior axis of the inner table on the bleed's level (0 front, 1 back):
#: the frontal lobe ends at the central sulcus, about 40 % back; the occipital begins at the
#: parieto-occipital sulcus, about 75 % back; the temporal lobe lies in between below the Sylvian
#: fissure, about 60 mm or more below the vertex
FRONTAL_END = 0.40
OCCIPITAL_START = 0.75
TEMPORAL_BELOW_VERTEX_MM = 60.0
INFRATENTORIAL_BELOW_VERTEX_MM = 85.0
DEEP_MIN_DEPTH_MM = 30.0
DEEP_MAX_LATERAL_MM = 35.0
THALAMUS_BEHIND_MM = 6.5
BRAINSTEM_LATERAL_MM = 10.0
VENTRICLE_RANGE_MM = (25.0, 65.0)  # below the vertex
VENTRICLE_LATERAL_MM = 28.0
OEDEMA_REACH_MM = 12.0
OEDEMA_DROP_HU = 5.0


def lobe_of(ap_fraction: float, below_vertex_mm: float) -> str:
    """The lobe of a lobar bleed's centre: `ap_fraction` 0 at the front of the inner table, 1 at
    the back, on its level; `below_vertex_mm` its depth below the vertex."""
    if below_vertex_mm >= TEMPORAL_BELOW_VERTEX_MM and FRONTAL_END <= ap_fraction <= OCCIPITAL_START:
        return "temporal"
    if ap_fraction < FRONTAL_END:
        return "frontal"
    if ap_fraction > OCCIPITAL_START:
        return "occipital"
    return "parietal"


def site_rule(*, lateral_mm: float, behind_centre_mm: float, ap_fraction: float, below_vertex_mm: float,
              table_depth_mm: float) -> tuple[str, str]:
    """(location, site) of a parenchymal bleed's centre by the anatomical rule of the module
    docstring; the generator's truth applies the same rule to the bleed it drew."""
    if below_vertex_mm >= INFRATENTORIAL_BELOW_VERTEX_MM and ap_fraction > 0.55:
        return "infratentorial", "brainstem" if abs(lateral_mm) < BRAINSTEM_LATERAL_MM else "cerebellum"
    if table_depth_mm >= DEEP_MIN_DEPTH_MM and abs(lateral_mm) <= DEEP_MAX_LATERAL_MM:
        return "deep", "thalamus" if behind_centre_mm > THALAMUS_BEHIND_MM else "basal_ganglia"
    return "lobar", lobe_of(ap_fraction, below_vertex_mm)


@dataclass(frozen=True)
class HeadFrame:
    """The skull's symmetry frame on the image grid (mm from the top-left pixel centre)."""

    centres: NDArray[np.float64]  # (z, 2) per slice: (x mm, y mm) of the cavity centroid
    left: NDArray[np.float64]  # unit (x, y) towards the patient's left
    anterior: NDArray[np.float64]  # unit (x, y) towards the front
    below_vertex: NDArray[np.float64]  # (z,) mm below the vertex
    ap_span: NDArray[np.float64]  # (z, 2) the cavity's (front, back) along `anterior` from the centre

    def lateral(self, k: NDArray[Any], xy: NDArray[np.float64]) -> NDArray[np.float64]:
        return np.asarray((xy - self.centres[k]) @ self.left)

    def forward(self, k: NDArray[Any], xy: NDArray[np.float64]) -> NDArray[np.float64]:
        return np.asarray((xy - self.centres[k]) @ self.anterior)


def _unit(v: NDArray[np.float64]) -> NDArray[np.float64]:
    return v / max(float(np.linalg.norm(v)), 1e-9)


def head_frame(cavity: Cavity, spacing: Sequence[float], orientation: Sequence[float], *, head_up: bool = True,
               extents: Sequence[float] | None = None) -> HeadFrame | None:
    """The head frame from the cavity; None when the cavity is empty."""
    sx, sy = float(spacing[0]) * cavity.step, float(spacing[1]) * cavity.step
    row, col = np.asarray(orientation[:3], float), np.asarray(orientation[3:6], float)
    # the patient's left (+x LPS) and front (-y LPS) as image (x, y) directions
    left0 = _unit(np.array([row[0], col[0]]))
    front0 = _unit(np.array([-row[1], -col[1]]))
    area = cavity.mask.sum(axis=(1, 2)).astype(float)
    nz = area.size
    if nz == 0 or area.max() <= 0:
        return None
    wide = np.flatnonzero(area >= 0.5 * area.max())
    centres = np.zeros((nz, 2))
    axes = []
    spans = np.zeros((nz, 2))
    for k in range(nz):
        ys, xs = np.nonzero(cavity.mask[k])
        if ys.size < 10:
            continue
        pts = np.stack([xs * sx, ys * sy], axis=1)  # decimated pixel i is the full grid's step * i
        c = pts.mean(axis=0)
        centres[k] = c
        if k in wide:
            w, v = np.linalg.eigh(np.cov((pts - c).T))
            ax = v[:, int(np.argmax(w))]
            axes.append(ax if ax @ front0 >= 0 else -ax)
    have = area > 0
    idx = np.flatnonzero(have)
    for k in range(nz):  # slices without cavity take the nearest one's centre
        if not have[k]:
            centres[k] = centres[idx[np.argmin(np.abs(idx - k))]]
    angles = np.array([math.atan2(a[1], a[0]) for a in axes]) if axes else np.array([math.atan2(front0[1], front0[0])])
    ref = math.atan2(front0[1], front0[0])
    d = np.angle(np.exp(1j * (angles - ref)))
    theta = ref + float(np.median(d))
    anterior = np.array([math.cos(theta), math.sin(theta)])
    left = np.array([-anterior[1], anterior[0]])
    if left @ left0 < 0:
        left = -left
    for k in (int(i) for i in idx):
        ys, xs = np.nonzero(cavity.mask[k])
        pts = np.stack([xs * sx, ys * sy], axis=1)
        f = (pts - centres[k]) @ anterior
        spans[k] = (float(f.max()), float(-f.min()))
    ext = np.full(nz, float(spacing[2])) if extents is None else np.asarray(extents, float)
    z = np.cumsum(ext) - ext / 2.0
    if not head_up:
        z = -z
    big = np.flatnonzero(area >= 0.02 * area.max())
    top = float(z[big].max())
    return HeadFrame(centres=centres, left=left, anterior=anterior, below_vertex=top - z, ap_span=spans)


def _grid_xy(ys: NDArray[Any], xs: NDArray[Any], spacing: Sequence[float]) -> NDArray[np.float64]:
    return np.stack([xs * float(spacing[0]), ys * float(spacing[1])], axis=1).astype(np.float64)


def _disk(radius_px: float) -> NDArray[np.bool_]:
    r = max(1, int(math.floor(radius_px)))
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
    return np.asarray(xx * xx + yy * yy <= radius_px * radius_px + 1e-9)


def ventricles(hu: NDArray[Any], cavity: Cavity, frame: HeadFrame, spacing: Sequence[float]
               ) -> tuple[NDArray[np.bool_], slice]:
    """CSF ventricles (bool, slices `zs` of the volume) by the rule of the module docstring."""
    lo, hi = VENTRICLE_RANGE_MM
    ks = np.flatnonzero((frame.below_vertex >= lo) & (frame.below_vertex <= hi))
    nz, ny, nx = hu.shape
    if ks.size == 0:
        return np.zeros((0, ny, nx), bool), slice(0, 0)
    zs = slice(int(ks.min()), int(ks.max()) + 1)
    sx, sy = float(spacing[0]), float(spacing[1])
    out = np.zeros((zs.stop - zs.start, ny, nx), bool)
    step = cavity.step
    yy, xx = np.mgrid[0:ny, 0:nx]
    for j, k in enumerate(range(zs.start, zs.stop)):
        cav = cavity.mask[k]
        if not cav.any():
            continue
        depth = ndi.distance_transform_edt(cav, sampling=(sy * step, sx * step))
        deep = np.repeat(np.repeat(depth >= 12.0, step, axis=0), step, axis=1)[:ny, :nx]
        sm = ndi.gaussian_filter(np.asarray(hu[k], np.float32), (0.8 / sy, 0.8 / sx))
        csf = (sm > -5.0) & (sm < 14.0) & deep
        lat = (xx * sx - frame.centres[k][0]) * frame.left[0] + (yy * sy - frame.centres[k][1]) * frame.left[1]
        csf &= np.abs(lat) < VENTRICLE_LATERAL_MM
        out[j] = ndi.binary_opening(csf, _disk(2.2 / sx))
    lab, n = ndi.label(out)
    if n:
        vox_ml = sx * sy * float(spacing[2]) / 1000.0
        sizes = np.bincount(lab.ravel()) * vox_ml
        keep = sizes >= 0.2
        keep[0] = False
        out = keep[lab]
    return out, zs


def septum_offsets(content: NDArray[np.bool_], zs: slice, frame: HeadFrame, spacing: Sequence[float]
                   ) -> list[float]:
    """The septum's lateral offset (mm, + left) on every antero-posterior line where one is seen."""
    sx, sy = float(spacing[0]), float(spacing[1])
    lat = np.arange(-20.0, 20.0 + 1e-9, 0.25)
    fwd = np.arange(-30.0, 25.0 + 1e-9, 1.0)
    ll, ff = np.meshgrid(lat, fwd)
    found: list[float] = []
    for j in range(content.shape[0]):
        k = zs.start + j
        if not content[j].any():
            continue
        xy = frame.centres[k][None, None, :] + ll[..., None] * frame.left + ff[..., None] * frame.anterior
        rows = ndi.map_coordinates(content[j].astype(np.uint8), [xy[..., 1] / sy, xy[..., 0] / sx], order=0)
        for r in rows.astype(bool):
            best = _gap_centre(r, lat)
            if best is not None:
                found.append(best)
    return found


def _gap_centre(r: NDArray[np.bool_], lat: NDArray[np.float64]) -> float | None:
    """The centre of the 1-10 mm gap nearest lat 0 between content runs of at least 3 mm each side."""
    if r.sum() < 2:
        return None
    edges = np.flatnonzero(np.diff(r.astype(np.int8)))
    # runs as (start, stop) indices
    bounds = np.concatenate([[0], edges + 1, [r.size]])
    runs = [(int(a), int(b), bool(r[a])) for a, b in zip(bounds[:-1], bounds[1:], strict=False)]
    step = float(lat[1] - lat[0])
    best: float | None = None
    for i in range(1, len(runs) - 1):
        a, b, val = runs[i]
        if val:
            continue
        width = (b - a) * step
        la, lb = runs[i - 1], runs[i + 1]
        if not (1.0 <= width <= 10.0) or (la[1] - la[0]) * step < 3.0 or (lb[1] - lb[0]) * step < 3.0:
            continue
        c = float((lat[a] + lat[b - 1]) / 2.0)
        if best is None or abs(c) < abs(best):
            best = c
    return best


def _mirror(vent: NDArray[np.bool_], zs: slice, frame: HeadFrame, spacing: Sequence[float], about_mm: float
            ) -> NDArray[np.bool_]:
    """`vent` reflected about the plane `about_mm` to the left of the skull's symmetry plane."""
    sx, sy = float(spacing[0]), float(spacing[1])
    _, ny, nx = vent.shape
    yy, xx = np.mgrid[0:ny, 0:nx].astype(np.float64)
    out = np.zeros_like(vent)
    for j in range(vent.shape[0]):
        if not vent[j].any():
            continue
        k = zs.start + j
        px, py = xx * sx, yy * sy
        lat = (px - frame.centres[k][0]) * frame.left[0] + (py - frame.centres[k][1]) * frame.left[1]
        shift = 2.0 * (lat - about_mm)
        mx, my = px - shift * frame.left[0], py - shift * frame.left[1]
        out[j] = ndi.map_coordinates(vent[j].astype(np.uint8), [my / sy, mx / sx], order=0).astype(bool)
    return out


def _ml(n: int, spacing: Sequence[float]) -> float:
    return n * float(spacing[0]) * float(spacing[1]) * float(spacing[2]) / 1000.0


def oedema_ml(hu: NDArray[Any], mask: NDArray[np.bool_], cavity: Cavity, spacing: Sequence[float],
              exclude: NDArray[np.bool_] | None = None) -> float:
    """Perihematomal oedema (ml) by the rule of the module docstring; `exclude` (full volume): voxels
    never counted (the ventricles)."""
    sx, sy, sz = (float(s) for s in spacing[:3])
    zz, yy, xx = np.nonzero(mask)
    if zz.size == 0:
        return 0.0
    m = 20.0
    gz, gy, gx = int(math.ceil(m / sz)), int(math.ceil(m / sy)), int(math.ceil(m / sx))
    nz, ny, nx = mask.shape
    box = (slice(max(int(zz.min()) - gz, 0), min(int(zz.max()) + gz + 1, nz)),
           slice(max(int(yy.min()) - gy, 0), min(int(yy.max()) + gy + 1, ny)),
           slice(max(int(xx.min()) - gx, 0), min(int(xx.max()) + gx + 1, nx)))
    blood = mask[box]
    sm = ndi.gaussian_filter(np.asarray(hu[box], np.float32), (0, 1.2 / sy, 1.2 / sx))
    core = cavity.full(cavity.core, box)
    dist = ndi.distance_transform_edt(~blood, sampling=(sz, sy, sx))
    tissue = core & ~blood & (sm >= 14.0) & (sm <= 50.0)
    if exclude is not None:
        tissue &= ~exclude[box]
    ref_zone = tissue & (dist > OEDEMA_REACH_MM) & (dist <= 20.0)
    if not ref_zone.any():
        return 0.0
    ref = float(np.median(sm[ref_zone]))
    cand = core & ~blood & (dist <= OEDEMA_REACH_MM) & (sm >= 10.0) & (sm <= ref - OEDEMA_DROP_HU)
    if exclude is not None:
        cand &= ~exclude[box]
    lab, n = ndi.label(cand | blood)
    if n == 0:
        return 0.0
    touching = np.unique(lab[blood])
    keep = np.isin(lab, touching[touching > 0]) & cand
    return _ml(int(keep.sum()), spacing)


def measure(hu: NDArray[Any], mask: NDArray[Any], spacing: Sequence[float], cavity: Cavity,
            orientation: Sequence[float], *, head_up: bool = True, extents: Sequence[float] | None = None
            ) -> Findings | None:
    """The findings of a bleed (`mask` non-empty); None when the head frame cannot be found."""
    blood = np.asarray(mask) > 0
    if not blood.any():
        return None
    frame = head_frame(cavity, spacing, orientation, head_up=head_up, extents=extents)
    if frame is None:
        return None
    vent, zs = ventricles(hu, cavity, frame, spacing)
    content = vent | blood[zs]
    offsets = septum_offsets(content, zs, frame, spacing)
    mls = float(np.median(offsets)) if len(offsets) >= 5 else None
    envelope = vent | _mirror(vent, zs, frame, spacing, mls or 0.0)
    envelope = ndi.binary_dilation(envelope, _disk(1.5 / float(spacing[0]))[None])
    ivh = np.zeros_like(blood)
    ivh[zs] = envelope & blood[zs]
    zz, yy, xx = np.nonzero(blood)
    xy = _grid_xy(yy, xx, spacing)
    lat_all = frame.lateral(zz, xy)
    total = _ml(zz.size, spacing)
    central = (abs(float(np.median(lat_all))) < 12.0 and min(float((lat_all > 0).mean()), float((lat_all < 0).mean())) >= 0.25
               and float(np.median(frame.below_vertex[zz])) <= VENTRICLE_RANGE_MM[1] + 10.0)
    parenchymal = blood & ~ivh
    ivh_ml = _ml(int(ivh.sum()), spacing)
    if central or _ml(int(parenchymal.sum()), spacing) < 0.4:
        location, site = "intraventricular", "ventricles"
        ivh_ml = total
        side = _side(lat_all)
    else:
        lab, n = ndi.label(parenchymal)
        sizes = np.bincount(lab.ravel())
        sizes[0] = 0
        main = lab == int(np.argmax(sizes))
        pz, py, px = np.nonzero(main)
        k = int(round(float(pz.mean())))
        c = np.array([[float(px.mean()) * float(spacing[0]), float(py.mean()) * float(spacing[1])]])
        kk = np.array([k])
        lateral = float(frame.lateral(kk, c)[0])
        fwd = float(frame.forward(kk, c)[0])
        front, back = frame.ap_span[k]
        ap_fraction = (front - fwd) / max(front + back, 1e-6)
        step = cavity.step
        depth = ndi.distance_transform_edt(cavity.mask[k], sampling=(float(spacing[1]) * step, float(spacing[0]) * step))
        iy = min(int(c[0, 1] / float(spacing[1]) / step), depth.shape[0] - 1)
        ix = min(int(c[0, 0] / float(spacing[0]) / step), depth.shape[1] - 1)
        location, site = site_rule(lateral_mm=lateral, behind_centre_mm=-fwd, ap_fraction=ap_fraction,
                                   below_vertex_mm=float(frame.below_vertex[k]), table_depth_mm=float(depth[iy, ix]))
        pzz, pyy, pxx = np.nonzero(parenchymal)
        side = _side(frame.lateral(pzz, _grid_xy(pyy, pxx, spacing)))
    exclude = np.zeros_like(blood)
    exclude[zs] = envelope
    oed = oedema_ml(hu, blood, cavity, spacing, exclude) if location != "intraventricular" else 0.0
    return Findings(side=side, location=location, site=site, ivh_ml=ivh_ml, midline_shift_mm=mls, oedema_ml=oed)


def _side(lat: NDArray[np.float64]) -> str:
    share = float((lat > 0).mean())
    if share >= 0.85:
        return "left"
    if share <= 0.15:
        return "right"
    # midline: most of the blood on the plane itself (a bleed filling both lateral ventricles has
    # its centroid there too, but its blood beside it: bilateral)
    on_plane = float((np.abs(lat) < 3.0).mean())
    return "midline" if abs(float(np.mean(lat))) < 5.0 and on_plane >= 0.5 else "bilateral"
