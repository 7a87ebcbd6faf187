"""The skull-base partial-volume rule: predicted "blood" lying flat on the cranial floor is bone.

A 5-7 mm slice that grazes the floor of the anterior or middle cranial fossa (the orbital roofs,
the greater sphenoid wings, the petrous ridges) averages brain with a sliver of bone, and the
slice profile's tails add a few per cent of 1,000-1,500 HU bone over a broad patch: 50-90 HU
over square centimetres, inside the cavity, so the intracranial gate keeps it. On a real tilted
deep ICH one such patch was 4.2 ml.

Such a patch has the floor right under it: along the slice normal, the next slice down at the
same pixel is bone or lies outside the cavity (the floor, the orbit, the sinus) for nearly every
voxel of it, because the patch exists only where the slab's lower edge meets the bone. A real
hematoma is surrounded by brain: even one that rests on the floor has brain under every slice
but its lowest, so only its bottom layer has bone beneath, and that layer has the rest of the
bleed above it. So the rule removes, first, every voxel with the floor beneath and no blood
above (a one-slice sheet on the floor: all of a patch, none of a bleed's body, and a patch that
has merged with a bleed comes off it), then any component of what is left of which at least
`FLOOR_SHARE` of the voxels still have the floor beneath.

Measured (development seed 31, bench/skullbase.py's generator: tilt 10-25 degrees, 5-7 mm slices,
`generate_case(skull_base=True)`, the committed U-Net after the gate and post-processing): the 49
components on 20 normal heads had 0.95-1.0 of their voxels on the floor; the 56 components that
touch true blood on 30 bleeding heads had at most 0.05 (shares of whole components, before the
sheet step). The threshold sits between the two. The held-out figures are bench/skullbase.py's.

What the rule cannot tell from a patch: a real bleed one slice thick lying on bone (under about
0.3 ml at 5-7 mm) goes too, and a bleed's lowest layer loses what reaches beyond the layer above
it where it rests on bone (two cerebellar bleeds on the posterior fossa floor lost 0.009 IoU).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from hexnode.models.brain import BONE_HU, Cavity, label_compact

#: a component is skull-base partial volume when at least this share of its voxels has bone or
#: no cavity in the next slice down (0 turns the rule off)
FLOOR_SHARE = 0.75


def on_floor(mask: NDArray[np.bool_], hu: NDArray[Any], cavity: Cavity, box: tuple[slice, slice, slice], *,
             head_up: bool = True) -> NDArray[np.bool_]:
    """Per voxel of `mask[box]`: is the voxel one slice down (towards the feet) bone (>= BONE_HU)
    or outside the cavity? False where there is no slice below (no evidence either way)."""
    zs, ys, xs = box
    z = hu.shape[0]
    below = np.arange(zs.start, zs.stop) + (-1 if head_up else 1)
    have = (below >= 0) & (below < z)
    out = np.zeros(mask[box].shape, bool)
    if not have.any():
        return out
    lo, hi = int(below[have].min()), int(below[have].max()) + 1
    src = (slice(lo, hi), ys, xs)
    bone = np.asarray(hu[src]) >= BONE_HU
    outside = ~cavity.full(cavity.mask, src)
    beneath = bone | outside
    idx = below[have] - lo
    out[have] = beneath[idx]
    return out


def _blood_above(sub: NDArray[np.bool_], mask: NDArray[np.bool_], box: tuple[slice, slice, slice], *,
                 head_up: bool) -> NDArray[np.bool_]:
    """Per voxel of `sub` (= mask[box]): is the voxel one slice up (towards the head) in `mask`?"""
    zs, ys, xs = box
    above = np.zeros(sub.shape, bool)
    if head_up:
        above[:-1] = sub[1:]
        if zs.stop < mask.shape[0]:
            above[-1] = mask[zs.stop, ys, xs]
    else:
        above[1:] = sub[:-1]
        if zs.start > 0:
            above[0] = mask[zs.start - 1, ys, xs]
    return above


def drop_floor_components(mask: NDArray[np.bool_], hu: NDArray[Any], cavity: Cavity, *, head_up: bool = True,
                          share: float = FLOOR_SHARE) -> int:
    """Remove, in place, the predicted blood that lies flat on the cranial floor: first every voxel
    with the floor beneath (`on_floor`) and no blood above it, then each 3D component
    (26-neighbourhood) of the rest of which at least `share` of the voxels still have the floor
    beneath. Returns the number of voxels removed.

    The first step takes a one-slice patch off a bleed it has merged with (the bleed's lowest
    layer, even where it rests on the floor, lies under the bleed's next layer up), so the second
    never weighs a bleed together with a patch."""
    if share <= 0 or not mask.any():
        return 0
    box = tuple(slice(int(i[0]), int(i[-1]) + 1)
                for i in (np.flatnonzero(mask.any(axis=axes)) for axes in ((1, 2), (0, 2), (0, 1))))
    sub = mask[box]
    before = int(np.count_nonzero(sub))
    floor = on_floor(mask, hu, cavity, box, head_up=head_up) & sub  # type: ignore[arg-type]
    sub[floor & ~_blood_above(sub, mask, box, head_up=head_up)] = False  # type: ignore[arg-type]
    floor &= sub
    if floor.any():
        labels, n = label_compact(sub)  # uint16: the box can be much of a thin series
        total = np.bincount(labels.ravel(), minlength=n + 1)
        resting = np.bincount(labels[floor], minlength=n + 1)
        drop = resting >= share * np.maximum(total, 1)
        drop[0] = False
        if drop.any():
            sub[drop[labels]] = False
    return before - int(np.count_nonzero(sub))
