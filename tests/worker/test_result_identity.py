"""The memory measures of issue 37 leave the results as they were: the SEG/SR/SC of a series
through the real models are equal, UIDs and dates masked and pixel data byte for byte, to what the
implementations they replaced give (kept here verbatim as the reference); and each measure on its
own gives the same arrays as the code it replaced. bench/memory.py makes the same comparison at 600
slices against another checkout."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from plumbing_helpers import models_dir
from pydicom.dataset import Dataset
from result_identity import canonical, first_difference
from scipy import ndimage as ndi

import hexnode.models.analyser as mp
import hexnode.models.brain as brain
import hexnode.models.features as features
import hexnode.models.segment as segment
import hexnode.report.outline as outline
import hexnode.report.render as render
import hexnode.report.sc as sc
from hexnode.pipeline.run import encode, produce


# -- the replaced implementations (as on main before issue 37's memory work) -----------------------
def reference_gate_mask(mask: np.ndarray, cavity: brain.Cavity, spacing: Any) -> int:
    if not mask.any():
        return 0
    before = int(np.count_nonzero(mask))
    box = tuple(slice(int(i[0]), int(i[-1]) + 1)
                for i in (np.flatnonzero(mask.any(axis=axes)) for axes in ((1, 2), (0, 2), (0, 1))))
    sub = mask[box]
    sub &= cavity.full(cavity.mask, box)  # type: ignore[arg-type]
    if sub.any():
        labels, n = ndi.label(sub, structure=np.ones((3, 3, 3), bool))
        total = np.bincount(labels.ravel(), minlength=n + 1)
        in_core = np.bincount(labels[cavity.full(cavity.core, box)].ravel(), minlength=n + 1)  # type: ignore[arg-type]
        keep = in_core >= brain.CORE_FRACTION * total
        keep[0] = False
        rim_only = np.flatnonzero(~keep[1:]) + 1
        if rim_only.size and keep.any():
            keep |= brain._near_kept(labels, keep, rim_only, spacing)
        sub[...] = keep[labels]
    return before - int(np.count_nonzero(mask))


def reference_key_slice(mask: np.ndarray) -> int:
    areas = mask.reshape(mask.shape[0], -1).astype(bool).sum(axis=1)
    if int(areas.max(initial=0)) == 0:
        return mask.shape[0] // 2
    return int(np.argmax(areas))


# -- the whole path ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def models() -> Any:
    return mp.Models.load(models_dir(), ["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def bleed_series(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    from hexnode.synth.dicom import write_case
    from hexnode.synth.phantom import generate_case

    return write_case(generate_case(777, 3), tmp_path_factory.mktemp("identity"))


def test_results_equal_to_the_replaced_code_uids_and_dates_masked(models: Any, bleed_series: list[Path],
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    removed: list[int] = []

    def gate(mask: np.ndarray, cavity: brain.Cavity, spacing: Any) -> int:
        removed.append(brain.gate_mask(mask, cavity, spacing))
        return removed[-1]

    with monkeypatch.context() as m:
        m.setattr(mp, "gate_mask", gate)
        now = produce(bleed_series, models)
    assert removed and removed[0] > 1000  # the gate drops U-Net blood outside the skull on this case
    assert now.analysed and now.prediction is not None and now.prediction.hemorrhage_detected
    seg = now.datasets[0]
    assert seg.Modality == "SEG" and int(np.count_nonzero(seg.pixel_array)) > 0  # a non-trivial mask compared
    with monkeypatch.context() as m:
        m.setattr(mp, "gate_mask", reference_gate_mask)
        m.setattr(segment, "shrink_arena", lambda: None)
        # the U-Net on every slice, not only on those the cavity reaches (issue 37's latency work)
        m.setattr(mp, "predict_mask", lambda session, hu, threshold, **_: segment.predict_mask(session, hu, threshold))
        for module in (render, outline, sc):
            m.setattr(module, "key_slice", reference_key_slice)
        before = produce(bleed_series, models)
    assert [d.Modality for d in before.datasets] == [d.Modality for d in now.datasets] == ["SEG", "SR", "OT"]
    for a, b in zip(before.datasets, now.datasets, strict=True):
        assert first_difference(a, b) is None
        assert len(encode(a)) > 0
    assert before.datasets[0].PixelData == now.datasets[0].PixelData
    assert before.key is not None and now.key is not None and before.key.index == now.key.index
    assert np.array_equal(before.key.hu, now.key.hu) and np.array_equal(before.key.mask, now.key.mask)
    assert before.prediction == now.prediction


def test_the_comparison_sees_a_changed_value_and_ignores_uids_and_dates() -> None:
    a = Dataset()
    a.SOPInstanceUID, a.ContentDate, a.ContentTime, a.SeriesDescription = "1.2.3", "20261206", "1520", "x"
    a.PixelData = b"\x00\x01"
    b = Dataset()
    b.SOPInstanceUID, b.ContentDate, b.ContentTime, b.SeriesDescription = "1.2.4", "20261207", "1521", "x"
    b.PixelData = b"\x00\x01"
    assert first_difference(a, b) is None
    b.PixelData = b"\x00\x02"
    assert first_difference(a, b) is not None
    b.PixelData, b.SeriesDescription = b"\x00\x01", "y"
    assert "y" in str(first_difference(a, b))
    assert any("<masked>" in line for line in canonical(a))


# -- each measure ----------------------------------------------------------------------------------
def _cavity(shape: tuple[int, int, int], rng: np.random.Generator) -> brain.Cavity:
    z, y, x = shape
    yy, xx = np.mgrid[: y // 2, : x // 2]
    disk = np.hypot(yy - y / 4, xx - x / 4) < 0.4 * y / 2
    mask = np.repeat(disk[None], z, axis=0)
    mask[: z // 4] = False  # the skull base: no cavity there
    core = ndi.binary_erosion(mask, np.ones((1, 5, 5), bool))
    return brain.Cavity(mask=mask, core=core, step=2, area_mm2=mask.sum(axis=(1, 2)).astype(float),
                        extents_mm=np.ones(z))


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_gate_in_chunks_on_the_cavity_box_equals_the_whole_box(seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(seed)
    shape = (40, 96, 96)
    cavity = _cavity(shape, rng)
    # blobs inside, across the rim and outside the cavity, and speckle everywhere
    raw = ndi.binary_dilation(rng.random(shape) > 0.9993, np.ones((3, 5, 5), bool)) | (rng.random(shape) > 0.999)
    monkeypatch.setattr(brain, "GATE_CHUNK", 7)  # several chunks, the last one short
    mine, ref = raw.copy(), raw.copy()
    # 2 mm pixels: blobs far enough apart that the rim rule and the satellite reach both decide
    removed = brain.gate_mask(mine, cavity, (2.0, 2.0, 5.0))
    assert removed == reference_gate_mask(ref, cavity, (2.0, 2.0, 5.0))
    assert removed > 0 and mine.any() and np.array_equal(mine, ref)


def test_compact_labels_are_the_int32_labels_and_fall_back_when_too_many() -> None:
    rng = np.random.default_rng(5)
    m = rng.random((20, 30, 30)) > 0.8
    labels, n = brain.label_compact(m)
    ref, n_ref = ndi.label(m, structure=np.ones((3, 3, 3), bool))
    assert labels.dtype == np.uint16 and n == n_ref and np.array_equal(labels, ref)
    many = np.zeros((84, 84, 84), bool)
    many[::2, ::2, ::2] = True  # 42^3 = 74,088 isolated voxels: more than uint16 holds
    labels, n = brain.label_compact(many)
    assert n == 42**3 and labels.dtype != np.uint16 and int(labels.max()) == n


def test_slice_areas_without_a_mask_sized_copy_pick_the_same_slice() -> None:
    rng = np.random.default_rng(9)
    for dtype in (np.uint8, bool):
        mask = (rng.random((12, 40, 40)) > rng.random((12, 1, 1))).astype(dtype)
        assert render.key_slice(mask) == reference_key_slice(mask)
    assert render.key_slice(np.zeros((7, 8, 8), np.uint8)) == 3
    mask = np.zeros((6, 32, 32), np.uint8)
    mask[2:5, 10:20, 12:22] = 1
    mask[3, 8:24, 8:24] = 1
    hu = rng.normal(30, 10, mask.shape).astype(np.float32)
    x = features.cnn_input(hu, mask, (0.5, 0.5, 5.0))
    assert x.shape == (1, 4, features.CNN_SIZE, features.CNN_SIZE)
    assert float(x[0, 3].sum()) > 0  # slice 3, the largest, is the mask channel
    assert segment.volume_ml(mask, (0.5, 0.5, 5.0), [5.0] * 6) == pytest.approx(
        float(mask.sum()) * 0.25 * 5.0 / 1000.0)


def test_arena_given_back_after_the_last_batch_keeps_the_mask(models: Any) -> None:
    rng = np.random.default_rng(3)
    hu = rng.normal(40, 30, (5, 64, 64)).astype(np.float32)  # 3 batches of 2, the last one short
    prob = segment.predict_probability(models.seg, hu)
    mask = segment.predict_mask(models.seg, hu, 0.5)
    assert np.array_equal(mask, prob >= 0.5)
    assert segment.shrink_arena() is not None


def test_the_net_on_some_slices_gives_those_slices_the_all_slice_values(models: Any) -> None:
    """The 2D net run on a subset (batched differently) gives each of those slices exactly what it
    gets in a run over every slice; the slices left out are False."""
    rng = np.random.default_rng(4)
    hu = rng.normal(45, 25, (7, 64, 64)).astype(np.float32)
    prob = segment.predict_probability(models.seg, hu)
    threshold = float(np.median(prob))  # half the voxels above it: any changed value shows
    for keep in ([0, 1, 0, 1, 1, 0, 1], [1, 0, 0, 0, 0, 0, 0], [0, 0, 1, 1, 1, 0, 0], [0] * 7):
        sel = np.array(keep, bool)
        mask = segment.predict_mask(models.seg, hu, threshold, slices=sel)
        assert np.array_equal(mask[sel], prob[sel] >= threshold) and not mask[~sel].any()
