"""Source CT series for the report tests: a small head-like phantom written with pydicom.

Kept local (not hexnode.synth) so the report tests stay fast and control exactly what varies:
transfer syntax, slice order, gantry tilt.
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGLSLossless,
    generate_uid,
)

from hexnode.pipeline.contracts import ModelInfo, Prediction

TRANSFER_SYNTAXES = {"explicit": ExplicitVRLittleEndian, "implicit": ImplicitVRLittleEndian, "jpegls": JPEGLSLossless}
OUTPUT = Path(__file__).parent / "output"
MODEL = ModelInfo(name="hexnode-he", version="0.3.1-test", threshold=0.35, synthetic_trained=True)
JAVA_OPTS = "-Djdk.xml.xpathExprGrpLimit=0 -Djdk.xml.xpathExprOpLimit=0 -Djdk.xml.xpathTotalOpLimit=0"


@dataclass
class Series:
    paths: list[Path]  # in the order of `hu` and `mask` (z order of the volume)
    hu: np.ndarray  # float32 (z, y, x)
    mask: np.ndarray  # uint8 (z, y, x)
    spacing: tuple[float, float, float]

    def headers(self) -> list[Dataset]:
        return [pydicom.dcmread(p, stop_before_pixels=True) for p in self.paths]


def phantom(n: int, size: int, seed: int = 7) -> tuple[np.ndarray, np.ndarray]:
    """Skull, brain, ventricles and a lobar hematoma that spans a few slices."""
    rng = np.random.default_rng(seed)
    y, x = np.ogrid[:size, :size]  # one slice at a time: a 300 x 512^2 phantom stays small
    c = (size - 1) / 2
    r = np.hypot((x - c) / (0.40 * size), (y - c) / (0.46 * size))
    plane = np.full((size, size), -1000.0, dtype=np.float32)
    plane[r < 1.0] = 1000.0  # skull
    plane[r < 0.92] = 32.0  # brain
    plane[(np.hypot((x - c) / (0.05 * size), (y - c) / (0.12 * size)) < 1)] = 6.0  # ventricles
    ellipse = ((x - (c + 0.16 * size)) / (0.09 * size)) ** 2 + ((y - (c - 0.08 * size)) / (0.12 * size)) ** 2
    hu = np.empty((n, size, size), dtype=np.float32)
    mask = np.zeros((n, size, size), dtype=np.uint8)
    for z in range(n):
        mask[z] = ellipse + ((z - n / 2) / max(n / 6, 1.0)) ** 2 < 1.0
        hu[z] = np.where(mask[z] > 0, 65.0, plane) + rng.normal(0, 4, (size, size))
    np.round(hu, out=hu)
    return hu, mask


def write_series(
    out: Path,
    *,
    n: int = 12,
    size: int = 128,
    syntax: str = "explicit",
    descending: bool = False,
    tilt_deg: float = 0.0,
    study_uid: str | None = None,
    series_uid: str | None = None,
    patient_name: str = "Doe^Jane",
    charset: str | None = "ISO_IR 100",
    thickness_mm: Sequence[float] | None = None,
) -> Series:
    """Write a CT series; files are numbered in the order of the returned volume.

    `thickness_mm`: one thickness per slice (contiguous slices of mixed thickness, as a scanner
    writes a reconstruction of 4 mm and 7 mm parts); default 5 mm throughout.
    """
    out.mkdir(parents=True, exist_ok=True)
    hu, mask = phantom(n, size)
    spacing = (0.9, 0.9, 5.0)
    study_uid = study_uid or generate_uid()
    series_uid = series_uid or generate_uid()
    frame_uid = generate_uid()
    t = math.radians(tilt_deg)
    col_dir = (0.0, round(math.cos(t), 10), round(math.sin(t), 10))  # DS holds 16 characters
    order = list(range(n))[::-1] if descending else list(range(n))
    thick = [float(t) for t in thickness_mm] if thickness_mm is not None else [spacing[2]] * n
    if len(thick) != n:
        raise ValueError(f"{len(thick)} thicknesses for {n} slices")
    z_mm = np.concatenate([[0.0], np.cumsum([(a + b) / 2 for a, b in zip(thick[:-1], thick[1:], strict=True)])])
    paths = []
    for k, i in enumerate(order):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        uid = generate_uid()
        ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
        ds.file_meta.MediaStorageSOPInstanceUID = uid
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        if charset:
            ds.SpecificCharacterSet = charset
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, uid
        ds.PatientName, ds.PatientID = patient_name, "HX-0001"
        ds.PatientBirthDate, ds.PatientSex, ds.PatientAge = "19510203", "F", "075Y"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame_uid
        ds.StudyDate, ds.StudyTime, ds.AccessionNumber, ds.StudyID = "20260105", "101500", "ACC42", "S42"
        ds.ReferringPhysicianName = "Ref^Doctor"
        ds.StudyDescription = "CT HEAD WO CONTRAST"
        ds.Modality, ds.SeriesNumber, ds.SeriesDescription = "CT", 3, "Head 5mm soft tissue"
        ds.InstanceNumber = k + 1
        ds.Manufacturer, ds.ManufacturerModelName = "ACME", "Phantom 1"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.BodyPartExamined, ds.PatientPosition, ds.PositionReferenceIndicator = "HEAD", "HFS", ""
        ds.AcquisitionNumber, ds.KVP, ds.GantryDetectorTilt = 1, 120, tilt_deg
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, *col_dir]
        # Table moves along z; a tilted gantry tilts the image plane, not the table path.
        ds.ImagePositionPatient = [-(size / 2) * spacing[0], -(size / 2) * spacing[1], float(z_mm[i])]
        ds.SliceLocation = float(z_mm[i])
        ds.PixelSpacing = [spacing[1], spacing[0]]
        ds.SliceThickness = thick[i]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.Rows = ds.Columns = size
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = -1024, 1, "HU"
        ds.WindowCenter, ds.WindowWidth = 40, 80
        stored = (hu[i] + 1024).astype(np.int16)
        ds.PixelData = stored.tobytes()
        if syntax == "jpegls":
            ds.compress(JPEGLSLossless, stored)
        elif syntax == "implicit":
            ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
        path = out / f"ct{k:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return Series(paths=paths, hu=hu[order], mask=mask[order], spacing=spacing)


def prediction(series: Series, *, probability: float = 0.6123, notes: Sequence[str] = ()) -> Prediction:
    """The phantom's prediction, with the NCCT signs measured on it as the analyser does."""
    from hexnode.models.signs import measure_signs

    voxel_ml = series.spacing[0] * series.spacing[1] * series.spacing[2] / 1000.0
    volume = float(series.mask.sum()) * voxel_ml
    return Prediction(
        volume_ml=volume,
        probability=probability,
        model=MODEL,
        hemorrhage_detected=volume > 0,
        notes=tuple(notes),
        signs=measure_signs(series.hu, series.mask, series.spacing).signs if volume > 0 else (),
    )


def dciodvfy(path: Path) -> tuple[list[str], str]:
    """Error lines of dciodvfy on one file, and its full output."""
    proc = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    text = proc.stdout + proc.stderr
    return [line for line in text.splitlines() if line.startswith("Error")], text


def sr_validator(path: Path) -> tuple[list[str], str]:
    """Error lines of PixelMed's DicomSRValidator (templates, context groups, IOD) on one SR."""
    env = dict(os.environ)
    env["JAVA_TOOL_OPTIONS"] = (env.get("JAVA_TOOL_OPTIONS", "") + " " + JAVA_OPTS).strip()
    proc = subprocess.run(["DicomSRValidator", str(path)], capture_output=True, text=True, timeout=120, env=env)
    text = proc.stdout + proc.stderr
    return [line for line in text.splitlines() if line.lower().startswith("error")], text


def venv_tool(name: str) -> str:
    """A console script of the venv running the tests (PATH may not include .venv/bin)."""
    path = Path(sys.executable).with_name(name)
    if not path.exists():
        raise RuntimeError(f"{name} not found next to {sys.executable}: run `make install`")
    return str(path)


def require(tool: str) -> str:
    found = shutil.which(tool)
    if found is None:
        raise RuntimeError(f"{tool} not installed: run `make install` (scripts/bootstrap.sh)")
    return found


# PixelMed's TID 1500 rules apply TID 1410 to every Measurement Group once any group holds an
# Image Region (its XSL tests the container's children, not each group): the volumetric group is
# then reported for lacking TID 1410's conditional region. Exactly those two lines are allowed on
# the full SR, and each group is validated on its own with zero errors.
PIXELMED_1410_ON_1411 = (
    'Error: Template 1410 PlanarROIMeasurements/[Row 1] CONTAINER (125007,DCM,"Measurement Group")/[Row 5] SCOORD',
    'Error: Template 1410 PlanarROIMeasurements/[Row 1] CONTAINER (125007,DCM,"Measurement Group")/[Row 7] IMAGE',
)
# Procedure reported is LOINC's non-contrast head CT (30799-1): CID 100 lists no head CT without
# contrast (only "CT unspecified body region" and a perfusion CT) and is extensible, so the standard
# allows the more exact code; PixelMed checks membership only. Exactly this line is allowed.
PIXELMED_HEAD_CT_NOT_IN_CID_100 = (
    'Error: Template 1500 MeasurementReport/[Row 1] CONTAINER CID 7021/[Row 4] CODE (121058,DCM,"Procedure reported"): '
    '1.7: /CONTAINER (126000,DCM,"Imaging Measurement Report")/CODE (121058,DCM,"Procedure reported"): '
    'Code (30799-1,LN,"CT Head WO contrast") not found in context group 100'
)
