"""Look before speaking: is the series, by its pixels, a non-contrast human head?

The models were made for one thing, a non-contrast CT of a human head; what reaches them can be
something else with a head's header (a plastic QA phantom scanned for the daily check, a
contrast-enhanced head whose series carries no contrast tag) or with no body part in its header
at all (a chest, an abdomen, a knee). The checks below read the images, on the slices and grid
the intracranial cavity was computed on (hexnode.models.brain), and name what they saw:

1. a head: the largest region that bone encloses on one slice (the skull's interior, air
   included) is at least `HEAD_MIN_CM2` and fills at least `HEAD_MIN_FILL` of the body section
   around it (a skull's interior is most of a head's section; a vertebral canal, a marrow cavity or
   a ring of ribs enclose a small part of theirs);
2. brain inside it: on the slices where the interior is at least half its widest, at least
   `BRAIN_MIN_SHARE` of the interior is at 15-50 HU, grey and white matter (a phantom holds air or
   water and a few test inserts; CSF, blood and oedema take a real brain's share down, but not
   that far);
3. no contrast: the superior sagittal sinus, found where the head's midline meets the inner table
   at the front and at the back of each slice above the widest one, is at most `SINUS_MAX_HU`
   (the 90th percentile near each end, the median over the slices, the lower of the two ends).
   Unenhanced venous blood is 40-60 HU, a thrombosed sinus or a high haematocrit up to about 90;
   after contrast the sinuses are 130 HU and more. A calcified falx plaque or a clot sits in a
   few slices or at one end; the median and the lower end ignore it. Words in the header (C+,
   KM, contrast, 150cc, CTA ...) only lower the limit to `SINUS_MAX_HU_HINTED`: a hint, never proof.
   Measured (bench/headcheck.py): 230 synthetic plain heads 49-67 HU, 10 with dense sinuses
   79-90; real plain heads 39-72 HU (GE 4 + 7 mm tilted, GE 1.25 mm, CQ500 3 mm, Picker 3 mm);
   10 synthetic contrast heads 132-155 HU.

All of it runs on the analysis grid (2x decimated at 512^2) on a few slices: a few hundredths of
a second at 32 slices.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage as ndi

from hexnode.models.brain import BONE_HU, Cavity

HEAD_MIN_CM2 = 50.0  # an adult skull encloses 130-250 cm^2 at its widest, a newborn's about 70
HEAD_MIN_FILL = 0.30  # of the body section around it: 0.5-0.9 for heads, under 0.1 for a trunk
BODY_HU = -500.0  # the body's outline (above the air and the foam of a head holder)
BRAIN_HU = (15.0, 50.0)
BRAIN_MIN_SHARE = 0.25  # heads: 230 synthetic 0.78 or more, real 0.66-0.87; phantoms (real, synthetic) 0.00-0.05
WATER_HU = (-15.0, 15.0)
AIR_HU = -200.0
SINUS_MAX_HU = 115.0
SINUS_MAX_HU_HINTED = 100.0
SINUS_PROBE_MM = 6.0  # the probe: a disc of this radius around the midline's end at the inner table
SINUS_NEAR_BONE_MM = 1.0  # pixels this close to bone are left out (bone partial volume)
SINUS_PERCENTILE = 90.0
SINUS_MIN_SLICES = 3  # fewer slices above the widest one: too few to judge (left to coverage)
SINUS_MIN_AREA = 0.4  # slices whose cavity is at least this share of the widest (not the vertex cap)
MIDLINE_MIN_ELONGATION = 1.1  # variance ratio of the cavity's long and short axes for the long one to be the midline

# Contrast words in a series' header; a negated mention ("WO CONTRAST", "ohne KM", "non-contrast",
# "sans contraste") is taken out first. Only ever a hint.
_NEGATED = re.compile(r"(?<![a-z0-9])(?:wo|w/o|without|non|no|ohne|sans|sin|un)[\s\-/]*(?:iv\s*)?"
                      r"(?:contrast\w*|kontrast\w*|km|enhanced|enhancement)", re.IGNORECASE)
# ("enhanced" alone is not one: an Enhanced CT object or its conversion says it of itself)
_CONTRAST = re.compile(r"(?<![a-z0-9])(?:c\+|\+c|km|mit km|cta|angio\w*|venogra\w*|perfusion|"
                       r"contrast\w*|kontrast\w*|mdc|\d+\s?(?:cc|ml))(?![a-z0-9])|\bpost(?![a-z\-])",
                       re.IGNORECASE)
_NO_AGENT = {"", "none", "no", "n/a", "na", "nil", "-", "0"}


@dataclass(frozen=True)
class HeadCheck:
    """What the checks measured, and the reason to refuse the series (None: a non-contrast head)."""

    problem: str | None
    enclosed_cm2: float = 0.0  # the largest region enclosed by bone on one slice
    fill: float = 0.0  # that region's share of the body section around it
    brain_share: float = 0.0  # of the skull's interior, at BRAIN_HU
    air_share: float = 0.0
    water_share: float = 0.0
    sinus_hu: float | None = None  # the superior sagittal sinus (None: not judged)
    sinus_slices: int = 0
    hint: str | None = None  # the header's contrast words

    def summary(self) -> str:
        sinus = "-" if self.sinus_hu is None else f"{self.sinus_hu:.0f} HU on {self.sinus_slices} slices"
        return (f"enclosed {self.enclosed_cm2:.0f} cm2 filling {self.fill:.0%} of its section; brain "
                f"{self.brain_share:.0%}, air {self.air_share:.0%}, water {self.water_share:.0%}; sinus {sinus}"
                + (f"; header: {self.hint}" if self.hint else ""))


def contrast_hint(texts: Sequence[str]) -> str | None:
    """The header's words that speak of contrast (a description, a protocol name, the
    Contrast/Bolus Agent as `agent:...`), or None."""
    found: list[str] = []
    for text in texts:
        if text.lower().startswith("agent:"):
            agent = text[6:].strip()
            if agent.lower() not in _NO_AGENT:
                found.append(f"contrast agent {agent!r}")
            continue
        cleaned = _NEGATED.sub(" ", text)
        found += [m.group(0).strip() for m in _CONTRAST.finditer(cleaned)]
    return ", ".join(dict.fromkeys(found)) or None


def check_head(hu: NDArray[Any], spacing: Sequence[float], cavity: Cavity, *, head_up: bool = True,
               hints: Sequence[str] = ()) -> HeadCheck:
    """The checks on an HU volume (z, y, x) with `spacing` (sx, sy, sz) and its `cavity`."""
    hint = contrast_hint(hints)
    if cavity.interior.size == 0 or not cavity.interior.any():
        # no bone encloses anything: no cavity either, which the coverage rule reports
        return HeadCheck(None, hint=hint)
    step = cavity.step
    px = float(min(spacing[0], spacing[1])) * step
    rows = cavity.rows
    y0, y1, x0, x1 = cavity.box
    interior = cavity.interior
    area = interior.sum(axis=(1, 2)) * (px * px / 100.0)  # cm^2 per computed slice
    widest = int(np.argmax(area))
    enclosed = float(area[widest])
    fill = _fill(hu[int(rows[widest]), ::step, ::step], interior[widest], cavity.box, enclosed, px)
    seen = HeadCheck(None, enclosed_cm2=enclosed, fill=fill, hint=hint)
    if enclosed < HEAD_MIN_CM2:
        return replace(seen, problem=f"no head in the images: the largest region enclosed by bone on a slice is "
                                     f"{enclosed:.0f} cm2 (a skull encloses {HEAD_MIN_CM2:.0f} cm2 or more)")
    if fill < HEAD_MIN_FILL:
        return replace(seen, problem=f"no head in the images: the largest region enclosed by bone "
                                     f"({enclosed:.0f} cm2) is {fill:.0%} of the body section around it (a "
                                     f"skull's interior is most of the head's section)")
    # 2. brain inside the skull, on the slices where the interior is at least half its widest
    upper = np.flatnonzero(area >= 0.5 * enclosed)
    sub = np.asarray(hu[rows[upper], ::step, ::step][:, y0:y1, x0:x1])
    inside = interior[upper]
    values = sub[inside]
    n = max(values.size, 1)
    brain = float(np.count_nonzero((values >= BRAIN_HU[0]) & (values <= BRAIN_HU[1]))) / n
    air = float(np.count_nonzero(values <= AIR_HU)) / n
    water = float(np.count_nonzero((values > WATER_HU[0]) & (values < WATER_HU[1]))) / n
    seen = replace(seen, brain_share=brain, air_share=air, water_share=water)
    if brain < BRAIN_MIN_SHARE:
        return replace(seen, problem=f"no brain tissue inside the skull: phantom or not a patient ({brain:.0%} "
                                     f"of the skull's interior at {BRAIN_HU[0]:.0f}-{BRAIN_HU[1]:.0f} HU; "
                                     f"{air:.0%} air, {water:.0%} water-like)")
    # 3. no contrast: the superior sagittal sinus
    sinus, slices = _sagittal_sinus(hu, cavity, px, head_up=head_up)
    seen = replace(seen, sinus_hu=sinus, sinus_slices=slices)
    limit = SINUS_MAX_HU_HINTED if hint else SINUS_MAX_HU
    if sinus is not None and sinus > limit:
        return replace(seen, problem=f"contrast-enhanced: dural sinuses at {sinus:.0f} HU (the superior sagittal "
                                     f"sinus on {slices} slices; unenhanced venous blood is 40-90 HU)"
                                     + (f"; the header says {hint}" if hint else ""))
    return seen


def _fill(dec_slice: NDArray[Any], interior: NDArray[np.bool_], box: tuple[int, int, int, int], enclosed_cm2: float,
          px: float) -> float:
    """The enclosed region's share of the body section (the outline above BODY_HU, holes filled)
    that holds it, on one slice of the analysis grid."""
    body = ndi.binary_fill_holes(np.asarray(dec_slice) > BODY_HU)
    labels, _ = ndi.label(body)
    y0, y1, x0, x1 = box
    hit = np.unique(labels[y0:y1, x0:x1][interior])
    hit = hit[hit > 0]
    if hit.size == 0:
        return 0.0
    section = float(np.count_nonzero(np.isin(labels, hit))) * px * px / 100.0
    return enclosed_cm2 / max(section, 1e-6)


def _sagittal_sinus(hu: NDArray[Any], cavity: Cavity, px: float, *, head_up: bool) -> tuple[float | None, int]:
    """(the superior sagittal sinus's HU, the slices it was read on); None when too few slices."""
    step = cavity.step
    rows = cavity.rows
    area = cavity.area_mm2[rows]
    if area.size == 0 or float(area.max()) <= 0.0:
        return None, 0
    widest = int(np.argmax(area))
    above = np.arange(widest, len(rows)) if head_up else np.arange(0, widest + 1)
    above = above[area[above] >= SINUS_MIN_AREA * float(area.max())]
    if above.size < SINUS_MIN_SLICES:
        return None, int(above.size)
    ks = rows[above]
    cav = cavity.mask[ks]
    sub = np.asarray(hu[ks, ::step, ::step])
    bone = sub >= BONE_HU
    near = ndi.binary_dilation(bone, structure=_disk_struct(SINUS_NEAR_BONE_MM / px)[None]) if bone.any() else bone
    centres, axis = _midline(cav)
    r = SINUS_PROBE_MM / px
    ends: list[list[float]] = [[], []]
    for j, centre in enumerate(centres):
        if centre is None:
            continue
        for e, sign in enumerate((1.0, -1.0)):  # the two ends, the same on every slice
            point = _exit(cav[j], centre, sign * axis)
            v = None if point is None else _probe(sub[j], cav[j] & ~near[j], point, r)
            if v is not None:
                ends[e].append(v)
    n = min(len(ends[0]), len(ends[1]))
    if n < SINUS_MIN_SLICES:
        return None, n
    # the lower end: contrast fills the whole sinus, a plaque or a clot sits at one place
    return float(min(np.median(ends[0]), np.median(ends[1]))), n


def _midline(cav: NDArray[np.bool_]) -> tuple[list[NDArray[np.float64] | None], NDArray[np.float64]]:
    """Each slice's centre (None: too little cavity) and the head's midline direction (row, col),
    the long axis of the slices' cavities pooled (a head is longer front to back than across;
    a round one falls back to the image's columns, along which a supine head lies)."""
    centres: list[NDArray[np.float64] | None] = []
    pooled = []
    for j in range(cav.shape[0]):
        ys, xs = np.nonzero(cav[j])
        if ys.size < 50:
            centres.append(None)
            continue
        c = np.array([ys.mean(), xs.mean()])
        centres.append(c)
        pooled.append(np.vstack([ys[::5] - c[0], xs[::5] - c[1]]))
    axis = np.array([1.0, 0.0])
    if pooled:
        vals, vecs = np.linalg.eigh(np.cov(np.hstack(pooled)))
        if vals[1] >= MIDLINE_MIN_ELONGATION * max(vals[0], 1e-9):
            axis = vecs[:, 1]
    return centres, axis


def _exit(cav: NDArray[np.bool_], centre: NDArray[np.float64], direction: NDArray[np.float64]) -> NDArray[np.float64] | None:
    """The last cavity pixel on the ray from `centre` along `direction` (None: the centre is not in it)."""
    t = np.arange(int(np.hypot(*cav.shape)), dtype=np.float64)
    pts = np.rint(centre[None, :] + t[:, None] * direction[None, :]).astype(np.int64)
    ok = (pts[:, 0] >= 0) & (pts[:, 0] < cav.shape[0]) & (pts[:, 1] >= 0) & (pts[:, 1] < cav.shape[1])
    if not ok.all():
        pts = pts[: int(np.argmin(ok))]
    inside = cav[pts[:, 0], pts[:, 1]]
    last = len(pts) - 1 if inside.all() else int(np.argmin(inside)) - 1
    return pts[last].astype(np.float64) if last > 0 else None


def _disk_struct(radius_px: float) -> NDArray[np.bool_]:
    r = max(1, int(round(radius_px)))
    y, x = np.mgrid[-r:r + 1, -r:r + 1]
    return np.asarray(x * x + y * y <= r * r + 0.5)


def _probe(img: NDArray[Any], allowed: NDArray[np.bool_], point: NDArray[np.float64], r: float) -> float | None:
    """SINUS_PERCENTILE of the allowed pixels within `r` pixels of `point`; None if too few."""
    ri = int(np.ceil(r))
    py, px_ = int(point[0]), int(point[1])
    ya, yb = max(py - ri, 0), min(py + ri + 1, img.shape[0])
    xa, xb = max(px_ - ri, 0), min(px_ + ri + 1, img.shape[1])
    yy, xx = np.ogrid[ya:yb, xa:xb]
    sel = ((yy - point[0]) ** 2 + (xx - point[1]) ** 2 <= r * r) & allowed[ya:yb, xa:xb]
    if np.count_nonzero(sel) < 5:
        return None
    return float(np.percentile(np.asarray(img[ya:yb, xa:xb], np.float64)[sel], SINUS_PERCENTILE))
