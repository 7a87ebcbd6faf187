"""The NCCT expansion signs as the generator drew them: the truth `bench/signs.py` scores
`hexnode.models.signs` against.

The HE model (`hemodel`) knows blend, islands, hypodense fraction and irregularity as numbers; the
published signs are yes/no readings of the image. Each is defined here from what the generator
itself drew (the blob's parameters, the rendered mask and the hypodense voxels of the main blob),
never from the image the detector reads:

* blend (Li 2015): the hypodense part was drawn as one plane-cut cap (`hypo_mode` "blend") and
  rendered;
* island (Li 2017): at least 3 satellites rendered, all separate from the main hematoma (the
  generator draws them 3-8 mm off its surface, so the "4 or more, some connected" arm cannot occur);
* swirl (Selariu 2012): hypodense foci drawn inside the clot by the band-limited field
  (`hypo_mode` "swirl") and rendered;
* hypodensities (Boulouis 2016): a hypodense region strictly inside the blood: a 3D component of
  the drawn hypodense voxels of at least `MIN_REGION_ML` whose 6-neighbours are all blood;
* black hole (Li 2016): such an enclosed region drawn at least 28 HU below the clot
  (`hem_hu - hypo_hu >= 28`);
* irregular shape (Barras 2009 categories 4-5, as a number): the drawn relative sd of the radius
  (`Markers.irregularity`, 0-0.4) at least `IRREGULAR_AMPLITUDE`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import ndimage as ndi

#: the smallest enclosed hypodense region that counts: 20 mm3, a few voxels of a 5 mm slice
MIN_REGION_ML = 0.02
#: Li 2016: the black hole is at least 28 HU below the surrounding hematoma
BLACK_HOLE_HU = 28.0
#: relative radius sd from which a drawn bleed counts as irregular (the prior's upper third)
IRREGULAR_AMPLITUDE = 0.20
#: Li 2017: at least 3 separate islands
ISLANDS_MIN = 3

SIGNS = ("blend", "island", "swirl", "hypodensity", "black_hole", "irregular")


def sign_truth(*, hypo_mode: str, hem_hu: float, hypo_hu: float, irregularity: float, islands: int,
               mask: np.ndarray, hypo_map: np.ndarray, spacing: tuple[float, float, float]) -> dict[str, float]:
    """Each sign of `SIGNS` as 1.0 / 0.0, plus `enclosed_hypo_ml` (the largest enclosed region)."""
    hypo = hypo_map & (mask > 0)
    drawn = bool(hypo.any())
    enclosed_ml = _largest_enclosed_ml(hypo, mask > 0, spacing) if drawn else 0.0
    enclosed = enclosed_ml >= MIN_REGION_ML
    out: dict[str, Any] = {
        "blend": hypo_mode == "blend" and drawn,
        "island": islands >= ISLANDS_MIN,
        "swirl": hypo_mode == "swirl" and drawn,
        "hypodensity": enclosed,
        "black_hole": enclosed and hem_hu - hypo_hu >= BLACK_HOLE_HU,
        "irregular": irregularity >= IRREGULAR_AMPLITUDE,
    }
    truth = {k: float(bool(v)) for k, v in out.items()}
    truth["enclosed_hypo_ml"] = float(enclosed_ml)
    return truth


def _largest_enclosed_ml(hypo: np.ndarray, blood: np.ndarray, spacing: tuple[float, float, float]) -> float:
    """ml of the largest 26-connected hypodense component whose 6-neighbours are all blood."""
    zs, ys, xs = (np.flatnonzero(hypo.any(axis=a)) for a in ((1, 2), (0, 2), (0, 1)))
    box = tuple(slice(max(int(e[0]) - 1, 0), int(e[-1]) + 2) for e in (zs, ys, xs))
    h, b = hypo[box], blood[box]
    labels, n = ndi.label(h, structure=np.ones((3, 3, 3), bool))
    if n == 0:
        return 0.0
    six = ndi.generate_binary_structure(3, 1)
    # a component touching the box edge touches what lies beyond it: pad with "not blood"
    bp = np.pad(b, 1, constant_values=False)
    lp = np.pad(labels, 1)
    best = 0
    for j, sl in enumerate(ndi.find_objects(lp), start=1):
        if sl is None:
            continue
        grown = tuple(slice(max(s.start - 1, 0), s.stop + 1) for s in sl)
        comp = lp[grown] == j
        ring = ndi.binary_dilation(comp, six) & ~comp
        if bp[grown][ring].all():
            best = max(best, int(comp.sum()))
    sx, sy, sz = spacing
    return best * sx * sy * sz / 1000.0
