"""load_volume on small pydicom-made series: sorting, HU, geometry and every rejection reason."""

from __future__ import annotations

import random
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    MPEG2MPML,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    RLELossless,
    generate_uid,
)
from series_helpers import phantom, write_series

from hexnode.pipeline.load import load_volume
from hexnode.series.header import VolumeError


def test_sorted_by_position_not_file_order(tmp_path: Path) -> None:
    paths = write_series(tmp_path, n=12)
    # renumber in reverse and shuffle the file list: order must come from the positions
    for p in paths:
        ds = pydicom.dcmread(p)
        ds.InstanceNumber = 100 - int(ds.InstanceNumber)
        ds.save_as(p)
    shuffled = paths[:]
    random.Random(1).shuffle(shuffled)
    vol = load_volume(shuffled)
    assert vol.hu.dtype == np.float32 and vol.shape == (12, 64, 64)
    z = [float(h.ImagePositionPatient[2]) for h in vol.headers]
    assert z == sorted(z)
    assert vol.spacing == pytest.approx((3.5, 3.5, 5.0))
    expected = phantom(12, 64, 64)
    np.testing.assert_allclose(vol.hu, np.maximum(expected, -1024), atol=0.5)
    assert vol.tilt_deg == 0.0 and vol.notes == ()
    assert [p.name for p in vol.paths] == [f"{i:04d}.dcm" for i in range(12)]


def test_duplicate_sop_instance_is_kept_once(tmp_path: Path) -> None:
    paths = write_series(tmp_path / "a", n=10)
    copy = tmp_path / "copy.dcm"
    shutil.copy(paths[3], copy)
    vol = load_volume([*paths, copy])
    assert vol.shape[0] == 10


@pytest.mark.parametrize("tilt", [15.0, 25.0])
def test_gantry_tilt_analysed_with_normal_spacing(tmp_path: Path, tilt: float) -> None:
    # series_helpers leans the columns down towards the patient's back (the anterior side of the
    # slice higher, as a head CT tilted off the orbits): negative as DICOM and Philips sign it
    vol = load_volume(write_series(tmp_path, n=12, tilt_deg=tilt))
    assert vol.tilt_deg == pytest.approx(-tilt, abs=0.2)
    assert vol.spacing[2] == pytest.approx(5.0, abs=1e-3)  # along the normal, not the table
    assert any(n.startswith(f"gantry tilt -{tilt:.1f} degrees") for n in vol.notes)


@pytest.mark.parametrize("nominal,reported", [(-18.5, -18.5), (18.5, 18.5), (None, -18.5), (0.0, -18.5), (5.0, -18.5)])
def test_gantry_tilt_keeps_the_sign_the_scanner_gives(tmp_path: Path, nominal: float | None, reported: float) -> None:
    """The same geometry: Philips writes -18.5, GE +18.5 (both real). The header's sign is reported
    where its size agrees with the geometry; otherwise the geometry's own (DICOM) sign."""
    header = {} if nominal is None else {"GantryDetectorTilt": nominal}
    vol = load_volume(write_series(tmp_path, n=12, tilt_deg=18.5, **header))
    assert vol.tilt_deg == pytest.approx(reported, abs=0.05)
    assert any(n.startswith(f"gantry tilt {reported:.1f} degrees") for n in vol.notes)


@pytest.mark.parametrize(
    "syntax,signed,intercept",
    [(ImplicitVRLittleEndian, True, -1024.0), (ExplicitVRBigEndian, True, -1024.0),
     (ExplicitVRLittleEndian, False, -1024.0), (ExplicitVRLittleEndian, True, 0.0)],
)
def test_syntaxes_and_pixel_representations(tmp_path: Path, syntax: str, signed: bool, intercept: float) -> None:
    vol = load_volume(write_series(tmp_path, n=10, syntax=syntax, signed=signed, intercept=intercept))
    expected = np.maximum(phantom(10, 64, 64), -1024)
    np.testing.assert_allclose(vol.hu, expected, atol=0.5)


@pytest.mark.parametrize("padding,intercept", [(-2000, 0.0), (-3024 + 1024, -1024.0)])
def test_pixel_padding_becomes_air(tmp_path: Path, padding: int, intercept: float) -> None:
    vol = load_volume(write_series(tmp_path, n=10, padding=padding, intercept=intercept))
    assert float(vol.hu.min()) == -1024.0
    assert float(vol.hu.max()) == pytest.approx(1000.0, abs=0.5)  # the phantom's skull


def test_rle_compressed_is_decoded(tmp_path: Path) -> None:
    paths = write_series(tmp_path, n=10)
    for p in paths:
        ds = pydicom.dcmread(p)
        ds.compress(RLELossless, encoding_plugin="pydicom")
        ds.save_as(p)
    vol = load_volume(paths)
    np.testing.assert_allclose(vol.hu, np.maximum(phantom(10, 64, 64), -1024), atol=0.5)


def test_missing_decoder_is_a_clear_error(tmp_path: Path) -> None:
    paths = write_series(tmp_path, n=10)
    for p in paths:
        ds = pydicom.dcmread(p)
        ds.PixelData = encapsulate([b"\x00\x00\x01\xb3" + b"\x00" * 60])
        ds["PixelData"].VR = "OB"
        ds.file_meta.TransferSyntaxUID = MPEG2MPML
        ds.save_as(p)
    with pytest.raises(VolumeError, match="cannot decode pixel data in transfer syntax MPEG2"):
        load_volume(paths)


def test_non_square_and_256_matrices_kept_native(tmp_path: Path) -> None:
    vol = load_volume(write_series(tmp_path / "ns", n=10, rows=48, cols=64, pixel=0.7))
    assert vol.shape == (10, 48, 64) and vol.spacing[:2] == pytest.approx((0.7, 0.7))
    assert any("non-square" in n for n in vol.notes)
    vol = load_volume(write_series(tmp_path / "256", n=3, rows=256, cols=256, pixel=0.9))
    assert vol.shape == (3, 256, 256)


def _reject(paths: list[Path], match: str) -> None:
    with pytest.raises(VolumeError, match=match):
        load_volume(paths)


def test_rejections(tmp_path: Path) -> None:
    paths = write_series(tmp_path / "gap", n=12)
    _reject(paths[:5] + paths[7:], r"gap in slice positions: about 2 missing")
    _reject(write_series(tmp_path / "one", n=1), r"1 slice")

    paths = write_series(tmp_path / "dup", n=10)
    ds = pydicom.dcmread(paths[4])
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.save_as(tmp_path / "dup" / "extra.dcm")
    _reject([*paths, tmp_path / "dup" / "extra.dcm"], r"duplicate slice positions with different SOP Instance UIDs")

    paths = write_series(tmp_path / "orient", n=10)
    ds = pydicom.dcmread(paths[2])
    ds.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]
    ds.save_as(paths[2])
    _reject(paths, "mixed image orientations")

    a = write_series(tmp_path / "size", n=6, series_uid="1.2.3.4")
    b = write_series(tmp_path / "size2", n=2, rows=32, cols=32, series_uid="1.2.3.4")
    _reject(a + b, "mixed image sizes")

    paths = write_series(tmp_path / "for", n=10)
    ds = pydicom.dcmread(paths[3])
    ds.FrameOfReferenceUID = generate_uid()
    ds.save_as(paths[3])
    _reject(paths, "2 frames of reference in one series")

    bad = tmp_path / "notdicom.dcm"
    bad.write_bytes(b"hello, not DICOM")
    _reject([*a, bad], "unreadable DICOM file")
    empty = tmp_path / "empty.dcm"
    empty.write_bytes(b"")
    _reject([empty], "unreadable DICOM file")
    truncated = tmp_path / "trunc.dcm"
    truncated.write_bytes(a[0].read_bytes()[:300])
    _reject([truncated, *a[1:]], "unreadable DICOM file")

    ds = pydicom.dcmread(a[0])
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.4"  # MR
    ds.save_as(a[0])
    _reject(a, "not a CT image storage SOP class")


def test_more_than_2000_slices_rejected_before_pixels(tmp_path: Path) -> None:
    # the count check runs before any header or pixel data is read
    first = write_series(tmp_path, n=2, rows=16, cols=16)[0]
    paths = [first]
    for i in range(2000):
        paths.append(tmp_path / f"c{i}.dcm")
        shutil.copy(first, paths[-1])
    _reject(paths, "2001 slices: more than 2000")


def _enhanced(tmp_path: Path, n: int = 10, reverse: bool = True) -> tuple[Path, np.ndarray]:
    hu = phantom(n, 32, 32)
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2.1"
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality = "CT"
    ds.Rows, ds.Columns, ds.NumberOfFrames = 32, 32, n
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    shared = Dataset()
    o = Dataset()
    o.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    m = Dataset()
    m.PixelSpacing = [0.8, 0.8]
    m.SliceThickness = 5.0
    t = Dataset()
    t.RescaleIntercept, t.RescaleSlope, t.RescaleType = -1024, 1, "HU"
    shared.PlaneOrientationSequence = [o]
    shared.PixelMeasuresSequence = [m]
    shared.PixelValueTransformationSequence = [t]
    ds.SharedFunctionalGroupsSequence = [shared]
    order = list(range(n))[::-1] if reverse else list(range(n))
    frames = []
    for z in order:
        f = Dataset()
        p = Dataset()
        p.ImagePositionPatient = [0, 0, 5.0 * z]
        f.PlanePositionSequence = [p]
        frames.append(f)
    ds.PerFrameFunctionalGroupsSequence = frames
    ds.PixelData = np.stack([np.round(hu[z] + 1024).astype(np.int16) for z in order]).tobytes()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    path = tmp_path / "enhanced.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path, hu


def test_enhanced_ct_multiframe(tmp_path: Path) -> None:
    path, hu = _enhanced(tmp_path)
    vol = load_volume([path])
    assert vol.shape == (10, 32, 32) and vol.spacing == pytest.approx((0.8, 0.8, 5.0))
    np.testing.assert_allclose(vol.hu, np.maximum(hu, -1024), atol=0.5)
    assert vol.frames == list(range(10, 0, -1))  # frames were stored top-down
    assert len(vol.headers) == 1 and "PixelData" not in vol.headers[0]


def test_synthetic_tilted_head_ncct(tmp_path: Path) -> None:
    """hexnode.synth's realistic series (tilted 20°, shuffled files): geometry and HU round-trip."""
    from hexnode.synth.dicom import write_series as synth_series
    from hexnode.synth.phantom import generate_case

    case = generate_case(7, 3, tilt_deg=20.0)
    paths = synth_series(case, tmp_path)
    random.Random(0).shuffle(paths)
    vol = load_volume(paths)
    assert vol.shape == case.hu.shape
    assert vol.spacing == pytest.approx(case.spacing, rel=1e-4)
    assert vol.tilt_deg == pytest.approx(20.0, abs=0.2)
    np.testing.assert_array_equal(vol.hu, np.maximum(case.hu, -1024).astype(np.float32))
    assert [int(h.InstanceNumber) for h in vol.headers] == list(range(1, len(paths) + 1))


@pytest.mark.parametrize("syntax", ["1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.5",
                                    "1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.4.70"])
def test_compressed_syntaxes_decode_losslessly(tmp_path: Path, syntax: str) -> None:
    """JPEG-LS lossless, JPEG 2000 lossless, RLE, deflate; JPEG lossless (SV1) from a dcmtk peer."""
    paths = write_series(tmp_path / "src", n=10, signed=False)  # unsigned: every encoder takes it
    out = []
    for p in paths:
        q = tmp_path / "out" / p.name
        q.parent.mkdir(exist_ok=True)
        if syntax == "1.2.840.10008.1.2.4.70":
            subprocess.run(["/usr/bin/dcmcjpeg", "+e1", str(p), str(q)], check=True, capture_output=True)
        elif syntax == "1.2.840.10008.1.2.1.99":
            ds = pydicom.dcmread(p)
            ds.file_meta.TransferSyntaxUID = syntax
            ds.save_as(q, enforce_file_format=True)
        else:
            ds = pydicom.dcmread(p)
            ds.compress(syntax)
            ds.save_as(q)
        out.append(q)
    assert str(pydicom.dcmread(out[0], stop_before_pixels=True).file_meta.TransferSyntaxUID) == syntax
    vol = load_volume(out)
    np.testing.assert_allclose(vol.hu, np.maximum(phantom(10, 64, 64), -1024), atol=0.5)


# --- spacing as real scanners write it: overlaps, runs, partial gaps, two reconstructions ---------
def _restack(paths: list[Path], centres: list[float], thickness: list[float]) -> list[Path]:
    """Move each slice to its own position along z (the normal) with its own Slice Thickness."""
    for p, z, t in zip(paths, centres, thickness, strict=True):
        ds = pydicom.dcmread(p)
        ds.ImagePositionPatient = [-16.0, -16.0, z]
        ds.SliceLocation = z
        ds.SliceThickness = t
        ds.save_as(p)
    return paths


def _ge_4_and_7_mm() -> tuple[list[float], list[float]]:
    """GE's head protocol as the scanner writes it: 14 x 4 mm, then 14 x 7 mm whose first slice
    sits 1.08 mm above the last 4 mm one (its slab reaches 4.42 mm back into the 4 mm run)."""
    centres = [4.0 * i for i in range(14)]
    centres += [centres[-1] + 1.08 + 7.0 * i for i in range(14)]
    return centres, [4.0] * 14 + [7.0] * 14


def test_ge_overlapping_4_and_7_mm_runs_are_read_each_millimetre_once(tmp_path: Path) -> None:
    centres, thickness = _ge_4_and_7_mm()
    paths = _restack(write_series(tmp_path, n=28), centres, thickness)
    random.Random(2).shuffle(paths)
    vol = load_volume(paths)
    assert vol.shape[0] == 28
    assert [float(h.ImagePositionPatient[2]) for h in vol.headers] == pytest.approx(centres)
    assert vol.extents is not None
    # inside each run a slice owns its thickness; at the change the boundary is the midpoint of
    # the two centres (inside the part both slabs cover): 2.54 mm for the last 4 mm slice, 4.04 for the first 7 mm
    np.testing.assert_allclose(vol.extents, [4.0] * 13 + [2.54, 4.04] + [7.0] * 13, atol=1e-9)
    covered = (centres[-1] + 3.5) - (centres[0] - 2.0)  # from the bottom of the first slab to the top of the last
    assert sum(vol.extents) == pytest.approx(covered)
    assert vol.spacing[2] == pytest.approx(covered / 28)
    assert "slices overlap along the slice normal at 1 place (step 1.08 mm): each part of the head counted once " \
           "for the volume" in vol.notes
    assert "slice thickness 4 mm (14 slices) and 7 mm (14 slices)" in vol.notes


def test_an_overlapping_slice_anywhere_is_read(tmp_path: Path) -> None:
    """One more 5 mm slice 3 mm above another (a second range that overlaps the first): read, and
    the stretch it shares with its neighbours counted once."""
    centres = [5.0 * i for i in range(12)]
    centres = sorted([*centres, 23.0])
    paths = _restack(write_series(tmp_path, n=13), centres, [5.0] * 13)
    vol = load_volume(paths)
    assert vol.extents is not None and sum(vol.extents) == pytest.approx(60.0)  # 12 slabs of 5 mm, once
    assert any(n.startswith("slices overlap along the slice normal at 2 places (step 3.00, 2.00 mm)") for n in vol.notes)
    assert not any(n.startswith("slice thickness") for n in vol.notes)  # one thickness: nothing to say


def test_slice_extents_rule() -> None:
    from hexnode.pipeline.load import slice_extents

    # contiguous runs of 4 then 7 mm: each slice exactly its own thickness
    assert slice_extents([0, 4, 8, 13.5, 20.5], [4, 4, 4, 7, 7]) == pytest.approx((4, 4, 4.0, 7.0, 7))
    # thick slices every half thickness (overlapping reconstruction): the step each
    assert slice_extents([0, 2.5, 5, 7.5], [5, 5, 5, 5]) == pytest.approx((2.5, 2.5, 2.5, 2.5))
    # thin slices with gaps between them: the step each (what the slabs leave out is interpolated)
    assert slice_extents([0, 5, 10], [2, 2, 2]) == pytest.approx((5, 5, 5))
    # no thickness known: the midpoints
    assert slice_extents([0, 4, 8, 9.08, 16.08], [np.nan] * 5) == pytest.approx((4, 4, 2.54, 4.04, 7))


def test_partial_gap_and_mixed_reconstructions_are_refused_with_what_was_seen(tmp_path: Path) -> None:
    centres = [5.0 * i for i in range(12)]
    centres[6:] = [c + 1.5 for c in centres[6:]]  # one step of 6.5 mm: 1.5 mm of the head never imaged
    paths = _restack(write_series(tmp_path / "gap", n=12), centres, [5.0] * 12)
    _reject(paths, r"inconsistent slice spacing \(a step of 6\.50 mm where 5\.00 mm is expected")
    # the same positions twice, from a soft and a bone reconstruction
    soft = write_series(tmp_path / "mixed", n=10, ConvolutionKernel="H30s")
    series_uid = str(pydicom.dcmread(soft[0]).SeriesInstanceUID)
    frame = str(pydicom.dcmread(soft[0]).FrameOfReferenceUID)
    bone = write_series(tmp_path / "mixed2", n=10, ConvolutionKernel="H70h", series_uid=series_uid,
                        FrameOfReferenceUID=frame)
    _reject([*soft, *bone], r"duplicate slice positions with different SOP Instance UIDs \(10 positions\): two "
                            r"reconstructions or acquisitions mixed in one series; they differ in ConvolutionKernel "
                            r"\(H30s / H70h\)$")


def test_instance_numbers_missing_or_repeated_and_rescale_per_slice(tmp_path: Path) -> None:
    """Exports drop or repeat Instance Number, and scanners set Rescale Slope/Intercept per slice."""
    paths = write_series(tmp_path, n=10)
    expected = np.maximum(phantom(10, 64, 64), -1024)
    for i, p in enumerate(paths):
        ds = pydicom.dcmread(p)
        if i % 3 == 0:
            del ds.InstanceNumber
        else:
            ds.InstanceNumber = 1
        slope, intercept = (0.5, -1000.0) if i % 2 else (2.0, -3000.0)
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
        ds.PixelData = np.round((phantom(10, 64, 64)[i] - intercept) / slope).astype(np.int16).tobytes()
        ds.save_as(p)
    vol = load_volume(paths[::-1])
    np.testing.assert_allclose(vol.hu, expected, atol=1.0)
    from hexnode.pipeline.run import headers_of

    assert len(headers_of(paths)) == 10  # the not-analysed path orders them too


def test_small_jitter_in_positions_is_one_spacing(tmp_path: Path) -> None:
    """Scanners round positions (and some jitter by a few hundredths of a mm): still one spacing."""
    rng = np.random.default_rng(5)
    centres = [5.0 * i + float(rng.uniform(-0.05, 0.05)) for i in range(12)]
    vol = load_volume(_restack(write_series(tmp_path, n=12), centres, [5.0] * 12))
    assert vol.extents is None and vol.spacing[2] == pytest.approx(5.0, abs=0.05)
    assert not any("overlap" in n for n in vol.notes)
