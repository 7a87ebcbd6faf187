"""The NCCT signs of hematoma expansion as a radiologist reads them, measured on the hematoma mask
and the CT around it: each present or absent, with the evidence in words.

Definitions (as far as a mask and 5 mm slices allow; the model card cites each):

* blend sign (Li Q et al., Stroke 2015;46:2119-23): a relatively hypoattenuating area blending
  with an adjacent hyperattenuating region of the hematoma, with a well-defined margin, at least
  18 HU apart, the hypoattenuating area NOT encapsulated by the hyperattenuating one. Measured:
  the hypodense part of the clot is one region (at least `BLEND_SHARE` of the hypodense volume)
  that reaches the clot's margin and is at least `BLEND_HU` below the dense part. Only what the
  segmentation calls blood is looked at: a cap it leaves out cannot be told from grey matter by
  density (tried: a search 1-6 mm beyond the mask found such "caps" as often without the sign).
* island sign (Li Q et al., Stroke 2017;48:3019-25): at least 3 scattered small hematomas all
  separate from the main hematoma, or at least 4 small hematomas some or all of which connect
  with it. Measured: the first arm only (blobs connected to the main hematoma are part of the
  mask and cannot be told from lobulation): components of at most `ISLAND_MAX_ML` within
  `ISLAND_REACH_MM` of the main one, at least `ISLANDS_MIN` of them.
* swirl sign (Selariu E et al., BMC Neurol 2012;12:109): rounded, streak-like or irregular
  regions of hypo- or isoattenuation within the hyperattenuating hematoma. Measured: hypodense
  regions inside the clot that are not one blend-sign cap.
* black hole sign (Li Q et al., Stroke 2016;47:1777-81): a hypoattenuating area encapsulated
  within the hyperattenuating hematoma, any shape, a clearly defined border, at least 28 HU below
  it, not connected with the adjacent brain. Measured: a hypodense region of at least
  `MIN_REGION_ML` whose neighbours (6-connected, through slices too) are all blood, whose mean is
  at least `BLACK_HOLE_HU` below the dense part.
* hypodensities (Boulouis G et al., JAMA Neurol 2016;73:961-8): any hypodense region strictly
  encapsulated within the hemorrhage, of any shape, size and density. Measured: an enclosed
  hypodense region as for the black hole, with the hypodense threshold only.
* irregular shape (Barras CD et al., Stroke 2009;40:1325-31, categories 4-5 of the 5-point
  shape scale): quantitative here, the relative sd of the radius along 300 evenly spread rays
  after the inertia ellipsoid is made a sphere (a flattened smooth bleed is not irregular), at
  least `IRREGULAR_SD`.

The thresholds below were chosen on the training seed's cases (seed 1, fusion split) against the
generator's truth (`hexnode.synth.signtruth`) and checked on held-out cases by `bench/signs.py`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage as ndi

from hexnode.models.features import ISLAND_REACH_MM, crop_box, radial_irregularity
from hexnode.pipeline.contracts import ExpansionSign

#: the crop the signs are measured on: the mask's box plus this (islands are looked for within 12 mm)
MARGIN_MM = 15.0
#: in-plane smoothing (mm) before thresholding: noise is 3.5-7 HU sd, the density differences 14-45
SMOOTH_MM = 0.8
#: the clot's rim lost to the interior (mm, in-plane): the partial-volume border reads 20-45 HU
RIM_MM = 1.0
#: dense blood (HU) whose median is the clot's reference density
DENSE_HU = 50.0
#: a voxel this far below the reference density is hypodense (14 HU: the 18 HU of the blend sign
#: less the smoothing's blur of a region's edge)
HYPO_HU = 14.0
#: and still blood-like (oedema and CSF lie below)
HYPO_FLOOR_HU = 22.0
#: the smallest hypodense region that counts (20 mm3: a few voxels of a 5 mm slice)
MIN_REGION_ML = 0.02
#: Li 2015 / Li 2016: the density differences of the blend and black hole signs
BLEND_HU = 18.0
BLACK_HOLE_HU = 28.0
#: the blend sign's hypodense part reaches the clot's margin and holds at least this share of its volume
BLEND_MIN_FRACTION = 0.05
#: and one region: this share of the hypodense volume
BLEND_SHARE = 0.7
#: Li 2017: at least 3 separate islands, each small
ISLANDS_MIN = 3
ISLAND_MAX_ML = 1.0
#: relative radius sd (ellipsoid-normalised) from which the shape is called irregular
IRREGULAR_SD = 0.14

SIGN_NAMES = ("blend", "island", "swirl", "black_hole", "hypodensity", "irregular")
TITLES = {"blend": "blend sign", "island": "island sign", "swirl": "swirl sign", "black_hole": "black hole sign",
          "hypodensity": "hypodensities", "irregular": "irregular shape"}


def Sign(name: str, present: bool, value: float, evidence: str) -> ExpansionSign:
    """One sign: present or not, the measure it was called on, and the evidence in words."""
    return ExpansionSign(name, TITLES[name], bool(present), float(value), evidence)


@dataclass(frozen=True)
class Signs:
    """The six signs of one hematoma, in SIGN_NAMES order, and the measures behind them."""

    signs: tuple[ExpansionSign, ...]
    measures: dict[str, float]

    def __getitem__(self, name: str) -> ExpansionSign:
        for s in self.signs:
            if s.name == name:
                return s
        raise KeyError(name)

    @property
    def present(self) -> tuple[ExpansionSign, ...]:
        return tuple(s for s in self.signs if s.present)

    def features(self) -> dict[str, float]:
        """The signs as fusion inputs (0/1 and the measures), prefixed `sign_`."""
        out = {f"sign_{s.name}": float(s.present) for s in self.signs}
        out.update({f"sign_{k}": float(v) for k, v in self.measures.items()})
        return out


NO_SIGNS = Signs(tuple(Sign(n, False, 0.0, f"{TITLES[n]}: not assessable (no hematoma)") for n in SIGN_NAMES), {})


def measure_signs(hu: NDArray[Any], mask: NDArray[Any], spacing: Sequence[float]) -> Signs:
    """The six signs of the largest hematoma of `mask` (z, y, x) on the CT `hu`; `spacing` (sx, sy, sz) mm."""
    if not np.any(mask):
        return NO_SIGNS
    sx, sy, sz = (float(s) for s in spacing)
    vox_ml = sx * sy * sz / 1000.0
    box = crop_box(mask, (sx, sy, sz), MARGIN_MM)
    m = np.asarray(mask[box]) > 0
    h = np.asarray(hu[box], np.float32)
    full = np.ones((3, 3, 3), bool)
    labels, n = ndi.label(m, structure=full)
    sizes = np.bincount(labels.ravel())[1:]
    main_label = int(np.argmax(sizes)) + 1
    main = labels == main_label
    island_sign, n_islands, island_ml = _islands(labels, sizes, main_label, (sx, sy, sz), vox_ml)

    # in-plane smoothing only: the slices are thick, and a 3D kernel would mix them
    s = ndi.gaussian_filter(h, (0.0, SMOOTH_MM / sy, SMOOTH_MM / sx), truncate=2.5)
    plane = np.zeros((3, 3, 3), bool)
    plane[1] = ndi.generate_binary_structure(2, 1)
    rim_it = max(1, int(round(RIM_MM / sy)))
    core = ndi.binary_erosion(main, plane, iterations=rim_it)
    # and the through-plane rim: where the slice above or below holds no blood, a thick slice cuts
    # the clot's cap and its partial volume reads 30-45 HU however dense the blood is
    above = np.zeros_like(main)
    below = np.zeros_like(main)
    above[:-1], below[1:] = main[1:], main[:-1]
    core &= above & below
    if not core.any():
        core = main
    dense = core & (s >= DENSE_HU)
    measures: dict[str, float] = {"islands": float(n_islands), "island_ml": island_ml}
    irr = radial_irregularity(main, (sx, sy, sz))[1] if int(main.sum()) >= 8 else 0.0
    measures["irregularity"] = irr
    irregular = Sign("irregular", irr >= IRREGULAR_SD, irr,
                     f"irregular shape: radius sd {100 * irr:.0f} % of the mean (ellipsoid-normalised; "
                     f"irregular from {100 * IRREGULAR_SD:.0f} %)")
    island = Sign("island", island_sign, float(n_islands),
                  f"island sign: {n_islands} separate small hematoma{'s' if n_islands != 1 else ''} "
                  f"within {ISLAND_REACH_MM:.0f} mm of the main one ({island_ml:.2f} ml; present from {ISLANDS_MIN})")
    if dense.sum() < 10:
        # no dense clot to compare with: the density signs cannot be read
        none = [Sign(k, False, 0.0, f"{TITLES[k]}: not assessable (no dense clot)") for k in
                ("blend", "swirl", "black_hole", "hypodensity")]
        by = {x.name: x for x in [*none, island, irregular]}
        return Signs(tuple(by[k] for k in SIGN_NAMES), measures)
    ref = float(np.median(s[dense]))
    hypo = core & (s <= ref - HYPO_HU) & (s >= HYPO_FLOOR_HU)
    regions = _regions(hypo, main, s, ref, vox_ml, rim_it)
    clot_ml = float(main.sum()) * vox_ml
    hypo_ml = sum(r.ml for r in regions)
    measures.update({"reference_hu": ref, "hypo_ml": hypo_ml, "hypo_fraction": hypo_ml / clot_ml,
                     "hypo_regions": float(len(regions))})
    largest = max(regions, key=lambda r: r.ml) if regions else None
    measures["hypo_largest_diff_hu"] = largest.diff if largest else 0.0
    measures["hypo_largest_share"] = largest.ml / hypo_ml if largest and hypo_ml > 0 else 0.0

    cap = largest if largest is not None and not largest.enclosed else None
    is_blend = bool(cap is not None and cap.diff >= BLEND_HU and cap.ml >= BLEND_SHARE * hypo_ml
                    and cap.ml >= BLEND_MIN_FRACTION * clot_ml)
    cap_ml, cap_diff = (cap.ml, cap.diff) if cap is not None else (0.0, 0.0)
    blend = Sign("blend", is_blend, cap_diff,
                 f"blend sign: a {cap_ml:.1f} ml hypodense region at the clot's margin, {cap_diff:.0f} HU "
                 f"below the dense part ({100 * cap_ml / clot_ml:.0f} % of the clot's volume)" if is_blend else
                 "blend sign: no hypodense region blending at the clot's margin")
    swirl_regions = [] if is_blend else regions
    swirl = Sign("swirl", bool(swirl_regions), float(len(swirl_regions)),
                 f"swirl sign: {len(swirl_regions)} hypodense region{'s' if len(swirl_regions) != 1 else ''} within the "
                 f"clot ({sum(r.ml for r in swirl_regions):.2f} ml, up to {max(r.diff for r in swirl_regions):.0f} HU "
                 "below it)" if swirl_regions else "swirl sign: no hypodense region within the clot")
    enclosed = [r for r in regions if r.enclosed]
    best = max(enclosed, key=lambda r: r.diff) if enclosed else None
    measures["enclosed_ml"] = max((r.ml for r in enclosed), default=0.0)
    measures["enclosed_diff_hu"] = best.diff if best else 0.0
    hypodensity = Sign("hypodensity", bool(enclosed), float(len(enclosed)),
                       f"hypodensities: {len(enclosed)} region{'s' if len(enclosed) != 1 else ''} encapsulated in the "
                       f"clot (largest {max(r.ml for r in enclosed):.2f} ml)" if enclosed else
                       "hypodensities: no hypodense region encapsulated in the clot")
    holes = [r for r in enclosed if r.diff >= BLACK_HOLE_HU]
    hole = max(holes, key=lambda r: r.ml) if holes else None
    black_hole = Sign("black_hole", hole is not None, hole.diff if hole else (best.diff if best else 0.0),
                      f"black hole sign: a {hole.ml:.2f} ml focus {hole.diff:.0f} HU below the clot, encapsulated"
                      if hole else
                      (f"black hole sign: the encapsulated hypodensity is {best.diff:.0f} HU below the clot "
                       f"(< {BLACK_HOLE_HU:.0f})" if best else "black hole sign: no encapsulated hypodense focus"))
    by = {x.name: x for x in (blend, island, swirl, black_hole, hypodensity, irregular)}
    return Signs(tuple(by[k] for k in SIGN_NAMES), measures)


@dataclass(frozen=True)
class _Region:
    ml: float
    diff: float  # reference density minus the region's centre (its lower quartile, HU)
    enclosed: bool  # every 6-neighbour is blood of the main clot


def _regions(hypo: NDArray[np.bool_], main: NDArray[np.bool_], s: NDArray[np.float32], ref: float,
             vox_ml: float, rim_it: int) -> list[_Region]:
    labels, n = ndi.label(hypo, structure=np.ones((3, 3, 3), bool))
    if n == 0:
        return []
    six = ndi.generate_binary_structure(3, 1)
    plane = np.zeros((3, 3, 3), bool)
    plane[1] = ndi.generate_binary_structure(2, 1)
    pad = rim_it + 2
    mp = np.pad(main, pad, constant_values=False)  # beyond the crop is not blood
    lp = np.pad(labels, pad)
    sp = np.pad(s, pad)
    out = []
    for j, sl in enumerate(ndi.find_objects(lp), start=1):
        if sl is None:
            continue
        g = tuple(slice(max(a.start - pad, 0), a.stop + pad) for a in sl)
        comp = lp[g] == j
        ml = float(comp.sum()) * vox_ml
        if ml < MIN_REGION_ML:
            continue
        # the region was found inside the clot less its rim: grown back over the rim (in-plane) and
        # one slice (through-plane), it must still meet only blood
        ring = ndi.binary_dilation(ndi.binary_dilation(comp, plane, iterations=rim_it + 1), six) & ~comp
        # the density of its centre, as a reader's ROI takes it: the smoothing blurs the edge voxels
        # towards the clot
        out.append(_Region(ml, ref - float(np.percentile(sp[g][comp], 25)), bool(mp[g][ring].all())))
    return out


def _islands(labels: NDArray[np.int32], sizes: NDArray[np.int64], main_label: int,
             spacing: tuple[float, float, float], vox_ml: float) -> tuple[bool, int, float]:
    """(island sign, small separate hematomas within ISLAND_REACH_MM of the main one, their ml)."""
    if len(sizes) < 2:
        return False, 0, 0.0
    sx, sy, sz = spacing
    dist = ndi.distance_transform_edt(labels != main_label, sampling=(sz, sy, sx))
    count, ml = 0, 0.0
    for j, sl in enumerate(ndi.find_objects(labels), start=1):
        if sl is None or j == main_label:
            continue
        size_ml = float(sizes[j - 1]) * vox_ml
        if size_ml > ISLAND_MAX_ML:
            continue
        if float(dist[sl][labels[sl] == j].min()) <= ISLAND_REACH_MM:
            count += 1
            ml += size_ml
    return count >= ISLANDS_MIN, count, ml
