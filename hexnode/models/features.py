"""Features for the HE classifier: pyradiomics, the CNN crop, and a few peri-hematomal measures.

Radiomics runs on the CT cropped to the mask's bounding box plus a margin: the filters (LoG up to
sigma 5 mm, wavelets) only need a few millimetres of context, and filtering the whole 512x512xN
volume would cost ~10x more for identical features inside the mask.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage as ndi

log = logging.getLogger(__name__)

RADIOMICS_MARGIN_MM = 12.0

# Written to models/radiomics.yaml by `hexnode train`; the manifest pins its sha256.
RADIOMICS_YAML = """\
# pyradiomics 3.0.1 settings for hexnode (the seeds' ~1,300-1,400 feature set).
# Run by hexnode/models/features.py on the CT cropped to the mask's bounding box plus a
# 12 mm margin (enough for LoG sigma 5 mm and the wavelet kernels), which is what keeps
# extraction within seconds per case.
imageType:
  Original: {}
  LoG:
    sigma: [1.0, 2.0, 3.0, 4.0, 5.0]   # mm
  Wavelet: {}                         # coif1, 8 decompositions
featureClass:
  shape:
  firstorder:
  glcm:
  glrlm:
  glszm:
  gldm:
  ngtdm:
setting:
  # In-plane resampling to 1 mm (slice spacing kept: 0 means "as acquired"); B-spline for the
  # image, nearest neighbour for the mask.
  resampledPixelSpacing: [1.0, 1.0, 0]
  interpolator: sitkBSpline
  # Fixed bin width in HU (and in filter-response units for LoG/Wavelet).
  binWidth: 5
  label: 1
  normalize: false
  padDistance: 8
  correctMask: true
  geometryTolerance: 0.001
  minimumROIDimensions: 1
  minimumROISize: 1
  force2D: false
"""
CNN_SIZE = 64
CNN_WINDOW = (0.0, 100.0)


# `hexnode train --quick` (tests): the same settings with the original image only and three
# classes, so a barely trained U-Net's large masks cannot make the test slow.
RADIOMICS_YAML_QUICK = RADIOMICS_YAML.split("imageType:")[0] + """imageType:
  Original: {}
featureClass:
  shape:
  firstorder:
  glcm:
setting:""" + RADIOMICS_YAML.split("setting:", 1)[1]


def crop_box(mask: NDArray[Any], spacing: Sequence[float], margin_mm: float) -> tuple[slice, slice, slice]:
    # extent from the per-axis projections, not np.nonzero: three int64 coordinate arrays of a large
    # mask cost 24 bytes per voxel (GBs for a whole-head mask of a 600-slice series)
    m = np.asarray(mask)
    extent = [np.flatnonzero(m.any(axis=axes)) for axes in ((1, 2), (0, 2), (0, 1))]
    sx, sy, sz = (float(s) for s in spacing)
    mz = int(np.ceil(margin_mm / sz))
    my = int(np.ceil(margin_mm / sy))
    mx = int(np.ceil(margin_mm / sx))
    z, y, x = m.shape
    (z0, z1), (y0, y1), (x0, x1) = ((int(e[0]), int(e[-1])) for e in extent)
    return (
        slice(max(z0 - mz, 0), min(z1 + mz + 1, z)),
        slice(max(y0 - my, 0), min(y1 + my + 1, y)),
        slice(max(x0 - mx, 0), min(x1 + mx + 1, x)),
    )


class RadiomicsExtractor:
    """pyradiomics with the settings in models/radiomics.yaml; feature names in a fixed order.

    `only`: compute just these features (the booster's), with values identical to a full
    extraction. Training needs all ~1,300 to choose from; inference needs the 60 the booster uses,
    and on large bleeds the other classes and filters were most of the cost. pyradiomics enables
    feature classes for every image type at once, so the needed features are grouped by image
    type family (Original, LoG, Wavelet), one extractor each, on an image resampled once.
    """

    def __init__(self, params: Path, names: Sequence[str] | None = None, *, only: Sequence[str] | None = None) -> None:
        from radiomics import featureextractor

        logging.getLogger("radiomics").setLevel(logging.ERROR)
        self._ext = featureextractor.RadiomicsFeatureExtractor(str(params))
        self.names: list[str] | None = list(names) if names is not None else None
        self.only: frozenset[str] | None = None
        self._parts: list[Any] = []
        if only is not None:
            self.only = frozenset(only)
            for family, sigmas, classes in plan_families(self.only):
                # resampling is done once in extract(); each part works on that image
                ext = featureextractor.RadiomicsFeatureExtractor(str(params), resampledPixelSpacing=None)
                ext.disableAllImageTypes()
                ext.enableImageTypeByName(family, customArgs={"sigma": sigmas} if family == "LoG" else {})
                ext.disableAllFeatures()
                ext.enableFeaturesByName(**{c: sorted(f) for c, f in classes.items()})
                self._parts.append(ext)

    def extract(self, hu: NDArray[Any], mask: NDArray[Any], spacing: Sequence[float]) -> dict[str, float]:
        import SimpleITK as sitk

        if not np.any(mask):
            return {}
        box = crop_box(mask, spacing, RADIOMICS_MARGIN_MM)
        img = sitk.GetImageFromArray(np.ascontiguousarray(hu[box], np.float32))
        msk = sitk.GetImageFromArray(np.ascontiguousarray((mask[box] > 0).astype(np.uint8)))
        for im in (img, msk):
            im.SetSpacing(tuple(float(s) for s in spacing))
        try:
            if self.only is None:
                result = dict(self._ext.execute(img, msk, label=1))
            else:
                result = self._execute_parts(img, msk)
        except Exception as exc:  # e.g. a one-voxel mask: texture matrices are undefined
            log.warning("radiomics failed (%s); features left missing", type(exc).__name__)
            return {}
        out: dict[str, float] = {}
        for key, val in result.items():
            if key.startswith("diagnostics") or (self.only is not None and key not in self.only):
                continue
            try:
                out[key] = float(val)
            except (TypeError, ValueError):
                continue
        return out

    def _execute_parts(self, img: Any, msk: Any) -> dict[str, Any]:
        from radiomics import imageoperations

        settings = self._ext.settings
        if settings.get("resampledPixelSpacing") is not None:
            # what execute() does first (mask cast, then resampling cropped to the box + padDistance),
            # once for every part instead of once per part
            msk = imageoperations.getMask(msk, **settings)
            img, msk = imageoperations.resampleImage(img, msk, **settings)
        result: dict[str, Any] = {}
        for ext in self._parts:
            result.update(ext.execute(img, msk, label=1))
        return result

    def vector(self, feats: dict[str, float]) -> NDArray[np.float64]:
        if self.names is None:
            raise ValueError("feature names unknown: set them from the manifest")
        return np.array([feats.get(n, np.nan) for n in self.names], np.float64)


RADIOMICS_PREFIXES = ("original_", "log-", "wavelet-")


def plan_families(names: frozenset[str]) -> list[tuple[str, list[float], dict[str, set[str]]]]:
    """pyradiomics names (`original_glszm_ZoneEntropy`, `log-sigma-2-0-mm-3D_gldm_...`,
    `wavelet-LLH_glrlm_...`) -> per image type family: the LoG sigmas needed and the features
    needed per class. Names that are not radiomics features are ignored."""
    plan: dict[str, tuple[set[float], dict[str, set[str]]]] = {}
    for name in sorted(names):
        if not name.startswith(RADIOMICS_PREFIXES):
            continue
        image_type, cls, feature = name.split("_", 2)
        if image_type == "original":
            family, sigma = "Original", None
        elif image_type.startswith("log-sigma-"):
            # log-sigma-2-0-mm-3D -> 2.0
            whole, frac = image_type[len("log-sigma-"):].split("-")[:2]
            family, sigma = "LoG", float(f"{whole}.{frac}")
        elif image_type.startswith("wavelet-"):
            family, sigma = "Wavelet", None
        else:
            raise ValueError(f"radiomics feature {name!r}: unknown image type {image_type!r}")
        sigmas, classes = plan.setdefault(family, (set(), {}))
        if sigma is not None:
            sigmas.add(sigma)
        classes.setdefault(cls, set()).add(feature)
    return [(family, sorted(sigmas), classes) for family, (sigmas, classes) in plan.items()]


# 4-connected within the slice, nothing across slices: slices are thick, and a ring or a border
# grown through them would reach tissue centimetres away
_IN_PLANE = np.zeros((3, 3, 3), bool)
_IN_PLANE[1] = ndi.generate_binary_structure(2, 1)


def _is_csf(hu: NDArray[np.float32]) -> NDArray[np.bool_]:
    return (hu > -5) & (hu < 12)


def context_features(hu: NDArray[Any], mask: NDArray[Any], spacing: Sequence[float]) -> dict[str, float]:
    """Volume plus the NCCT expansion markers of the literature, measured on the mask: satellite
    islands, hypodensity (30-45 HU fraction) and whether it is one contiguous region (blend sign),
    shape irregularity, intraventricular extension, and the perihematomal ring density (oedema lies
    outside the mask, so pyradiomics on the mask cannot see it)."""
    sx, sy, sz = (float(s) for s in spacing)
    # thresholded on the bounding box only: a full-size bool copy of a 600 x 512^2 mask is 157 MB
    vox_ml = sx * sy * sz / 1000.0
    vol = float(np.count_nonzero(mask)) * vox_ml
    if vol == 0.0:
        return {"volume_ml": 0.0}
    box = crop_box(mask, spacing, 8.0)
    mc = np.asarray(mask[box]) > 0
    hc = np.asarray(hu[box], np.float32)
    full = np.ones((3, 3, 3), bool)
    labels, n = ndi.label(mc, structure=full)
    sizes = np.bincount(labels.ravel())[1:] * vox_ml
    main_label = int(np.argmax(sizes)) + 1
    main = labels == main_label
    # in-plane ring of ~1-4 mm around the mask, per slice (slices are thick), soft tissue only
    r_in = max(1, int(round(1.0 / sy)))
    r_out = max(r_in + 1, int(round(4.0 / sy)))
    st = _IN_PLANE
    d_in = ndi.binary_dilation(mc, st, iterations=r_in)
    d_out = ndi.binary_dilation(mc, st, iterations=r_out)
    ring = d_out & ~d_in & (hc > -5) & (hc < 60)
    inside = hc[mc]
    ring_vals = hc[ring] if ring.any() else np.array([np.nan])
    # the interior only: the mask's partial-volume border is at 20-45 HU whatever the blood is
    core = ndi.binary_erosion(mc, st)
    if not core.any():
        core = mc
    hypo = core & (hc >= 28) & (hc <= 46)
    hypo_frac = float(hypo.sum() / core.sum())
    if hypo.any():
        hl, hn = ndi.label(hypo, structure=full)
        largest_hypo = float(np.bincount(hl.ravel())[1:].max() / hypo.sum())
    else:
        hn, largest_hypo = 0, 0.0
    # radial spread of the main component's surface, in mm, relative to its mean radius
    surf = main & ~ndi.binary_erosion(main, st)
    pz, py, px = np.nonzero(surf)
    cz, cy, cx = (float(v.mean()) for v in np.nonzero(main))
    r = np.sqrt(((pz - cz) * sz) ** 2 + ((py - cy) * sy) ** 2 + ((px - cx) * sx) ** 2)
    irr_sphere, irr_ellipsoid, axis_ratio = radial_irregularity(main, (sx, sy, sz))
    csf_ml, csf_best = csf_bordered_blood(labels, n, hc, (sx, sy, sz))
    return {
        "volume_ml": vol,
        "log_volume": float(np.log(max(vol, 1e-3))),
        "n_components": float(n),
        "islands_near": float(near_islands(labels, main_label, (sx, sy, sz), ISLAND_REACH_MM)),
        "satellite_ml": float(sizes.sum() - sizes.max()) if n > 1 else 0.0,
        "ring_mean_hu": float(np.nanmean(ring_vals)),
        "ring_p10_hu": float(np.nanpercentile(ring_vals, 10)),
        # blood bordering CSF (0-12 HU): intraventricular extension
        "csf_contact": float((_is_csf(hc) & d_out & ~d_in).sum() / max(int((d_out & ~d_in).sum()), 1)),
        "csf_bordered_ml": csf_ml,
        "csf_bordered_max": csf_best,
        "hypodense_fraction": hypo_frac,
        "hypodense_regions": float(hn),
        "hypodense_largest_share": largest_hypo,
        "inside_mean_hu": float(inside.mean()),
        "inside_std_hu": float(inside.std()),
        "radius_rel_sd": float(r.std() / max(r.mean(), 1e-6)) if r.size else 0.0,
        "irregularity_radial": irr_sphere,
        "irregularity_ellipsoid": irr_ellipsoid,
        "axis_ratio": axis_ratio,
    }


#: satellites sit 3-8 mm off the main hematoma in the literature's island sign; further away a
#: blob is more often something else (a second bleed, a false positive)
ISLAND_REACH_MM = 12.0
_RAY_DIRECTIONS = 300
_RAY_STEP_MM = 0.5


def _sphere_directions(n: int) -> NDArray[np.float64]:
    """n unit vectors spread evenly over the sphere (Fibonacci lattice), as (x, y, z) rows."""
    i = np.arange(n) + 0.5
    phi = np.arccos(1 - 2 * i / n)
    theta = np.pi * (1 + 5**0.5) * i
    return np.stack([np.cos(theta) * np.sin(phi), np.sin(theta) * np.sin(phi), np.cos(phi)], axis=1)


def radial_irregularity(main: NDArray[np.bool_], spacing: tuple[float, float, float]) -> tuple[float, float, float]:
    """(relative sd of the radius over evenly spread directions, the same after the mask's
    inertia ellipsoid is made a sphere, longest / shortest ellipsoid axis).

    The radius is sampled along rays from the centroid, so every direction counts once; surface
    voxels (`radius_rel_sd`) over-weight the in-plane contour of thick slices. The ellipsoid
    variant separates a flattened but smooth bleed (lobar, against the skull) from an irregular one.
    """
    sx, sy, sz = spacing
    pz, py, px = np.nonzero(main)
    pts = np.stack([px * sx, py * sy, pz * sz], axis=1).astype(np.float64)
    c = pts.mean(axis=0)
    if len(pts) < 4:
        return 0.0, 0.0, 1.0
    cov = np.cov((pts - c).T) + np.diag([sx * sx, sy * sy, sz * sz]) / 12.0  # voxel extent
    w, v = np.linalg.eigh(cov)
    axes = np.sqrt(np.maximum(w, 1e-9))
    dirs = _sphere_directions(_RAY_DIRECTIONS)
    mainf = main.astype(np.float32)
    reach = float(np.linalg.norm(np.array(main.shape) * np.array([sz, sy, sx]))) + _RAY_STEP_MM
    steps = np.arange(_RAY_STEP_MM / 2, reach, _RAY_STEP_MM)
    out = []
    for shape in (np.ones(3), axes / np.prod(axes) ** (1.0 / 3.0)):
        d = (dirs * shape) @ v.T  # the unit sphere of the (normalised) ellipsoid frame, in mm
        stretch = np.linalg.norm(d, axis=1)
        d = d / stretch[:, None]
        p = c[None, None, :] + d[:, None, :] * steps[None, :, None]
        coords = np.stack([p[..., 2] / sz, p[..., 1] / sy, p[..., 0] / sx]).reshape(3, -1)
        inside = ndi.map_coordinates(mainf, coords, order=1, cval=0.0).reshape(len(d), -1) >= 0.5
        radius = inside.sum(axis=1) * _RAY_STEP_MM / stretch
        out.append(float(radius.std() / max(float(radius.mean()), 1e-6)))
    return out[0], out[1], float(axes.max() / max(float(axes.min()), 1e-6))


def near_islands(labels: NDArray[np.int32], main_label: int, spacing: tuple[float, float, float], reach_mm: float) -> int:
    """Components other than the main one that come within `reach_mm` of it (island sign)."""
    sx, sy, sz = spacing
    main = labels == main_label
    sl = ndi.find_objects(main.astype(np.int8))[0]
    grow = (int(np.ceil(reach_mm / sz)), int(np.ceil(reach_mm / sy)), int(np.ceil(reach_mm / sx)))
    box = tuple(slice(max(s.start - g, 0), min(s.stop + g, n)) for s, g, n in zip(sl, grow, labels.shape, strict=True))
    dist = ndi.distance_transform_edt(~main[box], sampling=(sz, sy, sx))
    near = np.unique(labels[box][(dist <= reach_mm) & (labels[box] > 0)])
    return int(np.count_nonzero(near != main_label))


def csf_bordered_blood(labels: NDArray[np.int32], n: int, hu: NDArray[np.float32], spacing: tuple[float, float, float]) -> tuple[float, float]:
    """(ml of blood in components whose 1.5 mm in-plane border is > 15 % CSF, largest such share):
    blood in a ventricle borders CSF (0-12 HU), a parenchymal bleed borders brain and oedema."""
    sx, sy, sz = spacing
    it = max(1, int(round(1.5 / sy)))
    ml, best = 0.0, 0.0
    for j, sl in enumerate(ndi.find_objects(labels), start=1):
        if sl is None:
            continue
        box = tuple(slice(s.start, s.stop) for s in sl[:1]) + tuple(
            slice(max(s.start - it, 0), s.stop + it) for s in sl[1:])
        comp = labels[box] == j
        border = ndi.binary_dilation(comp, _IN_PLANE, iterations=it) & (labels[box] == 0)
        share = float((_is_csf(hu[box]) & border).sum() / max(int(border.sum()), 1))
        best = max(best, share)
        if share > 0.15:
            ml += float(comp.sum()) * sx * sy * sz / 1000.0
    return ml, best


def cnn_input(hu: NDArray[Any], mask: NDArray[np.generic], spacing: Sequence[float]) -> NDArray[np.float32]:
    """(1, 4, 64, 64): the slice of largest hematoma area and its two neighbours (0-100 HU window)
    plus that slice's mask, cropped to a square of 1.6x the hematoma extent + 10 mm so the
    network sees the perihematomal tissue."""
    m = np.asarray(mask)  # no full-size `> 0` copy: only slice k is thresholded
    z = m.shape[0]
    areas = np.array([np.count_nonzero(s) for s in m], np.int64)  # per slice: no mask-sized bool copy
    k = int(np.argmax(areas))
    ks = [min(max(k + d, 0), z - 1) for d in (-1, 0, 1)]
    sx, sy = float(spacing[0]), float(spacing[1])
    mk = m[k] > 0
    yy, xx = np.nonzero(mk)
    cy, cx = (yy.min() + yy.max()) / 2.0, (xx.min() + xx.max()) / 2.0
    extent_mm = max((yy.max() - yy.min() + 1) * sy, (xx.max() - xx.min() + 1) * sx)
    side_mm = 1.6 * extent_mm + 10.0
    # sample a CNN_SIZE grid over the square (bilinear), outside the image = air
    gy = cy + (np.arange(CNN_SIZE) - (CNN_SIZE - 1) / 2.0) * (side_mm / CNN_SIZE) / sy
    gx = cx + (np.arange(CNN_SIZE) - (CNN_SIZE - 1) / 2.0) * (side_mm / CNN_SIZE) / sx
    coords = np.stack(np.meshgrid(gy, gx, indexing="ij"))
    lo, hi = CNN_WINDOW
    chans = []
    for kk in ks:
        sl = ndi.map_coordinates(np.asarray(hu[kk], np.float32), coords, order=1, cval=-1000.0)
        chans.append(np.clip((sl - lo) / (hi - lo), 0.0, 1.0))
    chans.append(ndi.map_coordinates(mk.astype(np.float32), coords, order=1, cval=0.0))
    return np.stack(chans)[None].astype(np.float32)
