"""The marker features measured on the mask and the logistic marker score, on hand-made masks."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hexnode.models import features as F
from hexnode.models.predict import MarkerScore
from hexnode.train.fusion_train import fit_marker_score

SPACING = (0.5, 0.5, 1.0)  # (sx, sy, sz) mm


def _ellipsoid(shape, centre, semi_mm, spacing=SPACING):
    z, y, x = np.indices(shape, dtype=np.float64)
    sx, sy, sz = spacing
    return (((x - centre[2]) * sx / semi_mm[0]) ** 2 + ((y - centre[1]) * sy / semi_mm[1]) ** 2
            + ((z - centre[0]) * sz / semi_mm[2]) ** 2) <= 1.0


def test_radial_irregularity_separates_flattened_from_irregular():
    ball = _ellipsoid((40, 80, 80), (20, 40, 40), (12, 12, 12))
    flat = _ellipsoid((40, 80, 80), (20, 40, 40), (16, 16, 6))
    lumpy = ball | _ellipsoid((40, 80, 80), (20, 40, 62), (5, 5, 5)) | _ellipsoid((40, 80, 80), (8, 20, 40), (5, 5, 5))
    r_ball, e_ball, a_ball = F.radial_irregularity(ball, SPACING)
    r_flat, e_flat, a_flat = F.radial_irregularity(flat, SPACING)
    r_lumpy, e_lumpy, _ = F.radial_irregularity(lumpy, SPACING)
    assert r_ball < 0.03 and e_ball < 0.03 and a_ball == pytest.approx(1.0, abs=0.05)
    assert r_flat > 0.2 and e_flat < 0.05 and a_flat == pytest.approx(16 / 6, rel=0.1)  # smooth once unflattened
    assert r_lumpy > 0.05 and e_lumpy > 0.05


def test_near_islands_counts_satellites_within_reach_only():
    from scipy import ndimage as ndi

    m = _ellipsoid((30, 120, 120), (15, 60, 60), (10, 10, 8))
    m |= _ellipsoid((30, 120, 120), (15, 60, 60 + 36), (2, 2, 2))  # 18 mm from the centre, 6 mm gap
    m |= _ellipsoid((30, 120, 120), (15, 60 - 36, 60), (2, 2, 2))  # another at a 6 mm gap
    m |= _ellipsoid((30, 120, 120), (15, 60, 4), (1.5, 1.5, 1.5))  # 28 mm: beyond the 12 mm reach
    labels, n = ndi.label(m, np.ones((3, 3, 3), bool))
    main = int(np.argmax(np.bincount(labels.ravel())[1:])) + 1
    assert n == 4
    assert F.near_islands(labels, main, SPACING, 12.0) == 2
    feats = F.context_features(np.where(m, 65.0, 30.0).astype(np.float32), m.astype(np.uint8), SPACING)
    assert feats["islands_near"] == 2.0 and feats["n_components"] == 4.0


def test_csf_bordered_blood_marks_blood_in_a_ventricle():
    hu = np.full((10, 80, 160), 32.0, np.float32)  # brain
    hu[:, 20:60, 100:140] = 5.0  # a ventricle (CSF)
    m = np.zeros(hu.shape, bool)
    m[3:7, 35:55, 105:135] = True  # blood layering in it
    m[3:7, 30:50, 20:50] = True  # a parenchymal bleed in brain
    hu[m] = 62.0
    f = F.context_features(hu, m.astype(np.uint8), SPACING)
    assert f["csf_bordered_max"] > 0.5
    assert f["csf_bordered_ml"] == pytest.approx(4 * 20 * 30 * 0.25 / 1000, rel=1e-6)  # the ventricle's blood only


def test_marker_score_fits_a_logistic_truth_and_round_trips(tmp_path):
    rng = np.random.default_rng(0)
    n = 600
    x = rng.normal(size=(n, 3))
    x[rng.random(n) < 0.05, 2] = np.nan  # missing values take the median
    logit = 1.5 * x[:, 0] - 1.0 * np.nan_to_num(x[:, 1]) - 0.5
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.int64)
    names = ["a", "b", "c"]
    score, oof = fit_marker_score(x, y, names, seed=1)
    from hexnode.train.metrics import auc

    assert auc(y, oof) > 0.75  # out-of-fold: close to the truth's own AUC
    assert auc(y, oof) < auc(y, score.apply(x)) + 0.02
    z = np.array(score.coef)
    assert z[0] > 0.5 and z[1] < -0.3 and abs(z[2]) < 0.3
    path = tmp_path / "markers.json"
    path.write_text(score.to_json())
    again = MarkerScore.load(path)
    row = {"a": 0.3, "b": -1.0}  # "c" missing
    assert again.logit(row) == pytest.approx(score.logit(row))
    bad = json.loads(path.read_text())
    bad["coef"] = bad["coef"][:2]
    path.write_text(json.dumps(bad))
    with pytest.raises(ValueError, match="coefficient"):
        MarkerScore.load(path)


def test_out_of_fold_booster_scores():
    from hexnode.train.fusion_train import out_of_fold_raw
    from hexnode.train.metrics import auc

    rng = np.random.default_rng(2)
    x = rng.normal(size=(200, 2))
    y = (x[:, 0] + rng.normal(0, 0.7, 200) > 0).astype(np.int64)
    oof = out_of_fold_raw(x, y, ["a", "b"], 60, seed=0)
    assert oof is not None and oof.shape == (200,)
    assert auc(y, oof) > 0.75  # every row scored by a booster that never saw it, still informative
    assert out_of_fold_raw(x[:8], np.array([0, 0, 0, 0, 0, 1, 1, 1]), ["a", "b"], 10) is None  # 3 positives < 5 folds


def test_post_processing_drops_small_blobs_far_from_the_hematoma_only():
    from hexnode.models.segment import PostProcessing, clean_mask

    shape, sp = (30, 200, 200), (0.5, 0.5, 1.0)
    voxel_ml = 0.5 * 0.5 * 1.0 / 1000
    main = _ellipsoid(shape, (15, 100, 60), (10, 10, 8), sp)
    satellite = _ellipsoid(shape, (15, 100, 60 + 32), (2.5, 2.5, 2.5), sp)  # a 3.5 mm gap to the main blob
    far_small = np.zeros(shape, bool)
    far_small[15, 30:40, 160:170] = True  # a one-slice blob 50 mm away, 0.025 ml
    far_large = _ellipsoid(shape, (15, 170, 170), (5, 5, 5), sp)  # ~0.5 ml, as far
    assert satellite.sum() * voxel_ml < 0.2 and far_small.sum() * voxel_ml < 0.2 < far_large.sum() * voxel_ml

    def run(pp):
        out = clean_mask(main | satellite | far_small | far_large, sp, pp).astype(bool)
        return [bool(out[m].all()) for m in (main, satellite, far_small, far_large)]

    assert run(PostProcessing()) == [True, True, False, True]
    assert run(PostProcessing(remote_min_ml=0.0)) == [True, True, True, True]  # model sets from before the rule
    assert run(PostProcessing(remote_reach_mm=3.0)) == [True, False, False, True]  # the reach is in mm
    # the smallest-lesion limit never touches a hematoma's satellites, only masks with nothing larger
    assert run(PostProcessing(min_lesion_ml=0.1)) == [True, True, False, True]


def test_islands_alone_below_the_smallest_lesion_are_no_hemorrhage():
    from hexnode.models.segment import PostProcessing, clean_mask

    shape, sp = (30, 200, 200), (0.5, 0.5, 1.0)
    voxel_ml = 0.5 * 0.5 * 1.0 / 1000
    a = _ellipsoid(shape, (10, 100, 60), (2.5, 2.5, 2.5), sp)
    b = _ellipsoid(shape, (20, 100, 140), (2.0, 2.0, 2.0), sp)
    assert 0.02 < b.sum() * voxel_ml < a.sum() * voxel_ml < 0.1

    def kept(pp, m):
        return int(clean_mask(m.copy(), sp, pp).sum())

    # the far-island rule off, so only the limit decides (b is 40 mm from a)
    assert kept(PostProcessing(remote_min_ml=0.0), a | b) == int((a | b).sum())  # no limit: both stay
    assert kept(PostProcessing(remote_min_ml=0.0, min_lesion_ml=0.1), a | b) == 0
    limit = float(a.sum() * voxel_ml) * 0.99  # a reaches it: the mask is kept, b with it
    assert kept(PostProcessing(remote_min_ml=0.0, min_lesion_ml=limit), a | b) == int((a | b).sum())


def test_plan_families_groups_by_image_type_and_keeps_only_needed_sigmas():
    plan = {family: (sigmas, classes) for family, sigmas, classes in F.plan_families(frozenset({
        "original_shape_Sphericity", "original_glszm_ZoneEntropy", "log-sigma-2-0-mm-3D_gldm_DependenceVariance",
        "log-sigma-5-0-mm-3D_glcm_Idmn", "wavelet-LLH_glrlm_RunEntropy", "volume_ml", "cnn_03"}))}
    assert set(plan) == {"Original", "LoG", "Wavelet"}
    assert plan["Original"] == ([], {"shape": {"Sphericity"}, "glszm": {"ZoneEntropy"}})
    assert plan["LoG"] == ([2.0, 5.0], {"gldm": {"DependenceVariance"}, "glcm": {"Idmn"}})
    assert plan["Wavelet"] == ([], {"glrlm": {"RunEntropy"}})
    with pytest.raises(ValueError, match="unknown image type"):
        F.plan_families(frozenset({"log-whatever_glcm_Idmn"}))


def test_only_the_boosters_features_are_computed_with_the_full_extractions_values():
    """Inference extracts the 60 features the committed booster reads (issue 21: feature cost bounded);
    each must equal, bit for bit, the value of the full ~1,300-feature extraction it was trained on."""
    from pathlib import Path

    from hexnode.synth.phantom import generate_case

    repo = Path(__file__).resolve().parents[2]
    manifest = json.loads((repo / "models" / "manifest.json").read_text())
    selected = manifest["preprocessing"]["features"]["radiomics_selected"]
    assert len(selected) >= 20
    case = generate_case(7, 4, n_slices=12)
    hu, mask = case.hu.astype(np.float32), case.mask > 0
    assert mask.sum() > 500
    full = F.RadiomicsExtractor(repo / "models" / "radiomics.yaml").extract(hu, mask, case.spacing)
    only = F.RadiomicsExtractor(repo / "models" / "radiomics.yaml", only=selected + ["volume_ml"]).extract(
        hu, mask, case.spacing)
    assert len(full) > 1000
    assert sorted(only) == sorted(selected)
    assert {k: only[k] for k in selected} == {k: full[k] for k in selected}
