"""Small CT series made with pydicom for the series/select tests (hexnode.synth makes realistic ones)."""

from __future__ import annotations

import math
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    generate_uid,
)

from hexnode.receive.index import index_header, record_instance
from hexnode.store.db import Store
from hexnode.store.spool import Spool, instance_relpath


def phantom(n: int, rows: int, cols: int) -> np.ndarray:
    """HU: air outside a closed skull (1,000 HU) holding brain (30 HU) with a 60 HU sphere in the
    middle. The skull closes above the top and below the bottom slice, so the series covers its
    whole "brain" (the node's coverage rule: hexnode.models.brain)."""
    z, y, x = np.mgrid[0:n, 0:rows, 0:cols].astype(np.float32)
    # z semi-axis a little beyond the end slices: they cut the skull cap, not the brain's widest part
    zz = ((z - (n - 1) / 2) / max((n - 1) / 2 * 1.08, 0.5)) ** 2
    r2 = ((y - rows / 2) / (rows * 0.42)) ** 2 + ((x - cols / 2) / (cols * 0.38)) ** 2
    head = r2 + zz <= 1
    brain = (r2 / 0.8 + zz / 0.92 <= 1) if n > 2 else r2 <= 0.8
    hu = np.where(head, 1000.0, -1000.0).astype(np.float32)
    hu[brain] = 30.0
    blob = ((z - n / 2) / max(n * 0.2, 1)) ** 2 + ((y - rows / 2) / (rows * 0.1)) ** 2 + ((x - cols / 2) / (cols * 0.1)) ** 2 <= 1
    hu[blob] = 60.0
    return hu


def base_header(study_uid: str, series_uid: str, **over: Any) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = CTImageStorage
    ds.Modality = "CT"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.FrameOfReferenceUID = over.pop("FrameOfReferenceUID", generate_uid())
    ds.PatientName = "Test^Series"
    ds.PatientID = "SER-0001"
    ds.StudyDate = "20260101"
    ds.StudyTime = "120000"
    ds.AccessionNumber = "A1"
    ds.ReferringPhysicianName = ""
    ds.StudyID = "1"
    ds.SeriesNumber = over.pop("SeriesNumber", 2)
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    ds.Manufacturer = "pytest"
    ds.ImageType = over.pop("ImageType", ["ORIGINAL", "PRIMARY", "AXIAL"])
    ds.BodyPartExamined = over.pop("BodyPartExamined", "HEAD")
    ds.SeriesDescription = over.pop("SeriesDescription", "Head 5mm")
    ds.ConvolutionKernel = over.pop("ConvolutionKernel", "H40s")
    ds.KVP = 120
    ds.PositionReferenceIndicator = ""
    for k, v in over.items():
        setattr(ds, k, v)
    return ds


def write_series(
    out: Path,
    n: int = 12,
    rows: int = 64,
    cols: int = 64,
    dz: float = 5.0,
    pixel: float | None = None,
    tilt_deg: float = 0.0,
    syntax: str = ExplicitVRLittleEndian,
    signed: bool = True,
    intercept: float = -1024.0,
    padding: int | None = None,
    hu: np.ndarray | None = None,
    study_uid: str | None = None,
    series_uid: str | None = None,
    **header: Any,
) -> list[Path]:
    """Write n single-frame CT files; gantry tilt shears positions along the table (scanner style).

    The default pixel makes the phantom head-sized whatever the matrix (224 mm across the larger side,
    3.5 mm at 64): the analyser looks for a skull enclosing at least 50 cm2 before it says anything
    about blood, and a 1.8 m "head" is no head either."""
    out.mkdir(parents=True, exist_ok=True)
    pixel = 224.0 / max(rows, cols) if pixel is None else pixel
    study_uid = study_uid or generate_uid()
    series_uid = series_uid or generate_uid()
    vol = phantom(n, rows, cols) if hu is None else hu
    header.setdefault("FrameOfReferenceUID", generate_uid())  # one per series
    t = math.radians(tilt_deg)
    # Tilted gantry: image rows along x, columns lean in the y-z plane; the table moves along z.
    row_dir = [1.0, 0.0, 0.0]
    col_dir = [0.0, math.cos(t), -math.sin(t)]
    paths = []
    for i in range(n):
        ds = base_header(study_uid, series_uid, **header)
        ds.SOPInstanceUID = generate_uid()
        ds.InstanceNumber = i + 1
        ds.ImageOrientationPatient = row_dir + col_dir
        # positions along z with step dz / cos(t): spacing along the normal is then dz
        ds.ImagePositionPatient = [-cols * pixel / 2, -rows * pixel / 2, i * dz / math.cos(t)]
        ds.SliceLocation = i * dz
        ds.SliceThickness = dz
        ds.PixelSpacing = [pixel, pixel]
        ds.Rows, ds.Columns = rows, cols
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = 16
        ds.BitsStored = 16 if signed else 12
        ds.HighBit = ds.BitsStored - 1
        ds.PixelRepresentation = 1 if signed else 0
        ds.RescaleIntercept = intercept
        ds.RescaleSlope = 1
        ds.RescaleType = "HU"
        stored = np.round(vol[i] - intercept)
        if padding is not None:
            ds.PixelPaddingValue = padding
            # outside the head circle scanners write the padding value
            stored = np.where(vol[i] <= -1000, padding, stored)
        arr = stored.astype(np.int16 if signed else np.uint16)
        ds.PixelData = arr.tobytes() if syntax != ExplicitVRBigEndian else arr.astype(arr.dtype.newbyteorder(">")).tobytes()
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = ds.SOPClassUID
        meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        meta.TransferSyntaxUID = syntax
        ds.file_meta = meta
        path = out / f"{i:04d}.dcm"
        ds.save_as(path, enforce_file_format=True, little_endian=syntax != ExplicitVRBigEndian,
                   implicit_vr=syntax == ImplicitVRLittleEndian)
        paths.append(path)
    return paths


def index(store: Store, spool: Spool, paths: list[Path], at: datetime, calling_ae: str = "SCANNER") -> None:
    """What receive does per instance (its own functions): file into the spool, header into the database."""
    with store.transaction() as s:
        for p in paths:
            header = index_header(p)
            rel = instance_relpath(header.sop_instance_uid)
            spool.write_bytes(rel, p.read_bytes(), fsync=False)
            record_instance(s, header, rel, p.stat().st_size, calling_ae, at)
