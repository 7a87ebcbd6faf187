"""Rendering a drawn case into its stack: the head slice by slice, the hematoma (oedema, blobs,
intraventricular blood) into image and mask, the artefacts and the correlated noise; and what is
measured on the result (mask volume, calcifications in the stack)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy import ndimage

from hexnode.synth import artefacts
from hexnode.synth.anatomy import F32, Grid, Head, lerp_into, ramp, up2
from hexnode.synth.case import LABELS
from hexnode.synth.geometry import Geometry
from hexnode.synth.hematoma import Hematoma
from hexnode.synth.scanner import ScannerProfile

HU_MIN, HU_MAX = -1024, 3071

def _noise_kernel_sd(sigma: float) -> float:
    k = np.zeros((21, 21))
    k[10, 10] = 1.0
    return float(np.sqrt((ndimage.gaussian_filter(k, sigma, truncate=3.0) ** 2).sum()))


def render_stack(geo: Geometry, head: Head, hem: Hematoma, *, noise_sd: float, r_noise: np.random.Generator | None,
                 pf_rng: np.random.Generator, motion_slices: dict[int, tuple[float, float, float]],
                 streak_slices: dict[int, Any], normal: bool, with_labels: bool, only_bleed: bool = False,
                 profile: ScannerProfile | None = None,
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, dict[str, Any]]:
    """Render the stack: (hu, mask, labels, marker stats).  `r_noise` None: no noise.
    `only_bleed`: only the slices the bleed can touch are painted (the mask volume of a candidate
    follow-up hematoma, a fraction of the cost of the whole stack). `profile`: another scanner's
    look (kernel, noise grain, skull-base hardening, calibration); None: the default look."""
    nz, n, px = geo.n_slices, geo.n, geo.pixel_mm
    hu = np.empty((nz, n, n), dtype=np.int16)
    mask = np.zeros((nz, n, n), dtype=np.uint8)
    labels = np.zeros((nz, n, n), dtype=np.uint8) if with_labels else None
    noise_sigma = 1.3 if profile is None else profile.noise_grain_px  # a soft-tissue kernel's noise power spectrum
    noise_gain = F32(noise_sd / _noise_kernel_sd(noise_sigma))
    w_lo, w_hi = hem.w_range(head)
    if normal:  # nothing to paint anywhere
        w_lo, w_hi = math.inf, -math.inf
    # "hypo_map": the hypodense voxels of the main blob as drawn (the sign truth is derived from it)
    stats = {"hypo": 0, "ivh": 0, "islands": set(), "ivh_ml": 0.0, "oedema_ml": 0.0,
             "hypo_map": np.zeros((nz, n, n), dtype=bool)}  # type: dict[str, Any]
    extents = geo.extents_mm()

    chunk = 8
    for k0 in range(0, nz, chunk):
        ks = list(range(k0, min(nz, k0 + chunk)))
        if only_bleed:
            ks = [k for k in ks if w_lo - geo.thickness(k) <= geo.slice_w(k) <= w_hi + geo.thickness(k)]
            if not ks:
                continue
        half = np.empty((len(ks), n // 2, n // 2), dtype=F32)
        art_half = np.zeros_like(half)
        layers = []
        for j, k in enumerate(ks):
            w = geo.slice_w(k)
            thk = geo.thickness(k)
            grid = Grid.full(geo.uv_affine(k, 2), n // 2, 2 * px)
            lay = head.render_slice(grid.m, n // 2, 2 * px, w, thk)
            half[j] = lay.img
            layers.append(lay)
            if labels is not None:
                lab = _classify(lay, head)
                labels[k] = np.repeat(np.repeat(lab, 2, axis=0), 2, axis=1)
            pf = head.posterior_fossa_streaks(grid, w, pf_rng)
            if pf is not None:
                art_half[j] += pf * lay.ic
            if profile is not None:
                bh = artefacts.skull_base_hardening(grid, w, head, profile.hardening_hu)
                if bh is not None:
                    art_half[j] += bh * lay.ic
        img = up2(half)
        for j, k in enumerate(ks):
            w = geo.slice_w(k)
            thk = geo.thickness(k)
            if w_lo - thk <= w <= w_hi + thk:
                lay = layers[j]
                ic = up2(lay.ic[None])[0]
                vent = up2(lay.vent[None])[0]
                brain = up2(lay.brain[None])[0]
                fgrid = Grid.full(geo.uv_affine(k, 1), n, px)
                oedema_px, ivh_px = _paint_hematoma(img[j], mask[k], fgrid, hem, head, w, thk, ic, vent, brain,
                                                    stats, None if labels is None else labels[k],
                                                    stats["hypo_map"][k])
                stats["oedema_ml"] += oedema_px * px * px * extents[k] / 1000.0
                stats["ivh_ml"] += ivh_px * px * px * extents[k] / 1000.0
            if k in streak_slices:
                img[j] += streak_slices[k](Grid.full(geo.uv_affine(k, 1), n, px))
            if k in motion_slices:
                dy, dx, alpha = motion_slices[k]
                ghost = ndimage.shift(img[j], (dy, dx), order=1, mode="nearest")
                img[j] += F32(alpha) * (ghost - img[j])
        for jj in np.flatnonzero(art_half.any(axis=(1, 2))):
            img[jj] += up2(art_half[jj])
        if profile is not None:
            _reconstruct(img, profile)
        if r_noise is None:
            hu[ks] = np.rint(np.clip(img, HU_MIN, HU_MAX))
            continue
        noise = r_noise.standard_normal(img.shape, dtype=F32)
        noise = ndimage.gaussian_filter(noise, (0, noise_sigma, noise_sigma), output=noise, truncate=3.0)
        # fewer photons through the skull base: noisier low slices
        gain = np.array([1.0 + 0.3 * min(1.0, max(0.0, (-15.0 - geo.slice_w(k)) / 30.0)) for k in ks], dtype=F32)
        noise *= (noise_gain * gain)[:, None, None]
        img += noise
        np.clip(img, HU_MIN, HU_MAX, out=img)
        np.rint(img, out=img)
        hu[ks] = img  # exact: integral values in the int16 range

    return hu, mask, labels, stats


def _reconstruct(img: np.ndarray, profile: ScannerProfile) -> None:
    """The profile's kernel in place: unsharp masking in the slice plane (an edge-enhancing kernel's
    overshoot beside the skull and the bleed), then its calibration offset."""
    for j in range(img.shape[0]):
        smooth = ndimage.gaussian_filter(img[j], profile.sharpen_px, truncate=3.0)
        img[j] += F32(profile.sharpen) * (img[j] - smooth)
    img += F32(profile.hu_offset)


def mask_ml(geo: Geometry, mask: np.ndarray) -> float:
    sx, sy, _ = geo.spacing
    per_slice = mask.reshape(geo.n_slices, -1).sum(axis=1, dtype=np.int64)
    return float(np.dot(per_slice, geo.extents_mm())) * sx * sy / 1000.0


def calcification_truth(head: Head, geo: Geometry) -> list[dict[str, Any]]:
    calcs = []
    for c in head.calcs:
        kz = geo.slice_of(c.centre[2])
        if not (-0.5 <= kz <= geo.n_slices - 0.5):
            continue
        xx, yy = geo.pixel_of(kz, c.centre[0], c.centre[1])
        calcs.append({"kind": c.kind, "voxel": [kz, yy, xx], "semi_mm": list(c.semi), "hu": round(c.hu, 1)})
    return calcs


def _classify(lay: Any, head: Head) -> np.ndarray:
    """LABELS of one noise-free half-resolution slice; only voxels whose 4 neighbours agree are pure."""
    img, ic = lay.img, lay.ic
    lab = np.full(img.shape, LABELS["other"], dtype=np.uint8)
    inside = ic > 0.99
    outside = ic < 0.01
    lab[img < -300] = LABELS["outside"]
    lab[img > 300] = LABELS["bone"]
    lab[outside & (img > -150) & (img < 150)] = LABELS["soft_tissue"]
    lab[inside & (np.abs(img - head.csf_hu) < 1.0)] = LABELS["csf"]
    lab[inside & (np.abs(img - head.gm_hu) < 1.5)] = LABELS["grey"]
    lab[inside & (np.abs(img - head.wm_hu) < 1.5)] = LABELS["white"]
    lab[(ic > 0.5) & (img > 70) & (img < 300)] = LABELS["dense_focus"]
    p = np.pad(lab, 1, mode="edge")
    same = (p[:-2, 1:-1] == lab) & (p[2:, 1:-1] == lab) & (p[1:-1, :-2] == lab) & (p[1:-1, 2:] == lab)
    lab[~same] = LABELS["other"]
    return lab


def _paint_hematoma(img: np.ndarray, mask: np.ndarray, grid: Grid, hem: Hematoma, head: Head, w: float,
                    thk: float, ic: np.ndarray, vent: np.ndarray, brain: np.ndarray,
                    stats: dict[str, Any], labels: np.ndarray | None, hypo_map: np.ndarray) -> tuple[int, int]:
    """Paint one slice of the bleed; returns its truth counts (pixels): oedema (at least half-way
    to the oedema value, in parenchyma, outside the blood) and blood inside the ventricles."""
    px = grid.px
    # blood fills only the part of a voxel that calcium leaves free, so that a calcification inside
    # a bleed (the choroid plexus in an intraventricular cast) stays visible where the mask leaves it out
    calcium = _calcium(grid, head, w, thk)
    blobs = ([("main", hem.main)] if hem.parenchymal else []) + [
        (f"s{i}", s) for i, s in enumerate(hem.satellites)]
    # oedema first (outside the blood, brain parenchyma only)
    b = hem.main
    sec = b.section_radius(w, hem.oedema_mm + 2.0)
    oedema: tuple[tuple[slice, slice], np.ndarray] | None = None
    if hem.parenchymal and sec > 0:
        win = grid.window(b.centre[0], b.centre[1], sec)
        if win is not None:
            sub = grid.sub(win)
            u, v = sub.coords()
            depth, _ = b.signed_depth(u, v, w, reach=hem.oedema_mm)
            wt = np.clip(1.0 + depth / F32(hem.oedema_mm), 0.0, 1.0) * (depth < 0) * brain[win]
            lerp_into(img[win], F32(hem.oedema_hu), (wt ** F32(0.8)).astype(F32))
            oedema = (win, wt ** F32(0.8) >= 0.5)
    for name, blob in blobs:
        sec = blob.section_radius(w, thk / 2 + 1.0)
        if sec <= 0:
            continue
        win = grid.window(blob.centre[0], blob.centre[1], sec)
        if win is None:
            continue
        sub = grid.sub(win)
        u, v = sub.coords()
        depth, slope = blob.signed_depth(u, v, w)
        width = np.sqrt(F32(0.7 * px) ** 2 + (F32(thk) * slope) ** 2)
        frac = ramp(depth, width)
        # blood stays inside the skull, on its own side of the falx, and out of the ventricles
        allowed = (ic[win] >= 0.5) & (u * F32(np.sign(blob.centre[0]) or 1.0) > F32(-0.3))
        # voxels dominated by bone partial volume or calcium stay bright rim, never blood
        allowed &= img[win] < F32(120.0)
        if not hem.ivh:
            allowed &= vent[win] < 0.5
        inside = (depth > 0) & allowed
        frac = frac * ic[win] * allowed * (1.0 - calcium[win])
        val = np.full(u.shape, F32(hem.hem_hu), dtype=F32)
        hypo = np.zeros(u.shape, dtype=bool)
        if name == "main":
            hw = hem.hypo_weight(u, v, w)
            val += hw * F32(hem.hypo_hu - hem.hem_hu)
            hypo = inside & (hw > 0.5)
            stats["hypo"] += int(np.count_nonzero(hypo & (mask[win] == 0)))
            hypo_map[win] |= hypo
        lerp_into(img[win], val, frac)
        if labels is not None:
            lw = labels[win]
            lw[inside & (mask[win] == 0)] = LABELS["blood"]
            lw[hypo & (mask[win] == 0)] = LABELS["hypodense_blood"]
        if name != "main" and np.any(inside):
            stats["islands"].add(name)
        mask[win] |= inside.astype(np.uint8)
    if hem.ivh:
        _paint_ivh(img, mask, grid, hem, head, w, thk, calcium, stats, labels)
    # calcifications are never blood
    calcified = calcium > 0.2
    mask[calcified] = 0
    if labels is not None:
        labels[calcified] = LABELS["other"]
    oedema_px = 0 if oedema is None else int(np.count_nonzero(oedema[1] & (mask[oedema[0]] == 0)))
    return oedema_px, int(np.count_nonzero((mask > 0) & (vent >= 0.5)))


def _calcium(grid: Grid, head: Head, w: float, thk: float) -> np.ndarray:
    """Partial-volume fraction of calcification in each pixel of one slice (0 where there is none)."""
    out = np.zeros(grid.shape, dtype=F32)
    for c in head.calcs:
        e = c.ellipsoid
        if not e.touches(w, thk):
            continue
        win = grid.window(e.c[0], e.c[1], e.bound)
        if win is None:
            continue
        u, v = grid.sub(win).coords()
        out[win] = np.maximum(out[win], e.frac(u, v, w, thk, grid.px))
    return out


def _paint_ivh(img: np.ndarray, mask: np.ndarray, grid: Grid, hem: Hematoma, head: Head, w: float, thk: float,
               calcium: np.ndarray, stats: dict[str, Any], labels: np.ndarray | None) -> None:
    px = grid.px
    if hem.parenchymal:  # extension into the ipsilateral lateral ventricle
        side_vents = [e for e in head.ventricles if (e.c[0] - head.midline_shift_mm) * hem.ivh_side > 1.0][:3]
    else:  # primary intraventricular bleed: both lateral ventricles and the third
        side_vents = [e for e in head.ventricles if abs(e.c[2]) < 16.0 and e.semi[0] > 1.0]
    for e in side_vents:
        if not e.touches(w, thk):
            continue
        win = grid.window(e.c[0], e.c[1], e.bound)
        if win is None:
            continue
        u, v = grid.sub(win).coords()
        fr = e.frac(u, v, w, thk, px) * ramp(v - F32(hem.ivh_level_v), 1.0) * (1.0 - calcium[win])
        lerp_into(img[win], F32(hem.ivh_hu), fr)
        inside = fr >= 0.5
        new = inside & (mask[win] == 0)
        stats["ivh"] += int(np.count_nonzero(new))
        if labels is not None:
            labels[win][new] = LABELS["blood"]
        mask[win] |= inside.astype(np.uint8)
