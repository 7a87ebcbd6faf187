"""The NCCT expansion signs (hexnode.models.signs) on drawn hematomas whose signs are known by
construction, and the generator's sign truth (hexnode.synth.signtruth) on a generated case."""

from __future__ import annotations

import numpy as np
import pytest

from hexnode.models.signs import SIGN_NAMES, measure_signs
from hexnode.pipeline.contracts import ModelInfo, Prediction
from hexnode.report.sc import signs_line

SPACING = (0.5, 0.5, 5.0)  # (sx, sy, sz) mm: a thick-slice head CT


def _ball(shape: tuple[int, int, int], centre: tuple[float, float, float], radius_mm: float) -> np.ndarray:
    z, y, x = np.indices(shape, dtype=np.float32)
    sx, sy, sz = SPACING
    return (((z - centre[0]) * sz) ** 2 + ((y - centre[1]) * sy) ** 2 + ((x - centre[2]) * sx) ** 2) <= radius_mm**2


def _head(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Brain at 30 HU with noise, a dense 62 HU clot of 15 mm radius in the middle, its mask."""
    shape = (13, 160, 160)
    rng = np.random.default_rng(seed)
    hu = 30.0 + rng.normal(0.0, 3.0, shape)
    clot = _ball(shape, (6, 80, 80), 15.0)
    hu[clot] = 62.0 + rng.normal(0.0, 3.0, int(clot.sum()))
    return hu.astype(np.float32), clot.astype(np.uint8)


def test_a_smooth_dense_clot_shows_none_of_the_density_signs() -> None:
    hu, mask = _head()
    signs = measure_signs(hu, mask, SPACING)
    assert [s.name for s in signs.signs] == list(SIGN_NAMES)
    for name in ("blend", "island", "swirl", "black_hole", "hypodensity", "irregular"):
        assert not signs[name].present, signs[name].evidence


def test_an_encapsulated_focus_30_hu_below_is_a_black_hole_and_a_hypodensity() -> None:
    hu, mask = _head()
    focus = _ball(hu.shape, (6, 80, 80), 5.0)
    hu[focus] -= 30.0
    signs = measure_signs(hu, mask, SPACING)
    assert signs["black_hole"].present and signs["hypodensity"].present and signs["swirl"].present
    assert not signs["blend"].present
    assert "HU below the clot" in signs["black_hole"].evidence
    assert signs["black_hole"].value >= 28.0


def test_a_focus_20_hu_below_is_a_hypodensity_but_no_black_hole() -> None:
    hu, mask = _head()
    hu[_ball(hu.shape, (6, 80, 80), 5.0)] -= 20.0
    signs = measure_signs(hu, mask, SPACING)
    assert signs["hypodensity"].present and not signs["black_hole"].present
    assert "< 28" in signs["black_hole"].evidence


def test_a_hypodense_cap_at_the_margin_is_a_blend_not_a_black_hole() -> None:
    hu, mask = _head()
    z, y, x = np.indices(hu.shape)
    cap = (mask > 0) & (x >= 80 + 12)  # the clot's last 9 mm on one side, to its edge
    hu[cap] -= 24.0
    signs = measure_signs(hu, mask, SPACING)
    assert signs["blend"].present, signs["blend"].evidence
    assert not signs["black_hole"].present and not signs["swirl"].present


@pytest.mark.parametrize(("islands", "present"), [(2, False), (3, True)])
def test_island_sign_needs_three_separate_small_hematomas(islands: int, present: bool) -> None:
    hu, mask = _head()
    for k in range(islands):  # 2.5 mm blobs 6 mm off the clot's surface
        angle = 2 * np.pi * k / 3
        blob = _ball(hu.shape, (6, 80 + np.sin(angle) * 47, 80 + np.cos(angle) * 47), 2.5)
        hu[blob] = 62.0
        mask[blob] = 1
    signs = measure_signs(hu, mask, SPACING)
    assert signs["island"].present == present
    assert int(signs["island"].value) == islands


def test_signs_line_names_the_signs_present() -> None:
    hu, mask = _head()
    hu[_ball(hu.shape, (6, 80, 80), 5.0)] -= 30.0
    signs = measure_signs(hu, mask, SPACING)
    pred = Prediction(10.0, 0.5, ModelInfo("m", "v", 0.3), signs=signs.signs)
    assert signs_line(pred) == "Signs: swirl, black hole, hypodensities"
    plain = Prediction(10.0, 0.5, ModelInfo("m", "v", 0.3), signs=measure_signs(*_head(), SPACING).signs)
    assert signs_line(plain) == "Signs: none of 6 read"
    assert signs_line(Prediction(0.0, 0.0, ModelInfo("m", "v", 0.3), hemorrhage_detected=False)) is None


def test_the_generators_sign_truth_follows_what_it_drew() -> None:
    from hexnode.synth.phantom import generate_case

    c = generate_case(5, 100, n_slices=10)
    t = c.truth
    assert set(t.signs) >= {"blend", "island", "swirl", "hypodensity", "black_hole", "irregular"}
    assert t.signs["blend"] == float(t.markers["blend"] > 0)
    assert t.signs["island"] == float(t.markers["islands"] >= 3)
    assert t.signs["irregular"] == float(t.markers["irregularity"] >= 0.20)
    if t.signs["black_hole"]:
        assert t.signs["hypodensity"] and t.hematoma_hu - t.hypodense_hu >= 28
