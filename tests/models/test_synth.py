"""The synthetic head-NCCT generator: DICOM validity (real dciodvfy), tissue HU measured on the written
files, mask/volume/affine consistency, determinism, the generative HE model, calcifications, tilt.

Budget: about 30-60 s on a loaded 2-core machine (two generated series, one of them short).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from scipy import ndimage

from hexnode.synth import hemodel
from hexnode.synth.cli import run_synth
from hexnode.synth.dicom import write_case
from hexnode.synth.phantom import LABELS, Case, bayes_auc, generate_case

DCIODVFY = shutil.which("dciodvfy") or "/usr/bin/dciodvfy"


@pytest.fixture(scope="module")
def straight(tmp_path_factory: pytest.TempPathFactory) -> tuple[Case, Path, list[Path]]:
    """A full-length untilted series written with explicit VR."""
    case = generate_case(11, 0, with_labels=True)
    d = tmp_path_factory.mktemp("synth-explicit")
    return case, d, write_case(case, d, transfer_syntax="explicit")


@pytest.fixture(scope="module")
def tilted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Case, Path, list[Path]]:
    """A short 20-degree tilted series written with implicit VR."""
    case = generate_case(12, 1, tilt_deg=20.0, n_slices=10)
    d = tmp_path_factory.mktemp("synth-implicit")
    return case, d, write_case(case, d, transfer_syntax="implicit")


def _read_hu(paths: list[Path]) -> tuple[np.ndarray, list[pydicom.Dataset]]:
    dss = [pydicom.dcmread(p) for p in paths]
    hu = np.stack([ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
                   for ds in dss])
    return hu, dss


def _dciodvfy_errors(paths: list[Path]) -> dict[str, list[str]]:
    bad: dict[str, list[str]] = {}
    for p in paths:
        r = subprocess.run([DCIODVFY, str(p)], capture_output=True, text=True, timeout=60)
        out = r.stdout + r.stderr
        assert "CTImage" in out, f"dciodvfy did not recognise {p.name}: {out[:300]}"
        errors = [ln for ln in out.splitlines() if ln.startswith("Error")]
        if errors:
            bad[p.name] = errors
    return bad


@pytest.mark.skipif(not Path(DCIODVFY).exists(), reason="dicom3tools (dciodvfy) not installed")
def test_dciodvfy_zero_errors_explicit(straight: tuple[Case, Path, list[Path]]) -> None:
    case, _, paths = straight
    assert len(paths) == case.truth.n_slices and 20 <= len(paths) <= 40
    assert _dciodvfy_errors(paths) == {}


@pytest.mark.skipif(not Path(DCIODVFY).exists(), reason="dicom3tools (dciodvfy) not installed")
def test_dciodvfy_zero_errors_implicit_tilted(tilted: tuple[Case, Path, list[Path]]) -> None:
    _, _, paths = tilted
    assert pydicom.dcmread(paths[0]).file_meta.TransferSyntaxUID == pydicom.uid.ImplicitVRLittleEndian
    assert _dciodvfy_errors(paths) == {}


def test_headers_are_realistic_and_truth_stays_outside(straight: tuple[Case, Path, list[Path]]) -> None:
    case, d, paths = straight
    ds = pydicom.dcmread(paths[0])
    assert ds.SOPClassUID == pydicom.uid.CTImageStorage
    assert list(ds.ImageType) == ["ORIGINAL", "PRIMARY", "AXIAL"]
    assert ds.Modality == "CT" and ds.BodyPartExamined == "HEAD" and ds.Manufacturer == "hexnode-synth"
    assert ds.StudyDescription == "CT HEAD WO CONTRAST"
    assert str(ds.PatientName).startswith("SYNTH^") and ds.PatientID == "SYN-11-0"
    assert float(ds.SliceThickness) == 5.0 and float(ds.KVP) > 0 and ds.ConvolutionKernel
    assert 0.4 <= float(ds.PixelSpacing[0]) <= 0.5 and ds.Rows == ds.Columns == 512
    assert int(ds.ImagesInAcquisition) == len(paths)
    uids = {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in paths}
    assert len(uids) == len(paths)
    assert sorted(x.name for x in d.iterdir()) == ["mask.nii.gz", "series", "truth.json"]
    raw = b"".join(p.read_bytes() for p in paths)
    assert b"he_probability" not in raw and b"followup" not in raw


def test_tissue_hu_and_noise_on_written_dicom(straight: tuple[Case, Path, list[Path]]) -> None:
    case, _, paths = straight
    hu, _ = _read_hu(paths)
    labels = case.labels
    assert labels is not None
    means = {}
    for name in ("grey", "white", "csf", "bone"):
        sel = labels == LABELS[name]
        assert sel.sum() > 2000, name
        means[name] = float(hu[sel].mean())
    assert 35.0 <= means["grey"] <= 40.0
    assert 25.0 <= means["white"] <= 30.0
    assert 0.0 <= means["csf"] <= 10.0
    assert 700.0 <= means["bone"] <= 1500.0
    assert means["grey"] - means["white"] >= 5.0
    # noise: sd of pure white matter (white is homogeneous up to a faint texture)
    noise = float(hu[labels == LABELS["white"]].std())
    assert 3.0 <= noise <= 8.0
    assert noise == pytest.approx(case.truth.noise_sd, abs=1.0)
    # the noise is spatially correlated (CT grain), not white
    white = labels == LABELS["white"]
    pairs = white[:, :, :-1] & white[:, :, 1:]
    a = hu[:, :, :-1][pairs] - means["white"]
    b = hu[:, :, 1:][pairs] - means["white"]
    assert float(np.corrcoef(a, b)[0, 1]) > 0.3
    # air outside the head, skull base bone on the lowest slices
    assert float(np.median(hu[labels == LABELS["outside"]])) < -900
    low = range(min(8, len(paths)))
    mid = len(paths) // 2 + 2
    assert max(float((hu[k] > 300).mean()) for k in low) > 1.5 * float((hu[mid] > 300).mean())

    def enclosed_air(k: int) -> int:  # sinuses, mastoid cells: air inside the head outline
        body = ndimage.binary_fill_holes(ndimage.binary_closing(hu[k] > -300, iterations=3))
        return int((body & (hu[k] < -500)).sum())

    assert max(enclosed_air(k) for k in low) > 500 and enclosed_air(mid) < 50


def test_mask_volume_and_affine_match_dicom(straight: tuple[Case, Path, list[Path]]) -> None:
    case, d, paths = straight
    img = nib.load(str(d / "mask.nii.gz"))
    mask = np.asarray(img.dataobj).transpose(2, 1, 0)
    assert np.array_equal(mask, case.mask) and mask.any()
    dss = [pydicom.dcmread(p, stop_before_pixels=True) for p in paths]
    sx, sy = (float(x) for x in dss[0].PixelSpacing)
    pos = np.array([[float(x) for x in ds.ImagePositionPatient] for ds in dss])
    iop = np.array([float(x) for x in dss[0].ImageOrientationPatient])
    normal = np.cross(iop[:3], iop[3:])
    sz = float(np.diff(pos @ normal).mean())
    volume = float(mask.sum()) * sx * sy * sz / 1000.0
    assert volume == pytest.approx(case.truth.volume_ml, rel=0.01)
    ras = img.affine
    for k in (0, len(paths) - 1):
        lps = ras @ np.array([0.0, 0.0, k, 1.0])
        assert np.allclose(lps[:3] * [-1, -1, 1], pos[k], atol=1e-3)


def test_hematoma_density(straight: tuple[Case, Path, list[Path]]) -> None:
    case, _, paths = straight
    hu, _ = _read_hu(paths)
    labels = case.labels
    assert labels is not None
    t = case.truth
    assert 50.0 <= t.hematoma_hu <= 80.0 and 30.0 <= t.hypodense_hu <= 45.0 and 15 <= t.oedema_hu <= 25
    core = ndimage.binary_erosion(labels == LABELS["blood"], structure=np.ones((1, 5, 5), bool))
    assert core.sum() > 200
    smooth = ndimage.uniform_filter(hu, size=(1, 3, 3))
    assert 50.0 <= float(hu[core].mean()) <= 80.0
    inside = (smooth[core] >= 50.0 - 2 * t.noise_sd) & (smooth[core] <= 80.0 + 2 * t.noise_sd)
    assert inside.mean() > 0.97
    hypo = ndimage.binary_erosion(labels == LABELS["hypodense_blood"], structure=np.ones((1, 5, 5), bool))
    if t.markers["hypodense_fraction"] > 0.02:
        assert hypo.sum() > 50 and 30.0 <= float(hu[hypo].mean()) <= 45.0
    # the mask holds blood only: no bone, air or calcification
    assert float(hu[case.mask.astype(bool)].min()) > -100 and float(hu[case.mask.astype(bool)].max()) < 200


def test_calcifications_present_and_outside_mask(straight: tuple[Case, Path, list[Path]]) -> None:
    case, _, paths = straight
    hu, _ = _read_hu(paths)
    calcs = case.truth.calcifications
    assert calcs, "fixture case must carry physiological calcifications"
    peaks = []
    for c in calcs:
        k, y, x = c["voxel"]
        assert 80 <= c["hu"] <= 400
        ys, xs = slice(max(0, round(y) - 6), round(y) + 7), slice(max(0, round(x) - 6), round(x) + 7)
        ks = sorted({min(max(math.floor(k), 0), len(paths) - 1), min(max(math.ceil(k), 0), len(paths) - 1)})
        for kk in ks:
            assert not case.mask[kk, ys, xs].any(), c
        peak = max(float(hu[kk, ys, xs].max()) for kk in ks)
        background = float(np.median(hu[ks[0], ys, xs]))
        assert peak - background >= 15.0, c  # visible even when a 5 mm slice averages it
        peaks.append(peak)
    assert max(peaks) >= 100.0


def test_same_seed_identical_different_seed_differs() -> None:
    a = generate_case(5, 2, n_slices=4)
    b = generate_case(5, 2, n_slices=4)
    c = generate_case(6, 2, n_slices=4)
    assert a.hu.tobytes() == b.hu.tobytes() and a.mask.tobytes() == b.mask.tobytes()
    assert a.truth == b.truth
    assert a.hu.shape != c.hu.shape or a.hu.tobytes() != c.hu.tobytes()


def test_written_pixel_data_is_deterministic(tmp_path: Path) -> None:
    a = write_case(generate_case(5, 3, n_slices=3), tmp_path / "a")
    b = write_case(generate_case(5, 3, n_slices=3), tmp_path / "b")
    for pa, pb in zip(a, b, strict=True):
        da, db = pydicom.dcmread(pa), pydicom.dcmread(pb)
        assert da.PixelData == db.PixelData and da.SOPInstanceUID == db.SOPInstanceUID


def test_bayes_ceiling_and_prevalence() -> None:
    prevalence, auc = bayes_auc(20000, 0)
    assert 0.22 <= prevalence <= 0.30
    assert 0.88 <= auc <= 0.92


def test_truth_probability_is_the_documented_formula(straight: tuple[Case, Path, list[Path]]) -> None:
    t = straight[0].truth
    m = t.markers
    x = {
        "log_volume": math.log(m["volume_ml"] / 15.0), "irregularity": m["irregularity"] / 0.1,
        "hypodense_fraction": m["hypodense_fraction"] / 0.1, "blend": m["blend"], "islands": m["islands"],
        "ivh": m["ivh"], "oedema_mm": m["oedema_mm"] - 3.0,
    }
    logit = hemodel.B0 + sum(hemodel.BETA[k] * v for k, v in x.items())
    assert t.he_probability == pytest.approx(1 / (1 + math.exp(-logit)))
    assert m["volume_ml"] == pytest.approx(t.volume_ml)
    growth = t.followup_volume_ml - t.volume_ml
    assert t.he_label == (growth > 6.0 or growth > 0.33 * t.volume_ml)


def test_followup_consistent_with_label() -> None:
    rng = np.random.default_rng(0)
    for _ in range(2000):
        v = float(rng.uniform(0.5, 120))
        label = bool(rng.random() < 0.5)
        g = hemodel.draw_followup(rng, v, label) - v
        assert label == (g > 6.0 or g > 0.33 * v)


def test_tilt_geometry(tilted: tuple[Case, Path, list[Path]]) -> None:
    case, d, paths = tilted
    dss = [pydicom.dcmread(p, stop_before_pixels=True) for p in paths]
    iop = np.array([float(x) for x in dss[0].ImageOrientationPatient])
    t = math.radians(20.0)
    assert np.allclose(iop, [1, 0, 0, 0, math.cos(t), math.sin(t)], atol=1e-5)
    assert float(dss[0].GantryDetectorTilt) == pytest.approx(20.0)
    assert all(list(ds.ImageOrientationPatient) == list(dss[0].ImageOrientationPatient) for ds in dss)
    pos = np.array([[float(x) for x in ds.ImagePositionPatient] for ds in dss])
    steps = np.diff(pos, axis=0)
    assert np.allclose(steps[:, :2], 0.0, atol=1e-4)  # the table moves along z only: sheared stack
    normal = np.cross(iop[:3], iop[3:])
    proj = np.diff(pos @ normal)
    assert np.allclose(proj, proj[0], atol=1e-4)  # equally spaced along the normal
    assert proj[0] == pytest.approx(case.spacing[2], rel=1e-5)
    assert case.spacing[2] == pytest.approx(5.0 * math.cos(t), rel=1e-6)
    assert case.truth.tilt_deg == 20.0
    affine = nib.load(str(d / "mask.nii.gz")).affine
    for k in range(len(paths)):
        assert np.allclose((affine @ [0, 0, k, 1])[:3] * [-1, -1, 1], pos[k], atol=1e-3)
    vol = float(case.mask.sum()) * case.spacing[0] * case.spacing[1] * case.spacing[2] / 1000
    assert vol == pytest.approx(case.truth.volume_ml, rel=1e-6) and vol > 0


def test_hard_cases_record_what_they_carry() -> None:
    seen: dict[str, bool] = {}
    for i in range(3):
        case = generate_case(21, i, hard=True, n_slices=4)
        h = case.truth.hard
        assert any(h.values())
        if h["small"]:
            assert 0.0 < case.truth.volume_ml < 3.0
        seen.update({k: seen.get(k, False) or v for k, v in h.items()})
    assert any(seen.values())


def test_cli_bayes_prints_formula(capsys: pytest.CaptureFixture[str]) -> None:
    rc = run_synth(argparse.Namespace(bayes_auc=True, draws=3000, seed=1))
    out = capsys.readouterr().out
    assert rc == 0 and "bayes_auc=" in out and "prevalence=" in out
    for k, b in hemodel.BETA.items():
        assert k in out and f"{b:+.2f}" in out


def test_thin_series_geometry() -> None:
    from hexnode.synth.anatomy import Head
    from hexnode.synth.draw import rng_for as _rng
    from hexnode.synth.scanner import draw_geometry as _draw_geometry

    head = Head.draw(_rng(0, 0, 1))
    for i in range(40):
        geo = _draw_geometry(_rng(0, i, 2), thin=True, tilt_deg=0.0, head=head)
        assert 200 <= geo.n_slices <= 300
        assert 0.625 <= geo.slice_thickness_mm <= 1.25 and geo.table_step_mm <= geo.slice_thickness_mm
        geo = _draw_geometry(_rng(0, i, 2), thin=False, tilt_deg=0.0, head=head)
        assert 20 <= geo.n_slices <= 40 and geo.slice_thickness_mm == 5.0
    case = generate_case(8, 0, thin=True, n_slices=12)
    assert case.hu.shape == (12, 512, 512) and case.spacing[2] <= 1.25 and case.mask.any()


def test_every_stack_covers_the_brain_and_a_posterior_fossa_bleed() -> None:
    case = generate_case(79, 5)  # the old 23-slice stack from the vertex stopped above this cerebellar bleed
    assert case.truth.location == "cerebellar" and case.truth.n_slices >= 29
    assert case.mask.any() and case.truth.volume_ml > 1.0
    # from above the vertex to below the posterior fossa's floor (w = -58 mm in the head frame)
    assert case.geometry.slice_w(0) < -60.0
    k = np.flatnonzero(case.mask.any(axis=(1, 2)))
    assert k.min() > 0 and k.max() < case.truth.n_slices - 1  # the whole bleed is inside the stack


def test_calcification_inside_an_intraventricular_cast_stays_visible() -> None:
    # seed 2 / case 339: a primary intraventricular bleed whose cast covers a calcified choroid plexus.
    # The mask leaves the calcification out, so the image must show calcium there, not blood
    # (before, the cast was painted over it: a 54 HU "hole" in the mask that looked like blood).
    case = generate_case(2, 339)
    assert case.truth.location == "intraventricular"
    assert any(c["kind"] == "choroid_plexus" for c in case.truth.calcifications)
    mask = case.mask.astype(bool)
    holes = np.stack([ndimage.binary_fill_holes(s) for s in mask]) & ~mask
    assert holes.sum() > 50
    assert float(np.median(case.hu[holes])) >= case.truth.hematoma_hu + 10.0


def test_mixed_thickness_series_as_ge_writes_it(tmp_path: Path) -> None:
    from hexnode.pipeline.load import load_volume

    case = generate_case(81, 0, mixed=((4.0, 14), (7.0, 14)), tilt_deg=18.5)
    assert case.hu.shape[0] == 28 and case.truth.thickness_runs == [[4.0, 14], [7.0, 14]]
    ext = case.geometry.extents_mm()
    per_slice = case.mask.reshape(28, -1).sum(axis=1)
    sx, sy, _ = case.spacing
    assert case.truth.volume_ml == pytest.approx(float(np.dot(per_slice, ext)) * sx * sy / 1000.0)
    paths = write_case(case, tmp_path / "c")
    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in sorted(paths, key=lambda p: p.name)]
    assert [float(h.SliceThickness) for h in headers] == [4.0] * 14 + [7.0] * 14
    assert all(list(h.ImageType)[-1] == "ADD" for h in headers[:14])
    assert all("ADD" not in list(h.ImageType) for h in headers[14:])
    z = np.array([float(h.ImagePositionPatient[2]) for h in headers])
    np.testing.assert_allclose(np.diff(z), [4.0] * 13 + [5.5] + [7.0] * 13, atol=1e-3)  # along the table
    vol = load_volume(paths)
    assert vol.extents is not None
    np.testing.assert_allclose(vol.extents, ext, atol=1e-3)
    assert "slice thickness 4 mm (14 slices) and 7 mm (14 slices)" in vol.notes
    assert any(n.startswith("gantry tilt 18.5 degrees") for n in vol.notes)
    # a missing slice inside either run is still a gap
    from hexnode.series.header import VolumeError

    ordered = sorted(paths, key=lambda p: p.name)
    for missing, step in ((5, 4.0), (20, 7.0)):
        with pytest.raises(VolumeError, match=r"gap in slice positions: about 1 missing slices") as err:
            load_volume([p for i, p in enumerate(ordered) if i != missing])
        normal_step = step * math.cos(math.radians(18.5))
        assert f"expected {normal_step:.2f} mm" in err.value.reason


def test_ge_overlapping_runs_negative_tilt_and_bare_headers_as_real_exports_write_them(tmp_path: Path) -> None:
    """`hexnode synth --mixed 4x14,7x14 --run-overlap 4.42 --tilt -18.5 --vendor ge --no-body-part
    --no-frame-of-reference`: the quirks of real exports, each read as the node must read it."""
    from hexnode.pipeline.load import load_volume
    from hexnode.series.info import SeriesInfo
    from hexnode.series.rules import HEAD_NOT_IN_HEADER
    from hexnode.series.select import Selector

    ns = argparse.Namespace(bayes_auc=False, out=str(tmp_path), n=1, seed=81, thin=False, hard=False, tilt=-18.5,
                            normal=False, mixed="4x14,7x14", run_overlap=4.42, followup=False,
                            transfer_syntax="explicit", vendor="ge", no_body_part=True, no_frame_of_reference=True)
    assert run_synth(ns) == 0
    case_dir = tmp_path / "case-0000"
    paths = sorted((case_dir / "series").glob("*.dcm"))
    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in paths]
    for h in headers:
        assert h.Manufacturer == "GE MEDICAL SYSTEMS" and h.ConvolutionKernel == "STANDARD"
        assert float(h.GantryDetectorTilt) == -18.5
        for keyword in ("BodyPartExamined", "SeriesDescription", "StudyDescription", "ProtocolName",
                        "FrameOfReferenceUID", "PositionReferenceIndicator"):
            assert keyword not in h, keyword
    truth = json.loads((case_dir / "truth.json").read_text())
    assert truth["thickness_runs"] == [[4.0, 14], [7.0, 14, 4.42]]
    c = math.cos(math.radians(18.5))
    iop = np.array([float(v) for v in headers[0].ImageOrientationPatient])
    normal = np.cross(iop[:3], iop[3:])
    d = np.array([np.dot([float(v) for v in h.ImagePositionPatient], normal) for h in headers])
    np.testing.assert_allclose(np.diff(d), [4.0 * c] * 13 + [(5.5 - 4.42) * c] + [7.0 * c] * 13, atol=1e-3)
    vol = load_volume(paths)
    assert vol.extents is not None
    assert any(n.startswith("slices overlap along the slice normal at 1 place (step 1.02 mm)") for n in vol.notes)
    assert any(n.startswith("gantry tilt -18.5 degrees") for n in vol.notes)
    assert "slice thickness 4 mm (14 slices) and 7 mm (14 slices)" in vol.notes
    # the truth's volume uses the loader's rule: the mask slice by slice, each with its own extent
    mask = np.asarray(nib.load(str(case_dir / "mask.nii.gz")).dataobj).transpose(2, 1, 0)
    sx, sy, _ = vol.spacing
    assert float(np.dot(mask.reshape(28, -1).sum(axis=1), vol.extents)) * sx * sy / 1000.0 == \
        pytest.approx(truth["volume_ml"], rel=1e-6)
    # route: nothing says head, nothing says another body part: passes, the report told so
    selector = Selector.from_config({})
    info = SeriesInfo(str(headers[14].SeriesInstanceUID), headers[14], len(headers))
    assert selector.decide(info).accepted
    assert selector.choose([info]).note.endswith(HEAD_NOT_IN_HEADER)


def test_normal_head_has_no_blood_and_no_expansion() -> None:
    case = generate_case(82, 3, normal=True)
    assert not case.mask.any() and case.truth.volume_ml == 0.0
    assert case.truth.normal and case.truth.he_label is False and case.truth.he_probability == 0.0
    assert case.truth.location == "none"
    json.dumps(case.truth.to_json(), allow_nan=False)  # truth.json stays strict JSON
    # the same head as the case with a bleed: only the blood differs
    bleed = generate_case(82, 3)
    assert bleed.mask.any() and bleed.hu.shape[1:] == case.hu.shape[1:]
