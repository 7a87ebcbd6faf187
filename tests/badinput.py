"""Manufacture the bad (and awkward-but-valid) inputs a hospital node meets, one function per kind.

Every function writes files under `out` and returns their paths. Series are small (64², 12
slices of 5 mm: select wants >= 10) so that the whole bad-input suite stays fast; the pixel
content is the series_helpers phantom (brain ellipse with a 60 HU blob) unless said otherwise.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    generate_uid,
)
from series_helpers import base_header, phantom, write_series

N = 12
SIZE = 64
ENHANCED_CT = "1.2.840.10008.5.1.4.1.1.2.1"
MISSING_DECODER_TS = "1.2.840.10008.1.2.4.92"  # JPEG 2000 Part 2 multi-component: no decoder here
MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4"
RT_DOSE = "1.2.840.10008.5.1.4.1.1.481.2"
COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.33"


def good(out: Path, **kw: Any) -> list[Path]:
    """An analysable head NCCT series (the control that must be unaffected by its neighbours)."""
    return write_series(out, n=kw.pop("n", N), rows=kw.pop("rows", SIZE), cols=kw.pop("cols", SIZE), **kw)


# --- files that are not (whole) DICOM -------------------------------------------------------------

def zero_byte(out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    p = out / "empty.dcm"
    p.write_bytes(b"")
    return p


def truncated(src: Path, out: Path, keep: float) -> Path:
    """`src` cut after `keep` (fraction) of its bytes: inside the header or inside the pixel data."""
    out.mkdir(parents=True, exist_ok=True)
    data = src.read_bytes()
    p = out / f"truncated-{int(keep * 100)}.dcm"
    p.write_bytes(data[: int(len(data) * keep)])
    return p


def not_dicom(out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    txt = out / "README.txt"
    txt.write_text("exported by a viewer; not an image\n")
    png = out / "screenshot.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(256))
    return [txt, png]


def _meta(sop_class: str, sop_uid: str, syntax: str = ExplicitVRLittleEndian) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = syntax
    return meta


def wire_payload(out: Path, name: str, payload: bytes) -> Path:
    """A Part 10 file whose dataset bytes are `payload`: what pynetdicom sends as the C-STORE data
    set when given a file path (it never parses the dataset), so the SCP receives exactly these."""
    from pydicom.filewriter import write_file_meta_info

    out.mkdir(parents=True, exist_ok=True)
    p = out / f"{name}.dcm"
    with open(p, "wb") as f:
        f.write(b"\x00" * 128 + b"DICM")
        write_file_meta_info(f, _meta(CTImageStorage, generate_uid()), enforce_standard=True)  # type: ignore[arg-type]
        f.write(payload)
    return p


def header_bytes(ds_path: Path) -> bytes:
    """The dataset bytes of a Part 10 file (everything after the file meta)."""
    from pydicom.filereader import _read_file_meta_info, read_preamble

    with open(ds_path, "rb") as f:
        read_preamble(f, False)
        _read_file_meta_info(f)
        return f.read()


# --- wrong SOP classes ----------------------------------------------------------------------------

def wrong_sop(out: Path, sop_class: str, modality: str, n: int = 3) -> list[Path]:
    from plumbing_helpers import write_ct

    return write_ct(out, n, size=32, sop_class=sop_class, modality=modality)


# --- series-level problems ------------------------------------------------------------------------

def localizer(out: Path) -> list[Path]:
    return good(out, n=1, ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"], SeriesDescription="Topogram 0.6 T20s")


def cta(out: Path) -> list[Path]:
    return good(out, ContrastBolusAgent="Iohexol 350", SeriesDescription="Head 5mm post contrast")


def bone_kernel(out: Path) -> list[Path]:
    return good(out, ConvolutionKernel="H70h", SeriesDescription="Head 5mm bone")


def gap(out: Path) -> list[Path]:
    paths = good(out, n=N + 2)
    for p in paths[5:7]:
        p.unlink()
    return paths[:5] + paths[7:]


def _rewrite(path: Path, dest: Path, **changes: Any) -> Path:
    ds = pydicom.dcmread(path)
    for k, v in changes.items():
        setattr(ds, k, v)
    if "SOPInstanceUID" in changes:
        ds.file_meta.MediaStorageSOPInstanceUID = changes["SOPInstanceUID"]
    ds.save_as(dest, enforce_file_format=True)
    return dest


def duplicate_positions(out: Path) -> list[Path]:
    paths = good(out)
    extra = [_rewrite(p, p.with_name(f"dup{i}.dcm"), SOPInstanceUID=generate_uid(), InstanceNumber=100 + i)
             for i, p in enumerate(paths[3:5])]
    return paths + extra


def mixed_orientation(out: Path) -> list[Path]:
    paths = good(out)
    # the middle slice (the one select reads) stays axial; two others are coronal
    for p in (paths[1], paths[-2]):
        _rewrite(p, p, ImageOrientationPatient=[1, 0, 0, 0, 0, -1])
    return paths


def mixed_sizes(out: Path) -> list[Path]:
    paths = good(out)
    study, series = (str(pydicom.dcmread(paths[0], stop_before_pixels=True).get(k))
                     for k in ("StudyInstanceUID", "SeriesInstanceUID"))
    more = write_series(out / "small", n=2, rows=48, cols=48, study_uid=study, series_uid=series)
    # continue the stack so that only the size differs
    for i, p in enumerate(more):
        _rewrite(p, p, ImagePositionPatient=[-16.0, -16.0, 5.0 * (N + i)], InstanceNumber=N + i + 1)
    return paths + more


def tilted(out: Path, deg: float = 20.0) -> list[Path]:
    return good(out, tilt_deg=deg, GantryDetectorTilt=deg)


def one_slice(out: Path) -> list[Path]:
    return good(out, n=1)


def too_many_slices(out: Path, n: int = 2001) -> list[Path]:
    """n tiny slices of one series: headers are what select rejects (by count), pixels are 16²."""
    out.mkdir(parents=True, exist_ok=True)
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    base = base_header(study, series, FrameOfReferenceUID=frame, SeriesDescription="Head 0.1mm")
    base.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    base.PixelSpacing = [1, 1]
    base.SliceThickness = 0.6
    base.Rows = base.Columns = 16
    base.SamplesPerPixel, base.PhotometricInterpretation = 1, "MONOCHROME2"
    base.BitsAllocated, base.BitsStored, base.HighBit, base.PixelRepresentation = 16, 16, 15, 1
    base.RescaleIntercept, base.RescaleSlope = -1024, 1
    base.PixelData = np.full((16, 16), 1054, np.int16).tobytes()
    paths = []
    for i in range(n):
        ds = base.copy()
        ds.SOPInstanceUID = generate_uid()
        ds.InstanceNumber = i + 1
        ds.ImagePositionPatient = [-8.0, -8.0, 0.6 * i]
        ds.file_meta = _meta(CTImageStorage, ds.SOPInstanceUID)
        p = out / f"{i:05d}.dcm"
        ds.save_as(p, enforce_file_format=True)
        paths.append(p)
    return paths


def matrix(out: Path, rows: int, cols: int) -> list[Path]:
    return good(out, rows=rows, cols=cols)


def padding(out: Path, value: int) -> list[Path]:
    """Signed stored values with intercept 0 and `value` outside the reconstruction circle."""
    return good(out, signed=True, intercept=0.0, padding=value)


def pixel_representation(out: Path, signed: bool) -> list[Path]:
    return good(out, signed=signed, intercept=-1024.0 if not signed else 0.0)


def syntax(out: Path, ts: str) -> list[Path]:
    return good(out, syntax=ts)


def implicit_vr(out: Path) -> list[Path]:
    return syntax(out, ImplicitVRLittleEndian)


def big_endian(out: Path) -> list[Path]:
    return syntax(out, ExplicitVRBigEndian)


def missing_decoder(out: Path) -> list[Path]:
    """A series whose pixel data is JPEG 2000 Part 2 (no decoder installed): headers fine, pixels not."""
    paths = good(out)
    for p in paths:
        ds = pydicom.dcmread(p)
        ds.PixelData = encapsulate([b"\xff\x0a" + os.urandom(64)])
        ds["PixelData"].VR = "OB"
        ds.file_meta.TransferSyntaxUID = MISSING_DECODER_TS
        ds.save_as(p, enforce_file_format=True)
    return paths


def enhanced_ct(out: Path, n: int = N, size: int = SIZE) -> list[Path]:
    """One Enhanced CT multi-frame object (shared orientation/spacing/rescale, per-frame position)."""
    out.mkdir(parents=True, exist_ok=True)
    hu = phantom(n, size, size)
    ds = base_header(generate_uid(), generate_uid(), ImageType=["ORIGINAL", "PRIMARY", "AXIAL", "NONE"])
    ds.SOPClassUID = ENHANCED_CT
    ds.SOPInstanceUID = generate_uid()
    ds.InstanceNumber = 1
    ds.ContentDate, ds.ContentTime = "20260101", "120000"
    ds.Rows, ds.Columns, ds.NumberOfFrames = size, size, n
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    shared, o, m, t = Dataset(), Dataset(), Dataset(), Dataset()
    o.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    m.PixelSpacing, m.SliceThickness = [3.5, 3.5], 5.0  # head-sized, as write_series
    t.RescaleIntercept, t.RescaleSlope, t.RescaleType = -1024, 1, "HU"
    shared.PlaneOrientationSequence, shared.PixelMeasuresSequence = [o], [m]
    shared.PixelValueTransformationSequence = [t]
    ds.SharedFunctionalGroupsSequence = [shared]
    frames = []
    for z in range(n):
        f, p = Dataset(), Dataset()
        p.ImagePositionPatient = [-size * 1.75, -size * 1.75, 5.0 * z]
        f.PlanePositionSequence = [p]
        frames.append(f)
    ds.PerFrameFunctionalGroupsSequence = frames
    ds.PixelData = np.round(hu + 1024).astype(np.int16).tobytes()
    ds.file_meta = _meta(ENHANCED_CT, ds.SOPInstanceUID)
    path = out / "enhanced.dcm"
    ds.save_as(path, enforce_file_format=True)
    return [path]


def malformed_strings(out: Path) -> list[Path]:
    """Non-conformant UIDs (letters, leading zeros, > 64 characters) and over-long strings."""
    paths = good(out)
    study = "1.2.826.0.1.3680043.8.498.0" + "1" * 60  # > 64 characters, leading zero component
    series = "1.2.3.4.ABC.05"  # letters and a leading zero
    for i, p in enumerate(paths):
        ds = pydicom.dcmread(p)
        ds.StudyInstanceUID = study
        ds.SeriesInstanceUID = series
        sop = f"1.2.3.4.ABC.05.{i}"
        ds.SOPInstanceUID = sop
        ds.file_meta.MediaStorageSOPInstanceUID = sop
        ds.SeriesDescription = "Head 5mm " + "x" * 300  # LO allows 64
        ds.InstitutionName = "Hospital " * 40
        ds.StudyDescription = "CT HEAD " + "/../" * 30
        ds.save_as(p, enforce_file_format=True)
    return paths


def several_series(out: Path) -> tuple[list[Path], dict[str, str]]:
    """One study, three series: soft 5 mm (#2, the one to analyse), soft 1 mm (#3), bone 5 mm (#4)."""
    study = generate_uid()
    uids = {"soft5": generate_uid(), "soft1": generate_uid(), "bone5": generate_uid()}
    paths = good(out / "soft5", study_uid=study, series_uid=uids["soft5"], SeriesNumber=2,
                 SeriesDescription="Head 5mm soft")
    paths += good(out / "soft1", study_uid=study, series_uid=uids["soft1"], SeriesNumber=3, dz=1.0,
                  SeriesDescription="Head 1mm soft")
    paths += good(out / "bone5", study_uid=study, series_uid=uids["bone5"], SeriesNumber=4,
                  ConvolutionKernel="H70h", SeriesDescription="Head 5mm bone")
    return paths, uids


def no_hematoma(out: Path) -> list[Path]:
    """A head of normal brain (30 HU) with no bleed at all."""
    hu = phantom(N, SIZE, SIZE)
    hu[(hu > 45) & (hu < 100)] = 30.0
    return good(out, hu=hu)


def charset(out: Path, which: str) -> tuple[list[Path], str]:
    """PatientName outside ASCII: 'utf8' (ISO_IR 192) or 'jis' (ISO 2022 IR 87, Japanese)."""
    if which == "utf8":
        name, cs = "Müller-Łukasiewicz^Zoë^Ångström", "ISO_IR 192"
    else:
        name, cs = "Yamada^Tarou=山田^太郎=やまだ^たろう", ["", "ISO 2022 IR 87"]
    return good(out, SpecificCharacterSet=cs, PatientName=name), name


def copy_to(paths: list[Path], out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    res = []
    for i, p in enumerate(paths):
        q = out / f"{i:04d}-{p.name}"
        shutil.copy(p, q)
        res.append(q)
    return res
