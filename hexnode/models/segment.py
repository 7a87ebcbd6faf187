"""Hematoma segmentation: HU windows → 2D U-Net (ONNX) per slice → 3D post-processing.

The windowing here is also what training feeds the network (hexnode.train imports it), so the
two can never drift apart.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage as ndi

from hexnode.models.brain import Cavity, gate_mask
from hexnode.models.floor import FLOOR_SHARE, drop_floor_components

# (low, high) HU per input channel. Channel 0 is the seed's 0-100 HU brain window. Channel 1
# keeps calcifications (100-400 HU) apart from blood (50-90 HU), which channel 0 saturates
# together; channel 2 shows bone and air, so the skull rim and the skull base have context.
WINDOWS: tuple[tuple[float, float], ...] = ((0.0, 100.0), (-50.0, 350.0), (-1000.0, 2000.0))
NOMINAL_SIZE = 512
STRIDE = 8  # the network downsamples three times


def window(hu: NDArray[np.floating[Any]], windows: Sequence[tuple[float, float]] = WINDOWS) -> NDArray[np.float32]:
    """(n, H, W) HU → (n, C, H, W) float32 in [0, 1]."""
    x = np.asarray(hu, np.float32)
    out = np.empty((x.shape[0], len(windows), *x.shape[1:]), np.float32)
    # filled channel by channel in place: the same float32 arithmetic as clip((x - lo) / (hi - lo))
    # without a temporary per operation
    for c, (lo, hi) in enumerate(windows):
        ch = out[:, c]
        np.subtract(x, np.float32(lo), out=ch)
        np.divide(ch, np.float32(hi - lo), out=ch)
        np.clip(ch, 0.0, 1.0, out=ch)
    return out


def _pad_amounts(h: int, w: int) -> tuple[tuple[int, int], tuple[int, int]]:
    # Pad to at least 512 (the seed fits slices to 512x512) and to a multiple of the stride;
    # never crop, so no part of the head is lost on larger matrices.
    th = max(NOMINAL_SIZE, -(-h // STRIDE) * STRIDE)
    tw = max(NOMINAL_SIZE, -(-w // STRIDE) * STRIDE)
    ph, pw = th - h, tw - w
    return (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2)


@dataclass(frozen=True)
class PostProcessing:
    threshold: float = 0.5
    min_component_ml: float = 0.02  # islands smaller than this are noise, not an island sign
    fill_holes: bool = True  # per slice: hypodense swirl inside a hematoma is part of it
    # Components farther than `remote_reach_mm` from the largest one must be at least
    # `remote_min_ml`: satellites (the island sign) lie next to the hematoma, while small blobs far
    # from it were mostly one-slice false positives (skull base, beam hardening): on 100 cases
    # (seed 9, models synth-20261201) the rule removed 101 of 137 blobs touching no blood and none
    # of the 100 satellites found. 0 turns the rule off (older model sets, whose manifests do not
    # name it).
    remote_min_ml: float = 0.2
    remote_reach_mm: float = 20.0
    # The smallest hemorrhage reported: when even the largest component is smaller, the mask is
    # emptied ("no hemorrhage detected", a statement the SR qualifies with this limit). What the
    # U-Net leaves on normal heads after the gate is one or two islands of 0.02-0.1 ml on the
    # partial-volume rims of calcifications; the smallest bleed the generator draws is 0.3 ml
    # (bench/gate.py --sweep). Satellites of a real hematoma are not affected. 0: off (older sets).
    min_lesion_ml: float = 0.0
    # Components lying flat on the cranial floor (at least this share of their voxels with bone or
    # no cavity in the next slice down) are the partial volume of a thick slice grazing the skull
    # base, not blood (hexnode.models.floor). A rule about the image, not the model: on for every
    # model set; 0 turns it off (bench/skullbase.py measures both).
    floor_share: float = FLOOR_SHARE


# What a newly trained model set writes as its min_lesion_ml (the field's default, 0, is what a
# manifest from before the limit means).
MIN_LESION_ML = 0.1


# Slices per ONNX run. The net's activations scale with it (ONNX Runtime sizes its buffers for the
# whole batch); 2 slices of 512^2 keep them small, and the throughput on CPU is the same as with 8.
BATCH = 2


def _probability_batches(
    session: Any, hu: NDArray[np.floating[Any]], batch: int, slices: NDArray[np.intp] | None = None
) -> Iterator[tuple[NDArray[np.intp], NDArray[np.float32]]]:
    """(slice indices, probabilities of those slices) for each batch of `slices` (default: all), in
    z order. The net is 2D: a slice's probabilities do not depend on the others in its batch."""
    z, h, w = hu.shape
    (pt, pb), (pl, pr) = _pad_amounts(h, w)
    in_name = session.get_inputs()[0].name
    todo = np.arange(z) if slices is None else np.asarray(slices, np.intp)
    for s in range(0, len(todo), batch):
        idx = todo[s : s + batch]
        chunk = np.asarray(hu[idx], np.float32)
        chunk = np.pad(chunk, ((0, 0), (pt, pb), (pl, pr)), constant_values=-1000.0)
        last = s + batch >= len(todo)
        logits = session.run(None, {in_name: window(chunk)}, shrink_arena() if last else None)[0][:, 0]
        del chunk
        prob = 1.0 / (1.0 + np.exp(-logits))
        yield idx, prob[:, pt : pt + h, pl : pl + w]


def shrink_arena() -> Any:
    """Run options that hand ONNX Runtime's CPU arena back after the run.

    The arena keeps the U-Net's activations (about 200 MB for 2 slices of 512^2) for the session's
    lifetime; given back after a series' last batch, the later stages (labelling, features, the SEG)
    do not stack on top of it (bench/memory.py). The next series grows it again in its first batch."""
    import onnxruntime as ort

    options = ort.RunOptions()
    options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
    return options


def predict_probability(session: Any, hu: NDArray[np.floating[Any]], *, batch: int = BATCH) -> NDArray[np.float32]:
    """Hematoma probability per voxel, (z, y, x) float32, slices batched through the ONNX net."""
    out = np.empty(hu.shape, np.float32)
    for idx, prob in _probability_batches(session, hu, batch):
        out[idx] = prob
    return out


def predict_mask(
    session: Any, hu: NDArray[np.floating[Any]], threshold: float, *, batch: int = BATCH,
    slices: NDArray[np.bool_] | None = None,
) -> NDArray[np.bool_]:
    """`predict_probability(...) >= threshold`, thresholded batch by batch; with `slices` (one
    bool per slice) the net runs on those slices only and the others are False.

    The worker never needs the probabilities themselves, and a float32 probability volume of a
    600 x 512^2 series is 630 MB next to the 630 MB HU volume (bench/memory.py); the bool mask is
    a quarter of that.
    """
    out = np.zeros(hu.shape, bool)
    todo = None if slices is None else np.flatnonzero(slices)
    for idx, prob in _probability_batches(session, hu, batch, todo):
        out[idx] = prob >= threshold
    return out


def postprocess(prob: NDArray[np.float32], spacing: Sequence[float], pp: PostProcessing,
                cavity: Cavity | None = None, hu: NDArray[Any] | None = None, *,
                head_up: bool = True) -> NDArray[np.uint8]:
    """Threshold, gate by the intracranial `cavity` (when given), drop what lies flat on the
    cranial floor (when `hu` is given too), then keep the 3D connected components
    (26-neighbourhood) of at least `min_component_ml`."""
    mask = prob >= pp.threshold
    if cavity is not None:
        gate_mask(mask, cavity, spacing)
        if hu is not None:
            drop_floor_components(mask, hu, cavity, head_up=head_up, share=pp.floor_share)
    return clean_mask(mask, spacing, pp)


def clean_mask(mask: NDArray[np.bool_], spacing: Sequence[float], pp: PostProcessing) -> NDArray[np.uint8]:
    """The post-processing of a thresholded mask: fill holes per slice, drop small 3D components
    (26-neighbourhood). Works in place: `mask` is overwritten and returned viewed as uint8 0/1,
    so no second mask-sized array is allocated."""
    if pp.fill_holes:
        for k in range(mask.shape[0]):
            if mask[k].any():
                mask[k] = ndi.binary_fill_holes(mask[k])
    if not mask.any():
        return mask.view(np.uint8)
    # Label only the mask's bounding box: components never leave it, and an int32 label image of
    # a whole 600 x 512^2 series (plus its temporaries) was the worker's peak memory (bench/memory.py).
    box = tuple(slice(int(i[0]), int(i[-1]) + 1)
                for i in (np.flatnonzero(mask.any(axis=axes)) for axes in ((1, 2), (0, 2), (0, 1))))
    labels, n = ndi.label(mask[box], structure=np.ones((3, 3, 3), bool))
    voxel_ml = float(spacing[0]) * float(spacing[1]) * float(spacing[2]) / 1000.0
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    keep = sizes * voxel_ml >= pp.min_component_ml
    if pp.remote_min_ml > 0 and n > 1:
        small = np.flatnonzero(keep & (sizes * voxel_ml < pp.remote_min_ml))
        if small.size:
            keep[small] = _near_largest(labels, sizes, spacing, pp.remote_reach_mm, small)[small]
    keep[0] = False
    if pp.min_lesion_ml > 0 and not (keep & (sizes * voxel_ml >= pp.min_lesion_ml)).any():
        keep[:] = False  # nothing hematoma-sized: islands alone are not a hemorrhage
    mask[box] = keep[labels]  # outside the box the mask is already empty
    return mask.view(np.uint8)


def _near_largest(labels: NDArray[np.int32], sizes: NDArray[np.int64], spacing: Sequence[float],
                  reach_mm: float, candidates: NDArray[np.int64]) -> NDArray[np.bool_]:
    """Per label: does the component come within `reach_mm` of the largest one? Answered for the
    `candidates` only (the largest is near itself; other labels stay False).

    Distances go from the candidates' voxels to the largest component's surface voxels (a k-d
    tree), so memory follows the hematoma's surface, not the series (a distance map of the
    hematoma's box grown by 20 mm is hundreds of MB on a thin series)."""
    from scipy.spatial import cKDTree

    main = int(np.argmax(sizes[1:])) + 1
    objs = ndi.find_objects(labels)
    scale = np.array([float(spacing[2]), float(spacing[1]), float(spacing[0])])  # (z, y, x) axes, mm

    def points(label: int, surface_only: bool) -> NDArray[np.float64]:
        box = objs[label - 1]
        assert box is not None
        m = labels[box] == label
        if surface_only:
            m &= ~ndi.binary_erosion(m)
        return (np.argwhere(m) + [b.start for b in box]) * scale

    tree = cKDTree(points(main, True))
    near = np.zeros(sizes.size, bool)
    near[main] = True
    for j in candidates:
        if j != main:
            d, _ = tree.query(points(int(j), False), k=1, distance_upper_bound=reach_mm)
            near[j] = bool(np.isfinite(d).any())
    return near


def volume_ml(mask: NDArray[np.generic], spacing: Sequence[float], extents: Sequence[float] | None = None) -> float:
    """Volume from the slice geometry: pixel area x each slice's extent along the slice normal
    (`extents`, one per slice, for a series of mixed slice thickness; else the spacing)."""
    area_ml = float(spacing[0]) * float(spacing[1]) / 1000.0
    if extents is None:
        return float(np.count_nonzero(mask)) * area_ml * float(spacing[2])
    m = np.asarray(mask).reshape(len(extents), -1)
    per_slice = np.array([np.count_nonzero(s) for s in m], np.int64)  # no mask-sized bool copy
    return float(np.dot(per_slice, np.asarray(extents, np.float64))) * area_ml
