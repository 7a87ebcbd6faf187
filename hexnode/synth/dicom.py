"""Write a synthetic `Case` as a CT Image Storage series, with the ground truth beside it.

Layout: case_dir/series/IM0001.dcm ..., case_dir/truth.json, case_dir/mask.nii.gz.  The truth
never enters the DICOM files.  UIDs are derived from (seed, index) so a rerun writes the same
study/series/instances (a PACS deduplicates), and patient identifiers are obviously synthetic.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from hexnode import __version__
from hexnode.synth.case import Case

INTERCEPT = -1024.0
_SYNTAXES = {"explicit": ExplicitVRLittleEndian, "implicit": ImplicitVRLittleEndian}

#: A head NCCT series as each vendor writes it (real names: hexnode.series.vendors lists them with
#: what each must mean): manufacturer, model, soft-tissue kernel, description, protocol, body part.
VENDORS: dict[str, dict[str, Any]] = {
    "ge": {"Manufacturer": "GE MEDICAL SYSTEMS", "ManufacturerModelName": "Revolution CT",
           "ConvolutionKernel": "STANDARD", "SeriesDescription": "HEAD 5mm STND ASiR-V 40%",
           "ProtocolName": "5.1 ROUTINE HEAD", "BodyPartExamined": "HEAD"},
    "siemens": {"Manufacturer": "SIEMENS", "ManufacturerModelName": "SOMATOM Force",
                "ConvolutionKernel": ["Hr38h", "3"], "SeriesDescription": "Head 5.0 Hr38 ADMIRE 3",
                "ProtocolName": "Head_Routine", "BodyPartExamined": "HEAD"},
    "philips": {"Manufacturer": "Philips", "ManufacturerModelName": "Ingenuity CT", "ConvolutionKernel": "UB",
                "FilterType": "UB", "SeriesDescription": "STD BRAIN 5MM, iDose",
                "ProtocolName": "1A TRAUMA/PLAIN HEAD /Head", "BodyPartExamined": "BRAIN"},
    "canon": {"Manufacturer": "CANON_MEC", "ManufacturerModelName": "Aquilion ONE", "ConvolutionKernel": "FC26",
              "SeriesDescription": "Head 5.0 FC26 AIDR 3D STD", "ProtocolName": "Brain Routine",
              "BodyPartExamined": "HEAD"},
    "uih": {"Manufacturer": "UIH", "ManufacturerModelName": "uCT 760", "ConvolutionKernel": "H_SOFT_B",
            "SeriesDescription": "Head 5mm KARL 3D", "ProtocolName": "Head Routine", "BodyPartExamined": "HEAD"},
}


def case_uid(case: Case, kind: str, *extra: object) -> str:
    """Deterministic UID (2.25.<hash>) for this case and `kind` (study, series, frame, sop)."""
    # pydicom's generate_uid ignores entropy_srcs when prefix is None (random UUID): hash ourselves
    visit = case.extra.get("visit")  # a follow-up scan: a new study, series, frame of reference
    text = "|".join(["hexnode-synth", str(case.seed), str(case.index), kind, *map(str, extra),
                     *([str(visit)] if visit else [])])
    return "2.25." + str(int.from_bytes(hashlib.sha256(text.encode()).digest()[:16], "big"))


def _fmt(x: float) -> str:
    """A DS value (at most 16 characters)."""
    s = f"{x:.6f}".rstrip("0").rstrip(".")
    if s == "-0":
        s = "0"
    return s[:16]


def _study_datetime(case: Case) -> dt.datetime:
    base = dt.datetime(2024, 1, 1, 7, 0, 0)
    when = base + dt.timedelta(days=(case.seed * 97 + case.index) % 700, minutes=(case.index * 37) % 600)
    followup = case.extra.get("followup")
    if followup:  # the follow-up CT, the truth's hours after the baseline (whole seconds, as DICOM TM here)
        when += dt.timedelta(seconds=round(float(followup["hours"]) * 3600.0))
    return when


def _base_dataset(case: Case, *, series_number: int, series_description: str) -> Dataset:
    t = case.truth
    acq = case.acquisition
    when = _study_datetime(case)
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = CTImageStorage
    ds.StudyDate = when.strftime("%Y%m%d")
    ds.SeriesDate = ds.StudyDate
    ds.AcquisitionDate = ds.StudyDate
    ds.ContentDate = ds.StudyDate
    ds.StudyTime = when.strftime("%H%M%S")
    ds.SeriesTime = ds.StudyTime
    ds.AcquisitionTime = ds.StudyTime
    ds.ContentTime = ds.StudyTime
    ds.AccessionNumber = f"SYN{case.seed % 100000:05d}{case.index % 100000:05d}" + ("F" if case.extra.get("visit") else "")
    ds.Modality = "CT"
    ds.Manufacturer = "hexnode-synth"
    ds.InstitutionName = "Synthetic"
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = "CT HEAD WO CONTRAST"
    ds.SeriesDescription = series_description
    ds.ManufacturerModelName = acq.manufacturer_model
    ds.SoftwareVersions = f"hexnode {__version__}"
    ds.PatientName = f"SYNTH^Case{case.index:04d}"
    ds.PatientID = f"SYN-{case.seed}-{case.index}"
    birth_year = 1935 + (case.seed * 31 + case.index * 7) % 55
    ds.PatientBirthDate = f"{birth_year:04d}0101"
    ds.PatientSex = "MF"[(case.seed + case.index) % 2]
    ds.PatientAge = f"{int(ds.StudyDate[:4]) - birth_year:03d}Y"
    ds.PatientIdentityRemoved = "NO"
    ds.BodyPartExamined = "HEAD"
    ds.SliceThickness = _fmt(case.geometry.slice_thickness_mm)
    ds.KVP = _fmt(acq.kvp)
    ds.DataCollectionDiameter = "500"
    ds.ReconstructionDiameter = _fmt(case.geometry.n * case.geometry.pixel_mm)
    ds.GantryDetectorTilt = _fmt(t.tilt_deg)
    ds.TableHeight = "150"
    ds.RotationDirection = "CW"
    ds.ExposureTime = "1000"
    ds.XRayTubeCurrent = acq.tube_current_ma
    ds.Exposure = acq.exposure_mas
    ds.FilterType = "HEAD"
    ds.ConvolutionKernel = acq.kernel
    ds.PatientPosition = "HFS"
    ds.RevolutionTime = 1.0
    ds.SingleCollimationWidth = 0.625
    ds.TotalCollimationWidth = 40.0
    ds.SpiralPitchFactor = 0.55
    ds.TableSpeed = round(0.55 * 40.0, 3)
    ds.TableFeedPerRotation = round(0.55 * 40.0, 3)
    ds.CTDIvol = float(acq.ctdi_vol)
    phantom = Dataset()
    phantom.CodeValue = "113691"
    phantom.CodingSchemeDesignator = "DCM"
    phantom.CodeMeaning = "IEC Head Dosimetry Phantom"
    ds.CTDIPhantomTypeCodeSequence = [phantom]
    ds.StudyInstanceUID = case_uid(case, "study")
    ds.SeriesInstanceUID = case_uid(case, "series", series_number)
    ds.StudyID = f"{case.index % 10000:d}"
    ds.SeriesNumber = series_number
    ds.AcquisitionNumber = 1
    ds.FrameOfReferenceUID = case_uid(case, "frame")
    ds.PositionReferenceIndicator = ""
    ds.ImageOrientationPatient = [_fmt(x) for x in case.geometry.orientation]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = case.geometry.n
    ds.Columns = case.geometry.n
    ds.PixelSpacing = [_fmt(case.geometry.pixel_mm), _fmt(case.geometry.pixel_mm)]
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.WindowCenter = ["40", "600"]
    ds.WindowWidth = ["80", "2800"]
    ds.WindowCenterWidthExplanation = ["BRAIN", "BONE"]
    ds.RescaleIntercept = _fmt(INTERCEPT)
    ds.RescaleSlope = "1"
    ds.RescaleType = "HU"
    ds.ImagesInAcquisition = case.geometry.n_slices
    return ds


def write_series(case: Case, series_dir: str | Path, *, transfer_syntax: str = "explicit",
                 series_number: int = 2, series_description: str | None = None,
                 header: Mapping[str, Any] | None = None, drop: Sequence[str] = ()) -> list[Path]:
    """Write one file per slice (IM0001.dcm = most inferior) and return their paths.

    `header`: values to write instead of the generator's (a vendor's names, `VENDORS`); `drop`:
    keywords to leave out, as real exports do (BodyPartExamined, FrameOfReferenceUID)."""
    ts = _SYNTAXES[transfer_syntax]
    out = Path(series_dir)
    out.mkdir(parents=True, exist_ok=True)
    geo = case.geometry
    thick = ("+".join(f"{t:g}" for t in dict.fromkeys(geo.thickness_mm)) if geo.thickness_mm
             else f"{geo.slice_thickness_mm:g}")
    desc = series_description or (
        f"HEAD {thick}mm {case.acquisition.kernel}" + (" TILT" if geo.tilt_deg else ""))
    base = _base_dataset(case, series_number=series_number, series_description=desc[:64])
    for keyword, value in (header or {}).items():
        setattr(base, keyword, value)
    for keyword in drop:
        if keyword in base:
            delattr(base, keyword)
        if keyword == "FrameOfReferenceUID" and "PositionReferenceIndicator" in base:
            del base.PositionReferenceIndicator  # the rest of the module goes with it
    positions = geo.positions()
    stored = np.clip(case.hu.astype(np.int32) - int(INTERCEPT), 0, 4095).astype("<u2")
    paths = []
    for k in range(geo.n_slices):
        ds = base.copy()
        sop = case_uid(case, "sop", series_number, k)
        ds.SOPInstanceUID = sop
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [_fmt(x) for x in positions[k]]
        if geo.thickness_mm is not None:  # mixed thickness, as GE writes it: ...\ADD on the thin part
            # every slice sets both: a shallow Dataset.copy() shares the data elements with `base`
            ds.SliceThickness = _fmt(geo.thickness(k))
            thin = geo.thickness(k) < max(geo.thickness_mm)
            ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL", *(["ADD"] if thin else [])]
        ds.SliceLocation = _fmt(float(np.dot(positions[k], geo.normal)))
        pix = stored[k]
        ds.SmallestImagePixelValue = int(pix.min())
        ds.LargestImagePixelValue = int(pix.max())
        ds.PixelData = pix.tobytes()
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = UID(sop)
        meta.TransferSyntaxUID = ts
        meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        meta.ImplementationVersionName = "HEXNODE_SYNTH"
        ds.file_meta = meta
        path = out / f"IM{k + 1:04d}.dcm"
        ds.save_as(path, enforce_file_format=True, implicit_vr=ts == ImplicitVRLittleEndian,
                   little_endian=True)
        paths.append(path)
    return paths


def write_truth(case: Case, case_dir: str | Path) -> tuple[Path, Path]:
    import nibabel as nib

    d = Path(case_dir)
    d.mkdir(parents=True, exist_ok=True)
    truth_path = d / "truth.json"
    doc = case.truth.to_json()
    doc["study_instance_uid"] = case_uid(case, "study")
    doc["series_instance_uid"] = case_uid(case, "series", 2)
    doc["mask_file"] = "mask.nii.gz"
    if case.extra.get("followup"):
        doc["followup"] = case.extra["followup"]
    doc["mask_axes"] = "NIfTI (x=column, y=row, z=slice; slice 0 = IM0001); sform maps to RAS mm"
    truth_path.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    img = nib.Nifti1Image(np.ascontiguousarray(case.mask.transpose(2, 1, 0)), case.geometry.affine_ras())
    img.set_sform(case.geometry.affine_ras(), code=1)
    img.set_qform(None, code=0)  # a tilted (sheared) grid has no qform; the sform is exact
    img.header.set_xyzt_units("mm")
    mask_path = d / "mask.nii.gz"
    nib.save(img, str(mask_path))
    return truth_path, mask_path


def write_case(case: Case, case_dir: str | Path, *, transfer_syntax: str = "explicit",
               header: Mapping[str, Any] | None = None, drop: Sequence[str] = ()) -> list[Path]:
    """Series under case_dir/series, truth.json and mask.nii.gz beside it; returns the DICOM paths."""
    d = Path(case_dir)
    paths = write_series(case, d / "series", transfer_syntax=transfer_syntax, header=header, drop=drop)
    write_truth(case, d)
    return paths


__all__ = ["VENDORS", "case_uid", "write_case", "write_series", "write_truth"]
