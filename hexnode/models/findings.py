"""What the radiologist reads besides the volume: where the bleed is and how far it reaches.

From the HU volume, the hematoma mask and the intracranial cavity (`brain.intracranial`), with the
patient's directions from Image Orientation (Patient) (DICOM LPS: +x is the patient's left, -y
anterior), never assumed from the matrix. Everything is measured on the cavity's own grid (0.9 mm
pixels for a 512 matrix, HU and blood averaged over each pixel's block), cropped to the cavity's
box, on one slice in `Z_STEP_MM` of a thin series (each standing for its neighbours' extent);
depths inside the inner table and distances from the blood on pixels of about 1.8 mm (`Grid`):

* **head frame** — the skull's symmetry plane is the cavity's long (antero-posterior) axis
  through its centroid, slice by slice (the axis angle is the median over the wide slices; its
  sign and the left-right sign come from the orientation); the vertex is the highest slice whose
  cavity holds 2 % of the widest one's area.
* **ventricles** — CSF-dense voxels (smoothed 0.8 mm in-plane, -5 to 14 HU) at least 12 mm inside
  the inner table, opened by a 2.2 mm disc (the interhemispheric fissure and sulci are narrower
  than that; the lateral ventricles are wider), within 28 mm of the midline and 25-65 mm below the
  vertex (above the basal cisterns).
* **midline shift** — the septum pellucidum: on each antero-posterior line through the ventricle
  slices, the gap (1-10 mm) nearest the midline between two CSF ventricles at least 3 mm wide; its
  centre's median distance from the skull's symmetry plane, signed (+ towards the patient's left),
  as the foramen-of-Monro measurement reads it. Only when fewer than `MIN_SEPTUM_LINES` lines show
  one (a ventricle filled with blood) the gap between any ventricular content (CSF or blood): beside
  a large deep bleed the gap between the compressed ventricle and the blood lies nearer the
  midline than the septum.
* **intraventricular blood** — blood inside the ventricles' envelope: the CSF ventricles and their
  mirror image about the septum (a lateral ventricle filled with blood is where the other one's
  mirror lies), grown 1.5 mm; a connected piece of it counts only when some of its blood lies
  `IVH_CORE_MM` inside the ungrown envelope (a bleed lying against a ventricle touches the grown
  envelope with a rim of a pixel or two), and the total is reported from `IVH_MIN_ML` on. A bleed
  that lies on both sides of the midline, close to it, deep, and in the ventricle range is
  intraventricular as a whole.
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
#: a thin series is measured on one slice in this many mm (the findings are centimetre-sized)
Z_STEP_MM = 2.0
#: the depth inside the inner table is measured on pixels of about this size
DEPTH_GRID_MM = 1.8
#: the septum's offset is the median over at least this many antero-posterior lines
MIN_SEPTUM_LINES = 5
#: intraventricular blood reaches at least this far inside the ventricles' envelope, and is
#: reported from this volume on (below it: 0)
IVH_CORE_MM = 1.0
IVH_MIN_ML = 0.2


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
class Grid:
    """Where the findings are measured: the cavity's (decimated) in-plane grid cropped to the
    cavity's box, on every `Z_STEP_MM`-th millimetre of a thin series. Pixel (i, j) of the crop is the
    full matrix's block of `step` x `step` pixels at row (y0 + i) * step, column (x0 + j) * step."""

    ks: NDArray[np.intp]  # the volume's slices analysed
    weight_mm: NDArray[np.float64]  # the extent along the normal each analysed slice stands for
    z_mm: NDArray[np.float64]  # each analysed slice's position along the normal (grows to the vertex)
    y0: int
    x0: int
    ny: int
    nx: int
    step: int
    spacing: tuple[float, float]  # (x, y) mm of a grid pixel

    def coords(self, *, blocks: bool) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """(x, y) mm from the full matrix's first pixel centre of the crop's columns and rows: the
        block's centre (`blocks`, HU and blood averaged over the block) or its first pixel (the
        cavity, sampled on every `step`-th pixel)."""
        off = (self.step - 1) / 2.0 if blocks else 0.0
        fx, fy = self.spacing[0] / self.step, self.spacing[1] / self.step
        xs = ((self.x0 + np.arange(self.nx)) * self.step + off) * fx
        ys = ((self.y0 + np.arange(self.ny)) * self.step + off) * fy
        return np.asarray(xs, np.float64), np.asarray(ys, np.float64)

    def blocks(self, vol: NDArray[Any], which: NDArray[np.intp]) -> NDArray[np.float32]:
        """The mean of `vol` (full matrix) over each grid pixel's block, on analysed slices `which`."""
        s = self.step
        sub = np.asarray(vol[self.ks[which], self.y0 * s:(self.y0 + self.ny) * s, self.x0 * s:(self.x0 + self.nx) * s])
        if s == 1:
            return sub.astype(np.float32)
        pad = ((0, 0), (0, self.ny * s - sub.shape[1]), (0, self.nx * s - sub.shape[2]))
        if any(p[1] for p in pad):
            sub = np.pad(sub, pad, mode="edge")
        out = np.zeros((len(which), self.ny, self.nx), np.float32)
        for dy in range(s):  # strided sums: far quicker than a mean over a reshaped block axis
            for dx in range(s):
                out += sub[:, dy::s, dx::s]
        return out / np.float32(s * s)

    def voxel_ml(self, which: NDArray[np.intp]) -> NDArray[np.float64]:
        return np.asarray(self.spacing[0] * self.spacing[1] * self.weight_mm[which] / 1000.0)


def analysis_grid(cavity: Cavity, spacing: Sequence[float], extents: Sequence[float] | None = None,
                  *, head_up: bool = True) -> Grid | None:
    """The grid of the findings; None when the cavity is empty."""
    nz = cavity.mask.shape[0]
    ext = np.full(nz, float(spacing[2])) if extents is None else np.asarray(extents, np.float64)
    if nz == 0:
        return None
    n = max(1, int(Z_STEP_MM / max(float(ext.min()), 1e-3)))
    starts = np.arange(0, nz, n)
    ks = np.minimum(starts + n // 2, nz - 1).astype(np.intp)
    z = np.cumsum(ext) - ext / 2.0
    if not head_up:
        z = -z
    seen = cavity.mask[ks].any(axis=0)
    ys, xs = np.flatnonzero(seen.any(axis=1)), np.flatnonzero(seen.any(axis=0))
    if ys.size == 0:
        return None
    h, w = cavity.mask.shape[1:]
    y0, y1 = max(int(ys[0]) - 1, 0), min(int(ys[-1]) + 2, h)
    x0, x1 = max(int(xs[0]) - 1, 0), min(int(xs[-1]) + 2, w)
    s = cavity.step
    return Grid(ks=ks, weight_mm=np.add.reduceat(ext, starts), z_mm=z[ks], y0=y0, x0=x0, ny=y1 - y0, nx=x1 - x0,
                step=s, spacing=(float(spacing[0]) * s, float(spacing[1]) * s))


@dataclass(frozen=True)
class HeadFrame:
    """The skull's symmetry frame on the analysed slices (mm from the full matrix's first pixel)."""

    centres: NDArray[np.float64]  # (k, 2) per analysed slice: (x mm, y mm) of the cavity centroid
    left: NDArray[np.float64]  # unit (x, y) towards the patient's left
    anterior: NDArray[np.float64]  # unit (x, y) towards the front
    below_vertex: NDArray[np.float64]  # (k,) mm below the vertex
    ap_span: NDArray[np.float64]  # (k, 2) the cavity's (front, back) along `anterior` from the centre

    def lateral_map(self, i: int, xs: NDArray[np.float64], ys: NDArray[np.float64]) -> NDArray[np.float64]:
        """The lateral offset (mm, + left) of every pixel of a grid slice with coordinates xs, ys."""
        c = self.centres[i]
        return np.asarray((xs[None, :] - c[0]) * self.left[0] + (ys[:, None] - c[1]) * self.left[1])

    def lateral(self, i: NDArray[Any], xy: NDArray[np.float64]) -> NDArray[np.float64]:
        return np.asarray(np.einsum("nk,k->n", xy - self.centres[i], self.left))

    def forward(self, i: NDArray[Any], xy: NDArray[np.float64]) -> NDArray[np.float64]:
        return np.asarray(np.einsum("nk,k->n", xy - self.centres[i], self.anterior))


def _unit(v: NDArray[np.float64]) -> NDArray[np.float64]:
    return v / max(float(np.linalg.norm(v)), 1e-9)


def head_frame(cav: NDArray[np.bool_], grid: Grid, cavity: Cavity, orientation: Sequence[float], *,
               head_up: bool = True) -> HeadFrame | None:
    """The head frame from the cavity `cav` on the grid (moments of every analysed slice at once);
    None when the cavity is empty."""
    row, col = np.asarray(orientation[:3], float), np.asarray(orientation[3:6], float)
    # the patient's left (+x LPS) and front (-y LPS) as image (x, y) directions
    left0 = _unit(np.array([row[0], col[0]]))
    front0 = _unit(np.array([-row[1], -col[1]]))
    xs, ys = grid.coords(blocks=False)
    area = cav.sum(axis=(1, 2)).astype(np.float64)
    if area.size == 0 or area.max() <= 0:
        return None
    colsum, rowsum = cav.sum(axis=1).astype(np.float64), cav.sum(axis=2).astype(np.float64)
    have = area >= 10
    a = np.maximum(area, 1.0)
    centres = np.stack([colsum @ xs / a, rowsum @ ys / a], axis=1)
    idx = np.flatnonzero(have)
    if idx.size == 0:
        return None
    centres = centres[idx[np.argmin(np.abs(idx[None, :] - np.arange(area.size)[:, None]), axis=1)]]
    wide = np.flatnonzero(have & (area >= 0.5 * area.max()))
    cxx = colsum[wide] @ (xs * xs) / area[wide] - centres[wide, 0] ** 2
    cyy = rowsum[wide] @ (ys * ys) / area[wide] - centres[wide, 1] ** 2
    cxy = np.einsum("kyx,y,x->k", cav[wide], ys, xs, dtype=np.float64) / area[wide] - centres[wide, 0] * centres[wide, 1]
    ref = math.atan2(front0[1], front0[0])
    angles = []
    for i in range(wide.size):
        w, v = np.linalg.eigh(np.array([[cxx[i], cxy[i]], [cxy[i], cyy[i]]]))
        ax = v[:, int(np.argmax(w))]
        ax = ax if ax @ front0 >= 0 else -ax
        angles.append(math.atan2(ax[1], ax[0]))
    d = np.angle(np.exp(1j * (np.array(angles) - ref))) if angles else np.zeros(1)
    theta = ref + float(np.median(d))
    anterior = np.array([math.cos(theta), math.sin(theta)])
    left = np.array([-anterior[1], anterior[0]])
    if left @ left0 < 0:
        left = -left
    fmap = xs[None, :] * anterior[0] + ys[:, None] * anterior[1]
    c_f = centres @ anterior
    front = np.where(cav, fmap[None], -np.inf).max(axis=(1, 2)) - c_f
    back = c_f - np.where(cav, fmap[None], np.inf).min(axis=(1, 2))
    spans = np.where(have[:, None], np.stack([front, back], axis=1), 0.0)
    # the vertex from every slice's cavity area (the analysed slices may skip the top one)
    ext = cavity.extents_mm
    z = np.cumsum(ext) - ext / 2.0
    if not head_up:
        z = -z
    big = np.flatnonzero(cavity.area_mm2 >= 0.02 * cavity.area_mm2.max())
    top = float(z[big].max()) if big.size else float(grid.z_mm.max())
    return HeadFrame(centres=centres, left=left, anterior=anterior, below_vertex=top - grid.z_mm, ap_span=spans)


def _disk(radius_px: float) -> NDArray[np.bool_]:
    r = max(1, int(math.floor(radius_px)))
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
    return np.asarray(xx * xx + yy * yy <= radius_px * radius_px + 1e-9)


def _depth(cav: NDArray[np.bool_], grid: Grid) -> NDArray[np.float64]:
    """Each pixel's in-plane distance (mm) from the inner table, slice by slice (the slices are
    stacked with a spacing no in-plane distance reaches), on a grid of about `DEPTH_GRID_MM` (the
    rules compare it with 12 mm and 30 mm)."""
    gx, gy = grid.spacing
    f = max(1, int(round(DEPTH_GRID_MM / gx)))
    coarse = np.pad(cav[:, ::f, ::f], ((1, 1), (0, 0), (0, 0)))
    d = ndi.distance_transform_edt(coarse, sampling=(1e4, gy * f, gx * f))[1:-1]
    if f > 1:
        d = np.repeat(np.repeat(d, f, axis=1), f, axis=2)
    return np.asarray(d[:, :cav.shape[1], :cav.shape[2]])


def ventricles(hu_g: NDArray[np.float32], cav: NDArray[np.bool_], lat: NDArray[np.float64], grid: Grid,
               which: NDArray[np.intp]) -> NDArray[np.bool_]:
    """CSF ventricles on the grid's slices `which` by the rule of the module docstring; `hu_g` the
    block-averaged HU and `lat` the lateral offsets of those slices."""
    gx, gy = grid.spacing
    # the block mean is itself a 0.25 mm blur at 0.44 mm pixels: together about 0.8 mm
    sm = ndi.gaussian_filter(hu_g, (0, 0.75 / gy, 0.75 / gx))
    csf = (sm > -5.0) & (sm < 14.0) & (_depth(cav, grid) >= 12.0) & (np.abs(lat) < VENTRICLE_LATERAL_MM)
    out = ndi.binary_opening(csf, _disk(2.2 / gx)[None])
    lab, n = ndi.label(out)
    if n:
        sizes = ndi.sum_labels(np.ones_like(lab, np.float64) * grid.voxel_ml(which)[:, None, None], lab,
                               np.arange(n + 1))
        keep = np.asarray(sizes) >= 0.2
        keep[0] = False
        out = keep[lab]
    return np.asarray(out)


def septum_offsets(code: NDArray[np.int8], frame: HeadFrame, grid: Grid, which: NDArray[np.intp]
                   ) -> tuple[list[float], list[float]]:
    """The septum's lateral offset (mm, + left) on every antero-posterior line where one is seen:
    (between CSF on both sides, between any ventricular content). `code`: 1 CSF ventricle, 2 blood."""
    gx, gy = grid.spacing
    xs, ys = grid.coords(blocks=True)
    lat = np.arange(-20.0, 20.0 + 1e-9, 0.25)
    fwd = np.arange(-30.0, 25.0 + 1e-9, 1.0)
    ll, ff = np.meshgrid(lat, fwd)
    csf_only: list[float] = []
    any_content: list[float] = []
    for j, i in enumerate(which):
        if not code[j].any():
            continue
        xy = frame.centres[i][None, None, :] + ll[..., None] * frame.left + ff[..., None] * frame.anterior
        rows = ndi.map_coordinates(code[j], [(xy[..., 1] - ys[0]) / gy, (xy[..., 0] - xs[0]) / gx], order=0)
        for r in rows:
            got = _gap_centre(r, lat)
            if got is not None:
                any_content.append(got[0])
            got = _gap_centre(np.where(r == 1, 1, 0), lat)
            if got is not None:
                csf_only.append(got[0])
    return csf_only, any_content


def _gap_centre(r: NDArray[Any], lat: NDArray[np.float64]) -> tuple[float, float] | None:
    """The centre and width of the 1-10 mm gap nearest lat 0 between content runs of at least 3 mm
    each side."""
    on = r > 0
    if on.sum() < 2:
        return None
    edges = np.flatnonzero(np.diff(on.astype(np.int8)))
    bounds = np.concatenate([[0], edges + 1, [r.size]])
    runs = [(int(a), int(b), bool(on[a])) for a, b in zip(bounds[:-1], bounds[1:], strict=False)]
    step = float(lat[1] - lat[0])
    best: tuple[float, float] | None = None
    for i in range(1, len(runs) - 1):
        a, b, val = runs[i]
        if val:
            continue
        width = (b - a) * step
        la, lb = runs[i - 1], runs[i + 1]
        if not (1.0 <= width <= 10.0) or (la[1] - la[0]) * step < 3.0 or (lb[1] - lb[0]) * step < 3.0:
            continue
        c = float((lat[a] + lat[b - 1]) / 2.0)
        if best is None or abs(c) < abs(best[0]):
            best = (c, width)
    return best


def _mirror(vent: NDArray[np.bool_], lat: NDArray[np.float64], frame: HeadFrame, grid: Grid, about_mm: float
            ) -> NDArray[np.bool_]:
    """`vent` reflected about the plane `about_mm` to the left of the skull's symmetry plane."""
    gx, gy = grid.spacing
    xs, ys = grid.coords(blocks=True)
    out = np.zeros_like(vent)
    for j in range(vent.shape[0]):
        if not vent[j].any():
            continue
        shift = 2.0 * (lat[j] - about_mm)
        mx = xs[None, :] - shift * frame.left[0]
        my = ys[:, None] - shift * frame.left[1]
        out[j] = ndi.map_coordinates(vent[j].astype(np.uint8), [(my - ys[0]) / gy, (mx - xs[0]) / gx], order=0) > 0
    return out


def oedema_ml(hu: NDArray[Any], blood: NDArray[np.bool_], core: NDArray[np.bool_], grid: Grid,
              exclude: NDArray[np.bool_]) -> float:
    """Perihematomal oedema (ml) by the rule of the module docstring; `blood`, `core` (the cavity's)
    and `exclude` (the ventricles: never counted) on every analysed slice of the grid."""
    gx, gy = grid.spacing
    kz = np.flatnonzero(blood.any(axis=(1, 2)))
    if kz.size == 0:
        return 0.0
    _, yy, xx = np.nonzero(blood[kz])
    m = 20.0
    zlo, zhi = grid.z_mm[kz].min() - m, grid.z_mm[kz].max() + m
    which = np.flatnonzero((grid.z_mm >= min(zlo, zhi)) & (grid.z_mm <= max(zlo, zhi)))
    by, bx = int(math.ceil(m / gy)), int(math.ceil(m / gx))
    ys = slice(max(int(yy.min()) - by, 0), min(int(yy.max()) + by + 1, grid.ny))
    xs = slice(max(int(xx.min()) - bx, 0), min(int(xx.max()) + bx + 1, grid.nx))
    sub = Grid(ks=grid.ks, weight_mm=grid.weight_mm, z_mm=grid.z_mm, y0=grid.y0 + ys.start, x0=grid.x0 + xs.start,
               ny=ys.stop - ys.start, nx=xs.stop - xs.start, step=grid.step, spacing=grid.spacing)
    # the block mean is a 0.25 mm blur at 0.44 mm pixels: with this, about 1.2 mm
    sm = ndi.gaussian_filter(sub.blocks(hu, which), (0, 1.15 / gy, 1.15 / gx))
    b = blood[which, ys, xs]
    cz = core[which, ys, xs] & ~b & ~exclude[which, ys, xs]
    dz = float(np.median(np.diff(grid.z_mm[which]))) if which.size > 1 else 1e4
    # the distance from the blood on pixels of about DEPTH_GRID_MM (a block holding any blood is
    # at distance 0): it is compared with 12 and 20 mm
    f = max(1, int(round(DEPTH_GRID_MM / gx)))
    nb, ny, nx = b.shape
    pad = np.zeros((nb, -(-ny // f) * f, -(-nx // f) * f), bool)
    pad[:, :ny, :nx] = b
    coarse = pad.reshape(nb, pad.shape[1] // f, f, pad.shape[2] // f, f).any(axis=(2, 4))
    dist = ndi.distance_transform_edt(~coarse, sampling=(abs(dz) or 1e4, gy * f, gx * f))
    dist = np.repeat(np.repeat(dist, f, axis=1), f, axis=2)[:, :ny, :nx]
    tissue = cz & (sm >= 14.0) & (sm <= 50.0)
    ref_zone = tissue & (dist > OEDEMA_REACH_MM) & (dist <= 20.0)
    if not ref_zone.any():
        return 0.0
    ref = float(np.median(sm[ref_zone]))
    cand = cz & (dist <= OEDEMA_REACH_MM) & (sm >= 10.0) & (sm <= ref - OEDEMA_DROP_HU)
    lab, n = ndi.label(cand | b)
    if n == 0:
        return 0.0
    touching = np.unique(lab[b])
    keep = np.isin(lab, touching[touching > 0]) & cand
    return float(keep.sum(axis=(1, 2)) @ sub.voxel_ml(which))


def measure(hu: NDArray[Any], mask: NDArray[Any], spacing: Sequence[float], cavity: Cavity,
            orientation: Sequence[float], *, head_up: bool = True, extents: Sequence[float] | None = None
            ) -> Findings | None:
    """The findings of a bleed (`mask` non-empty); None when the head frame cannot be found."""
    grid = analysis_grid(cavity, spacing, extents, head_up=head_up)
    if grid is None:
        return None
    cav = cavity.mask[grid.ks, grid.y0:grid.y0 + grid.ny, grid.x0:grid.x0 + grid.nx]
    frame = head_frame(cav, grid, cavity, orientation, head_up=head_up)
    if frame is None:
        return None
    bleeding = np.flatnonzero(np.asarray(mask)[grid.ks].any(axis=(1, 2)))
    if bleeding.size == 0:
        return None
    frac = np.zeros(cav.shape, np.float32)  # each grid pixel's blood fraction
    frac[bleeding] = grid.blocks(mask, bleeding)
    blood = frac >= 0.5
    xs, ys = grid.coords(blocks=True)
    lo, hi = VENTRICLE_RANGE_MM
    vi = np.flatnonzero((frame.below_vertex >= lo) & (frame.below_vertex <= hi))
    lat_v = np.stack([frame.lateral_map(int(i), xs, ys) for i in vi]) if vi.size else np.zeros((0, grid.ny, grid.nx))
    vent = ventricles(grid.blocks(hu, vi), cav[vi], lat_v, grid, vi) if vi.size else np.zeros((0, grid.ny, grid.nx), bool)
    code = np.where(blood[vi], 2, np.where(vent, 1, 0)).astype(np.int8)
    csf_only, any_content = septum_offsets(code, frame, grid, vi)
    # the gap between two CSF ventricles first: beside a large deep bleed the gap between the
    # compressed ventricle and the blood around it lies nearer the midline than the septum
    offsets = csf_only if len(csf_only) >= MIN_SEPTUM_LINES else any_content
    mls = float(np.median(offsets)) if len(offsets) >= MIN_SEPTUM_LINES else None
    # intraventricular blood: blood in the ventricles' envelope whose component reaches deeper than
    # a rim inside it (blood lying against a ventricle touches its envelope with one pixel or two)
    inner = vent | _mirror(vent, lat_v, frame, grid, mls or 0.0)
    gx = grid.spacing[0]
    envelope = ndi.binary_dilation(inner, _disk(1.5 / gx)[None]) if vi.size else inner
    deep_inside = ndi.binary_erosion(inner, _disk(IVH_CORE_MM / gx)[None]) & blood[vi]
    lab, n = ndi.label(envelope & (frac[vi] > 0))
    reached = np.unique(lab[deep_inside])
    ivh_vi = np.isin(lab, reached[reached > 0]) if n else np.zeros_like(envelope)
    ivh = np.zeros(cav.shape, bool)
    ivh[vi] = ivh_vi
    ivh_ml = float((frac * ivh).sum(axis=(1, 2)) @ grid.voxel_ml(np.arange(grid.ks.size)))
    bz, by, bx = np.nonzero(blood)
    if bz.size == 0:
        return None
    vox = grid.voxel_ml(bz)
    lat_all = frame.lateral(bz, np.stack([xs[bx], ys[by]], axis=1))
    total = float(vox.sum())
    central = (abs(float(np.median(lat_all))) < 12.0
               and min(float((lat_all > 0).mean()), float((lat_all < 0).mean())) >= 0.25
               and float(np.median(frame.below_vertex[bz])) <= VENTRICLE_RANGE_MM[1] + 10.0)
    parenchymal = blood & ~ivh
    if central or float(parenchymal.sum(axis=(1, 2)) @ grid.voxel_ml(np.arange(grid.ks.size))) < 0.4:
        location, site = "intraventricular", "ventricles"
        ivh_ml = total
        side = _side(lat_all)
    else:
        lab, n = ndi.label(parenchymal)
        sizes = np.bincount(lab.ravel())
        sizes[0] = 0
        pz, py, px = np.nonzero(lab == int(np.argmax(sizes)))
        k = int(round(float(pz.mean())))
        c = np.array([[float(xs[px].mean()), float(ys[py].mean())]])
        kk = np.array([k])
        lateral = float(frame.lateral(kk, c)[0])
        fwd = float(frame.forward(kk, c)[0])
        front, back = frame.ap_span[k]
        ap_fraction = (front - fwd) / max(front + back, 1e-6)
        depth = _depth(cav[k:k + 1], grid)[0]
        iy = int(np.clip(round(float(py.mean())), 0, grid.ny - 1))
        ix = int(np.clip(round(float(px.mean())), 0, grid.nx - 1))
        location, site = site_rule(lateral_mm=lateral, behind_centre_mm=-fwd, ap_fraction=ap_fraction,
                                   below_vertex_mm=float(frame.below_vertex[k]), table_depth_mm=float(depth[iy, ix]))
        qz, qy, qx = np.nonzero(parenchymal)
        side = _side(frame.lateral(qz, np.stack([xs[qx], ys[qy]], axis=1)))
    if ivh_ml < IVH_MIN_ML:
        ivh_ml = 0.0
    oed = 0.0
    if location != "intraventricular":
        exclude = np.zeros(cav.shape, bool)
        exclude[vi] = envelope
        core = cavity.core[grid.ks, grid.y0:grid.y0 + grid.ny, grid.x0:grid.x0 + grid.nx]
        oed = oedema_ml(hu, blood, core, grid, exclude)
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
