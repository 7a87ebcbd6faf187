"""bench/realct.toml is well-formed: every real-scan case names its repository, commit, paths and
licence, and says what hexnode should say in the grammar bench/realct.py judges by. No scan is read
(CI has none); the bench itself runs where the repositories are. The Dice comparison with reference
masks is checked on a small series made here."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _bench():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("realct_bench", REPO / "bench" / "realct.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["realct_bench"] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    return module


bench = _bench()
CASES = bench.load_manifest()


def test_manifest_has_cases_with_unique_ids() -> None:
    ids = [c.id for c in CASES]
    assert len(ids) >= 10
    assert len(ids) == len(set(ids)), [i for i in ids if ids.count(i) > 1]
    assert all(re.fullmatch(r"[a-z0-9][a-z0-9-]*", i) for i in ids), ids


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_case_is_complete(case) -> None:  # type: ignore[no-untyped-def]
    assert re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", case.repository), case.repository
    assert re.fullmatch(r"[0-9a-f]{40}", case.commit), case.commit
    assert case.paths and all(p and not p.startswith("/") and ".." not in p.split("/") for p in case.paths)
    assert len(case.licence) >= 10 and len(case.what) >= 20 and case.vendor
    exp = bench.Expected.parse(case.expected)  # raises on anything outside the grammar
    if not exp.analysed:
        assert exp.reasons, "a refusal must name what it should say"
    assert set(case.derive) <= bench.DERIVE_KEYS
    if "add_from" in case.derive:
        assert case.derive["add_from"] in {c.id for c in CASES} - {case.id}
    if case.mask:
        assert case.mask.get("paths") and case.mask.get("format") in bench.MASK_FORMATS


def test_manifest_covers_what_the_issue_lists() -> None:
    """Refusals expected and analyses expected both present, and more than one vendor."""
    parsed = [bench.Expected.parse(c.expected) for c in CASES]
    assert any(e.analysed for e in parsed) and any(not e.analysed for e in parsed)
    vendors = {c.vendor.split()[0].upper() for c in CASES}
    assert len(vendors) >= 3, vendors


@pytest.mark.parametrize(
    ("text", "analysed", "hemorrhage", "ml_range", "reasons"),
    [
        ("analysed", True, None, None, ()),
        ("analysed, no hemorrhage", True, False, None, ()),
        ("analysed, hemorrhage", True, True, None, ()),
        ("analysed, hemorrhage 20-45 ml", True, True, (20.0, 45.0), ()),
        ("not analysed: phantom | no brain", False, None, None, ("phantom", "no brain")),
    ],
)
def test_expected_grammar(text, analysed, hemorrhage, ml_range, reasons) -> None:  # type: ignore[no-untyped-def]
    exp = bench.Expected.parse(text)
    assert (exp.analysed, exp.hemorrhage, exp.ml_range, exp.reasons) == (analysed, hemorrhage, ml_range, reasons)


@pytest.mark.parametrize("text", ["analysed, bleed", "not analysed", "not analysed: ", "analysed, hemorrhage 20 ml"])
def test_expected_grammar_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        bench.Expected.parse(text)


def test_judge_says_no_when_hexnode_said_otherwise() -> None:
    """The `ok` column: a refusal for the wrong reason is not a pass, a crash never is."""
    def judged(expected: str, outcome: str, ml: float | None = None) -> str:
        row = bench.Row("x", expected, outcome=outcome, volume_ml=ml)
        bench.judge(bench.Expected.parse(expected), row)
        return str(row.ok)

    assert judged("not analysed: phantom", "not analysed: dose report / screen capture") == "reason?"
    assert judged("not analysed: phantom", "analysed, hemorrhage", 7.8) == "NO"
    assert judged("not analysed: phantom", "not analysed: no brain tissue: phantom or not a patient") == "yes"
    assert judged("analysed, no hemorrhage", "error (rc 1): ValueError") == "NO"
    assert judged("analysed, hemorrhage 20-45 ml", "analysed, hemorrhage", 48.1) == "NO"
    assert judged("analysed, hemorrhage 20-45 ml", "analysed, hemorrhage", 34.0) == "yes"


def test_parse_output_reads_hexnode_run() -> None:
    row = bench.Row("x", "analysed")
    bench.parse_output("series: 1\nvolume: 0.0 ml (no hemorrhage detected)\nprobability of expansion: 0.010 "
                       "(threshold 0.286)\nrisk: Low\n", 0, "", row)
    assert (row.outcome, row.volume_ml, row.probability, row.risk) == ("analysed, no hemorrhage", 0.0, 0.01, "Low")
    row = bench.Row("x", "analysed")
    bench.parse_output("series: 1\nvolume: 0.0 ml (no hemorrhage detected)\nrisk: Not applicable\n", 0, "", row)
    assert row.risk == "Not applicable"
    row = bench.Row("x", "analysed")
    bench.parse_output("", 1, "Traceback ...\nValueError: bad\n", row)
    assert row.outcome == "error (rc 1): ValueError: bad"


# ---------------------------------------------------------------- Dice against reference masks

def _series(folder: Path, n: int = 4, size: int = 8):  # type: ignore[no-untyped-def]
    """n axial CT slices of size x size, 0.5 mm pixels, 2.5 mm apart, written to folder."""
    import numpy as np
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    out = []
    for k in range(n):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.Modality, ds.PatientID, ds.PatientName, ds.PatientSex = "CT", "X", "X^", "O"
        ds.PatientBirthDate = ds.StudyDate = ds.StudyTime = ds.AccessionNumber = ds.ReferringPhysicianName = ""
        ds.StudyID, ds.SeriesNumber, ds.InstanceNumber = "1", 1, k + 1
        ds.Manufacturer = "test"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.ImagePositionPatient = [0.0, 0.0, 2.5 * k]
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        ds.PixelSpacing, ds.SliceThickness = [0.5, 0.5], 2.5
        ds.Rows = ds.Columns = size
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope = 0, 1
        ds.PixelData = np.full((size, size), 40, np.int16).tobytes()
        ds.save_as(folder / f"{k:03d}.dcm", enforce_file_format=True)
        out.append(ds)
    return out


def _blob(n: int = 4, size: int = 8, shift: int = 0):  # type: ignore[no-untyped-def]
    import numpy as np

    m = np.zeros((n, size, size), bool)
    m[1:3, 2:5, 3 + shift:6 + shift] = True
    return m


def _write_seg(sources, mask, path: Path) -> None:  # type: ignore[no-untyped-def]
    import highdicom as hd
    from pydicom.sr.codedict import codes

    desc = hd.seg.SegmentDescription(
        segment_number=1, segment_label="Hemorrhage",
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Hemorrhage, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL)
    seg = hd.seg.Segmentation(
        source_images=sources, pixel_array=mask.astype("uint8"), segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[desc], series_instance_uid=hd.UID(), series_number=2, sop_instance_uid=hd.UID(),
        instance_number=1, manufacturer="test", manufacturer_model_name="test", software_versions="0",
        device_serial_number="0", omit_empty_frames=False)
    seg.save_as(path)


def _write_nifti(mask, path: Path, reverse_z: bool = False) -> None:  # type: ignore[no-untyped-def]
    """The mask as dcm2niix would write it: voxel (column, row, slice), RAS affine; optionally with
    the slice axis stored top-down, which only a world-coordinate lookup gets right."""
    import nibabel as nib
    import numpy as np

    data = mask.transpose(2, 1, 0).astype(np.uint8)
    affine = np.diag([-0.5, -0.5, 2.5, 1.0])
    if reverse_z:
        data = data[:, :, ::-1]
        affine[2, 2], affine[2, 3] = -2.5, 2.5 * (mask.shape[0] - 1)
    nib.save(nib.Nifti1Image(data, affine), str(path))


def test_dice_reads_seg_and_nifti_on_the_series_grid(tmp_path: Path) -> None:
    import numpy as np

    folder = tmp_path / "case"
    folder.mkdir()
    sources = _series(folder)
    uids = [str(ds.SOPInstanceUID) for ds in sources]
    slices = bench.series_slices(folder)
    assert set(slices) == set(uids)

    _write_seg(sources, _blob(), tmp_path / "ref.dcm")
    from_seg = bench.masks_from_seg(tmp_path / "ref.dcm")
    assert [int(from_seg[u].sum()) for u in uids] == [0, 9, 9, 0]
    for i, u in enumerate(uids):
        assert np.array_equal(from_seg[u], _blob()[i])

    for reverse in (False, True):
        _write_nifti(_blob(), tmp_path / "ref.nii.gz", reverse_z=reverse)
        from_nifti = bench.masks_from_nifti(tmp_path / "ref.nii.gz", slices)
        assert all(np.array_equal(from_nifti[u], _blob()[i]) for i, u in enumerate(uids)), reverse
        assert bench.dice(from_seg, from_nifti) == 1.0

    _write_nifti(_blob(shift=1), tmp_path / "shifted.nii.gz")
    shifted = bench.masks_from_nifti(tmp_path / "shifted.nii.gz", slices)
    assert bench.dice(from_seg, shifted) == pytest.approx(2 * 12 / 36)  # 6 of 9 pixels overlap on 2 slices
    assert bench.dice({}, {}) == 1.0 and bench.dice(from_seg, {}) == 0.0
    assert bench.mask_volume_ml(from_seg, slices) == pytest.approx(18 * 0.25 * 2.5 / 1000)


def test_compare_with_mask_reads_the_case_reference_and_hexnodes_seg(tmp_path: Path) -> None:
    cases = tmp_path / "cases"
    folder = cases / "bleed"
    folder.mkdir(parents=True)
    sources = _series(folder)
    (cases / "bleed.ref").mkdir()
    _write_nifti(_blob(), cases / "bleed.ref" / "mask.nii.gz")
    case = bench.Case(id="bleed", repository="a/b", commit="0" * 40, paths=["."], licence="test licence",
                      vendor="test", what="a made-up series for the test", expected="analysed, hemorrhage",
                      mask={"paths": ["mask.nii.gz"], "format": "nifti"})
    result = tmp_path / "result"
    assert bench.compare_with_mask(case, folder, result) == (None, pytest.approx(0.01125))
    (result / "case-0001").mkdir(parents=True)
    _write_seg(sources, _blob(shift=1), result / "case-0001" / "SEG.dcm")
    score, ref_ml = bench.compare_with_mask(case, folder, result)
    assert score == pytest.approx(2 / 3) and ref_ml == pytest.approx(0.01125)
