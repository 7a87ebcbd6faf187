"""Result objects: DICOM SEG, TID 1500 SR, Secondary Capture summary, and "not analysed" reports.

The worker calls `build_results` (or `build_not_analysed`) and writes the returned datasets;
`derive_uid` makes every output UID reproducible from (source series, model version, kind).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from pydicom.dataset import Dataset

from hexnode.pipeline.contracts import Prediction
from hexnode.report.common import addressable, with_frame_of_reference
from hexnode.report.not_analysed import build_not_analysed
from hexnode.report.outline import key_slice_roi
from hexnode.report.sc import build_sc
from hexnode.report.seg import build_seg
from hexnode.report.sr import build_sr
from hexnode.report.uids import derive_uid

__all__ = ["build_not_analysed", "build_results", "derive_uid"]


def build_results(
    sources: Sequence[Dataset],
    hu: np.ndarray,
    mask: np.ndarray,
    prediction: Prediction,
    *,
    revision: int = 0,
    selection_note: str | None = None,
) -> list[Dataset]:
    """[SEG, SR, SC] for one analysed series, ready to write (`ds.save_as(path)`).

    `sources` are the CT datasets in the mask's z order; headers read with
    `stop_before_pixels=True` are enough (no source pixel data is read). `hu` (float32, z,y,x) is
    used only for the summary image's key slice.
    """
    if not (math.isfinite(prediction.volume_ml) and prediction.volume_ml >= 0):
        raise ValueError(f"invalid hematoma volume {prediction.volume_ml!r}")
    if not (math.isfinite(prediction.probability) and 0.0 <= prediction.probability <= 1.0):
        raise ValueError(f"invalid probability {prediction.probability!r}")
    sources = addressable(sources)
    seg_sources, frame_note = with_frame_of_reference(sources)
    seg = build_seg(seg_sources, mask, prediction.model, revision=revision)
    key = key_slice_roi(sources, mask)
    sr = build_sr(sources, seg, prediction, key=key, revision=revision, selection_note=selection_note,
                  source_notes=(frame_note,) if frame_note else ())
    sc = build_sc(sources, hu, mask, prediction, key=key, revision=revision, selection_note=selection_note)
    return [seg, sr, sc]
