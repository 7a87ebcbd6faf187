"""The skull-base partial-volume rule (hexnode.models.floor) with the committed U-Net on synthetic
heads whose cranial floor is drawn as thick tilted slices cut it (`generate_case(skull_base=True)`):
the false "hematoma" on the floor of a normal head is reproduced with the rule off and gone with
it on, and a real bleed in the temporal lobe resting on the middle fossa floor is kept whole."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage as ndi

from hexnode.models.brain import gate_mask, intracranial
from hexnode.models.floor import drop_floor_components, on_floor
from hexnode.models.segment import clean_mask, predict_mask, volume_ml
from hexnode.synth.anatomy import Grid, SkullBase
from hexnode.synth.draw import draw, rng_for
from hexnode.synth.phantom import SKULL_BASE_STREAM, Case, generate_case
from hexnode.train import metrics as M

MODELS = Path(__file__).resolve().parents[2] / "models"
#: a normal head, tilted 20 degrees, 6 mm slices: the U-Net calls 3.5 ml on its anterior and
#: middle fossa floors (found with bench/skullbase.py's generator on a seed of its own)
SEED, INDEX, TILT, SLICE_MM = 4244, 1, 20.0, 6.0


@pytest.fixture(scope="module")
def committed():  # type: ignore[no-untyped-def]
    from hexnode.models.analyser import Models

    return Models.load(MODELS, providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def head() -> Case:
    return generate_case(SEED, INDEX, normal=True, tilt_deg=TILT, skull_base=True, slice_mm=SLICE_MM)


def _unruled(models, hu: np.ndarray, spacing) -> np.ndarray:  # type: ignore[no-untyped-def]
    """The U-Net's gated mask before the rule (a copy per caller)."""
    raw = predict_mask(models.seg, hu, models.post.threshold)
    gate_mask(raw, intracranial(hu, spacing), spacing)
    return raw


def test_skull_base_option_leaves_the_head_and_changes_only_the_floor(head: Case) -> None:
    plain = generate_case(SEED, INDEX, normal=True, tilt_deg=TILT, slice_mm=SLICE_MM)
    assert plain.hu.shape == head.hu.shape and plain.truth == head.truth
    assert set(head.extra["skull_base"]) == {"pitch_deg", "relief_mm", "roof_mm", "middle_mm"}
    geo = head.geometry
    differs = [k for k in range(geo.n_slices) if not np.array_equal(plain.hu[k], head.hu[k])]
    assert differs and max(geo.slice_w(k) for k in differs) < 12.0  # only slices near the floor
    assert geo.slice_thickness_mm == SLICE_MM
    assert geo.normal_step_mm == pytest.approx(SLICE_MM * np.cos(np.radians(TILT)))


def test_partial_volume_on_the_cranial_floor_is_not_a_hematoma(committed, head: Case) -> None:  # type: ignore[no-untyped-def]
    hu = head.hu.astype(np.float32)
    off = clean_mask(_unruled(committed, hu, head.spacing), head.spacing, replace(committed.post, floor_share=0.0))
    assert volume_ml(off, head.spacing) > 1.0  # the class is reproduced: the U-Net calls blood
    a = committed.analyse(hu, head.spacing)
    assert a.prediction.volume_ml <= 0.2
    assert not a.prediction.hemorrhage_detected


def test_the_rule_reads_the_slice_order(committed, head: Case) -> None:  # type: ignore[no-untyped-def]
    """Feet-first slice order (head_up False) finds the same floor under the same components."""
    hu = head.hu.astype(np.float32)
    up = _unruled(committed, hu, head.spacing)
    down = up[::-1].copy()
    cav_up = intracranial(hu, head.spacing)
    cav_down = intracranial(hu[::-1].copy(), head.spacing, head_up=False)
    removed_up = drop_floor_components(up, hu, cav_up)
    removed_down = drop_floor_components(down, hu[::-1].copy(), cav_down, head_up=False)
    assert removed_up > 0 and removed_down == removed_up
    assert (down[::-1] == up).all()
    # the wrong order looks for the floor above the patches, where the brain is: nothing dropped
    wrong = _unruled(committed, hu, head.spacing)
    assert drop_floor_components(wrong, hu, cav_up, head_up=False) == 0


def _temporal_bleed(case: Case, radius_mm: float = 9.0) -> tuple[np.ndarray, np.ndarray]:
    """(hu, truth) with a round 65 HU bleed in the left temporal lobe whose bottom rests 2 mm into
    the middle fossa floor: only soft voxels (-20 to 100 HU) become blood, so the bone clips it."""
    head = draw(SEED, INDEX, thin=False, hard=False, tilt_deg=TILT, slice_mm=SLICE_MM)[0]
    head.base = SkullBase.draw(rng_for(SEED, INDEX, SKULL_BASE_STREAM))
    geo = case.geometry
    cu, cv = 38.0, head.v0 - 10.0  # lateral middle fossa, in front of the petrous ridge
    hu = case.hu.astype(np.float32).copy()
    truth = np.zeros(hu.shape, bool)
    k_mid = int(round(geo.slice_of(-40.0)))
    u, v = geo.uv_grid(k_mid)
    floor = head._base_floor(Grid.full(geo.uv_affine(k_mid), geo.n, geo.pixel_mm), u, v)
    iy, ix = np.unravel_index(int(np.argmin((u - cu) ** 2 + (v - cv) ** 2)), u.shape)
    cw = float(floor[iy, ix]) + radius_mm - 2.0
    for k in range(geo.n_slices):
        dw = geo.slice_w(k) - cw
        if abs(dw) >= radius_mm:
            continue
        u, v = geo.uv_grid(k)
        ball = (u - cu) ** 2 + (v - cv) ** 2 + dw * dw <= radius_mm ** 2
        blood = ball & (hu[k] >= -20) & (hu[k] <= 100)  # brain and CSF, never the bone
        grain = hu[k] - ndi.uniform_filter(hu[k], 7)  # the scanner's noise, kept
        hu[k][blood] = 65.0 + grain[blood]
        truth[k] = blood
    return hu, truth


def test_a_temporal_bleed_resting_on_the_middle_fossa_floor_is_kept(committed, head: Case) -> None:  # type: ignore[no-untyped-def]
    hu, truth = _temporal_bleed(head)
    ml = volume_ml(truth, head.spacing)
    assert 1.0 < ml < 4.0
    cav = intracranial(hu, head.spacing)
    whole = (slice(0, hu.shape[0]), slice(0, hu.shape[1]), slice(0, hu.shape[2]))
    # it does rest on the floor: its lowest slice has bone or no cavity beneath
    lowest = int(np.flatnonzero(truth.any(axis=(1, 2)))[0])
    floor = on_floor(truth, hu, cav, whole)
    assert floor[lowest][truth[lowest]].mean() > 0.5
    off = clean_mask(_unruled(committed, hu, head.spacing), head.spacing, replace(committed.post, floor_share=0.0))
    on = committed.segment(hu, head.spacing)
    assert M.iou(truth, on) >= M.iou(truth, off) - 1e-9
    assert M.iou(truth, on) > 0.5
    # at most its rim on the floor, where no blood lies above, is lost
    assert (on.astype(bool) & truth).sum() >= 0.85 * (off.astype(bool) & truth).sum()
    a = committed.analyse(hu, head.spacing)
    assert a.prediction.hemorrhage_detected and a.prediction.volume_ml == pytest.approx(ml, rel=0.25)
