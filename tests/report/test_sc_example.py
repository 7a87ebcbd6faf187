"""docs/sc-example.png is what the node sends today: regenerated through the worker's path with the
committed models, it equals the committed file (within a few anti-aliased font pixels)."""

from __future__ import annotations

import numpy as np
from PIL import Image

from hexnode.report.example import DEFAULT_OUT, example_pixels
from hexnode.report.render import BAND, FRAME, SIZE


def test_committed_sc_example_is_current() -> None:
    committed = np.asarray(Image.open(DEFAULT_OUT).convert("RGB"))
    fresh = example_pixels()
    assert fresh.shape == committed.shape, "docs/sc-example.png is stale: run `make sc-example`"
    assert fresh.shape[1] == SIZE + 2 * FRAME + BAND
    differ = np.abs(fresh.astype(int) - committed.astype(int)).max(axis=-1) > 24
    # one changed digit at the smallest size moves ~40 pixels (measured: 37-54); a boundary voxel
    # flipped by another CPU's float rounding moves a few of the outline's
    assert differ.sum() <= 12, f"{differ.sum()} pixels differ: docs/sc-example.png is stale, run `make sc-example`"
