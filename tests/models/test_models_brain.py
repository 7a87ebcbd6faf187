"""The intracranial cavity (hexnode.models.brain) on synthetic heads: it holds all the blood, the gate
removes what lies outside the skull or in the inner-table rim, a skull defect does not let it leak
into the scalp, and the coverage rule tells a whole head from a stub."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from hexnode.models import brain
from hexnode.synth.phantom import generate_case


def _whole(hu: np.ndarray) -> tuple[slice, slice, slice]:
    return (slice(0, hu.shape[0]), slice(0, hu.shape[1]), slice(0, hu.shape[2]))


@pytest.mark.parametrize("index,tilt", [(0, 0.0), (1, 20.0), (2, 0.0), (5, 25.0)])
def test_cavity_holds_all_the_blood_and_the_gate_keeps_it(index: int, tilt: float) -> None:
    c = generate_case(71, index, tilt_deg=tilt)
    cav = brain.intracranial(c.hu, c.spacing)
    gt = c.mask.astype(bool)
    assert gt.any()
    assert not (gt & ~cav.full(cav.mask, _whole(c.hu))).any()
    m = gt.copy()
    assert brain.gate_mask(m, cav, c.spacing) == 0 and (m == gt).all()
    assert brain.coverage_problem(cav) is None


def test_gate_removes_blood_called_outside_the_skull_and_in_the_rim() -> None:
    c = generate_case(72, 0, normal=True)
    hu = c.hu.astype(np.float32)
    cav = brain.intracranial(hu, c.spacing)
    full, core = cav.full(cav.mask, _whole(hu)), cav.full(cav.core, _whole(hu))
    k = int(np.argmax(cav.area_mm2))
    pred = np.zeros(hu.shape, bool)
    # inside the brain, well away from the bone: kept
    inside = ndi.binary_erosion(core[k], iterations=25)
    ys, xs = np.nonzero(inside)
    cy, cx = int(ys.mean()), int(xs.mean())
    pred[k - 1:k + 2, cy - 8:cy + 8, cx - 8:cx + 8] = True
    kept = pred.copy()
    # scalp / temporalis: soft tissue outside the skull on the same slices
    outside = (hu[k] > 20) & (hu[k] < 80) & ~ndi.binary_dilation(full[k], iterations=12)
    oy, ox = np.nonzero(outside)
    assert oy.size > 100
    pred[k, oy[:200], ox[:200]] = True
    # a crescent in the inner-table rim (cavity but not core)
    rim = full[k] & ~core[k]
    ry, rx = np.nonzero(rim)
    pred[k, ry[: ry.size // 4], rx[: rx.size // 4]] = True
    removed = brain.gate_mask(pred, cav, c.spacing)
    assert removed > 200
    assert (pred == kept).all()


def test_a_skull_defect_does_not_let_the_cavity_leak_into_the_scalp() -> None:
    c = generate_case(73, 1, normal=True)
    hu = c.hu.astype(np.float32)
    before = brain.intracranial(hu, c.spacing)
    ref = before.full(before.mask, _whole(hu))
    widest = int(np.argmax(before.area_mm2))
    cut = hu.copy()
    # a craniectomy: the skull of the upper slices replaced by scalp soft tissue over a 60 mm wedge
    px = c.spacing[0]
    yy, xx = np.mgrid[0:512, 0:512]
    for k in range(widest + 2, hu.shape[0] - 2):
        ys, xs = np.nonzero(ref[k])
        if ys.size == 0:
            continue
        cy, cx = ys.mean(), xs.mean()
        wedge = (xx > cx + 0.3 * (xs.max() - cx)) & (np.abs(yy - cy) < 30.0 / px)
        bone = wedge & (cut[k] > 250)
        cut[k][bone] = 40.0
    after = brain.intracranial(cut, c.spacing)
    got = after.full(after.mask, _whole(hu))
    # the scalp is what lies outside the intact skull: the cavity across the gap stops at the chord
    # between the bone edges, inside the skull's own outline (2 mm of slack for the decimated grid)
    skull_outline = np.stack([ndi.binary_fill_holes(ndi.binary_closing(s > 250, iterations=3)) for s in hu])
    scalp = ~ndi.binary_dilation(skull_outline, structure=np.ones((1, 3, 3), bool), iterations=int(round(2.0 / px)))
    assert not (got & scalp).any()
    # the brain under the defect is still in it (the hull across the gap bounds it)
    assert (got & ref).sum() >= 0.9 * ref.sum()


def test_coverage_rule_tells_a_whole_head_from_stubs() -> None:
    c = generate_case(74, 2)
    hu = c.hu.astype(np.float32)
    assert brain.coverage_problem(brain.intracranial(hu, c.spacing)) is None
    low = brain.coverage_problem(brain.intracranial(hu[:10], c.spacing))
    assert low == "incomplete coverage: 10 slices cover 50 mm, the brain extends beyond the top slice"
    high = brain.coverage_problem(brain.intracranial(hu[-12:], c.spacing))
    assert high is not None and high.endswith("the brain extends below the bottom slice")
    # feet-first order: the same rule with the vertex at index 0
    assert brain.coverage_problem(brain.intracranial(hu[::-1], c.spacing, head_up=False), head_up=False) is None
    air = np.full((6, 512, 512), -1000.0, np.float32)
    assert "no intracranial cavity found" in str(brain.coverage_problem(brain.intracranial(air, c.spacing)))


def test_mixed_thickness_extents_are_the_coverage_length() -> None:
    c = generate_case(75, 0, mixed=((4.0, 14), (7.0, 14)))
    ext = c.geometry.extents_mm()
    cav = brain.intracranial(c.hu, c.spacing, extents=ext)
    assert brain.coverage_problem(cav) is None
    assert float(cav.extents_mm.sum()) == pytest.approx(4 * 14 + 7 * 14, abs=1e-6)
    assert not (c.mask.astype(bool) & ~cav.full(cav.mask, _whole(c.hu))).any()


def test_the_run_length_disk_morphology_and_the_stacked_fill_are_ndimage_s() -> None:
    """_disk_op and _fill_in_plane give exactly what ndimage gives slice by slice (the cavity
    the gate uses is unchanged by computing it faster)."""
    rng = np.random.default_rng(5)
    x = ndi.binary_opening(rng.random((3, 70, 90)) < 0.35) | (rng.random((3, 70, 90)) < 0.01)
    x[:, 0, 3] = x[:, 40, -1] = True  # on the border
    for r in (1.0, 2.3, 3.5, 4.6):
        disk = brain._disk(r)
        assert (brain._disk_op(x, r, dilate=True) == np.stack([ndi.binary_dilation(s, disk) for s in x])).all()
        assert (brain._disk_op(x, r, dilate=False) == np.stack([ndi.binary_erosion(s, disk) for s in x])).all()
    rings = ndi.binary_dilation(rng.random((3, 70, 90)) < 0.02, iterations=2)
    assert (brain._fill_in_plane(rings) == np.stack([ndi.binary_fill_holes(s) for s in rings])).all()


def test_a_thin_series_cavity_on_every_other_slice_agrees_with_every_slice(monkeypatch: pytest.MonkeyPatch) -> None:
    c = generate_case(74, 1, thin=True, n_slices=48)
    assert c.spacing[2] <= brain.Z_STEP_MM / 2  # computed on every other slice
    fast = brain.intracranial(c.hu, c.spacing)
    monkeypatch.setattr(brain, "Z_STEP_MM", 0.0)  # every slice computed
    every = brain.intracranial(c.hu, c.spacing)
    inter = np.count_nonzero(fast.mask & every.mask)
    assert 2 * inter / (np.count_nonzero(fast.mask) + np.count_nonzero(every.mask)) > 0.98
    gt = c.mask.astype(bool)
    assert gt.any() and not (gt & ~fast.full(fast.mask, _whole(c.hu))).any()
    m = gt.copy()
    assert brain.gate_mask(m, fast, c.spacing) == 0
