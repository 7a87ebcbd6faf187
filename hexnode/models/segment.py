"""Hematoma segmentation: HU windows → 2D U-Net (ONNX) per slice → 3D post-processing.

The windowing here is also what training feeds the network (hexnode.train imports it), so the
two can never drift apart.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage as ndi

# (low, high) HU per input channel. Channel 0 is the seed's 0-100 HU brain window. Channel 1
# keeps calcifications (100-400 HU) apart from blood (50-90 HU), which channel 0 saturates
# together; channel 2 shows bone and air, so the skull rim and the skull base have context.
WINDOWS: tuple[tuple[float, float], ...] = ((0.0, 100.0), (-50.0, 350.0), (-1000.0, 2000.0))
NOMINAL_SIZE = 512
STRIDE = 8  # the network downsamples three times


def window(hu: NDArray[np.floating[Any]], windows: Sequence[tuple[float, float]] = WINDOWS) -> NDArray[np.float32]:
    """(n, H, W) HU → (n, C, H, W) float32 in [0, 1]."""
    x = np.asarray(hu, np.float32)
    chans = [np.clip((x - lo) / (hi - lo), 0.0, 1.0) for lo, hi in windows]
    return np.stack(chans, axis=1).astype(np.float32)


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


def predict_probability(session: Any, hu: NDArray[np.floating[Any]], *, batch: int = 8) -> NDArray[np.float32]:
    """Hematoma probability per voxel, (z, y, x) float32, slices batched through the ONNX net."""
    z, h, w = hu.shape
    (pt, pb), (pl, pr) = _pad_amounts(h, w)
    in_name = session.get_inputs()[0].name
    out = np.empty((z, h, w), np.float32)
    for s in range(0, z, batch):
        chunk = np.asarray(hu[s : s + batch], np.float32)
        chunk = np.pad(chunk, ((0, 0), (pt, pb), (pl, pr)), constant_values=-1000.0)
        logits = session.run(None, {in_name: window(chunk)})[0][:, 0]
        prob = 1.0 / (1.0 + np.exp(-logits))
        out[s : s + batch] = prob[:, pt : pt + h, pl : pl + w]
    return out


def postprocess(prob: NDArray[np.float32], spacing: Sequence[float], pp: PostProcessing) -> NDArray[np.uint8]:
    """Threshold, then keep the 3D connected components (26-neighbourhood) of at least `min_component_ml`."""
    mask = prob >= pp.threshold
    if pp.fill_holes:
        for k in range(mask.shape[0]):
            if mask[k].any():
                mask[k] = ndi.binary_fill_holes(mask[k])
    if not mask.any():
        return mask.astype(np.uint8)
    # Label only the mask's bounding box: components never leave it, and an int32 label image of
    # a whole 600 x 512^2 series (plus its temporaries) was the worker's peak memory (bench/memory.py).
    box = tuple(slice(int(i[0]), int(i[-1]) + 1)
                for i in (np.flatnonzero(mask.any(axis=axes)) for axes in ((1, 2), (0, 2), (0, 1))))
    labels, n = ndi.label(mask[box], structure=np.ones((3, 3, 3), bool))
    voxel_ml = float(spacing[0]) * float(spacing[1]) * float(spacing[2]) / 1000.0
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    keep = sizes * voxel_ml >= pp.min_component_ml
    keep[0] = False
    out = np.zeros(mask.shape, np.uint8)
    out[box] = keep[labels]
    return out


def volume_ml(mask: NDArray[np.generic], spacing: Sequence[float]) -> float:
    """Volume from the slice geometry: pixel area x spacing along the slice normal."""
    return float(np.count_nonzero(mask)) * float(spacing[0]) * float(spacing[1]) * float(spacing[2]) / 1000.0
