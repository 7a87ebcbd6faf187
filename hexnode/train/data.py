"""Training cases: from the synthetic generator or from a site data folder.

Site layout (`hexnode train --data DIR`):
    DIR/labels.csv                      case_id,he_label[,followup_volume_ml]
    DIR/<case_id>/series/*.dcm          a DICOM series (or the *.dcm directly in DIR/<case_id>/)
      or DIR/<case_id>/image.nii.gz     a NIfTI volume in HU
    DIR/<case_id>/mask.nii.gz           the hematoma mask (NIfTI), or
    DIR/<case_id>/seg.dcm               a DICOM SEG referencing the series (first segment)
This is also the layout `hexnode synth --out` writes (series/ + mask.nii.gz + truth.json).
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray


@dataclass
class TrainCase:
    case_id: str
    hu: NDArray[np.int16]  # (z, y, x) HU
    mask: NDArray[np.uint8]
    spacing: tuple[float, float, float]  # (sx, sy, sz) mm
    label: int
    he_probability: float | None = None  # known only for synthetic cases
    hard: bool = False


#: index offset of the normal heads `hexnode train --normal` adds: their heads are drawn apart from
#: every bleed case's (the same (seed, index) with normal=True is the same head without blood, and
#: it would put a held-out patient's anatomy into the U-Net's training set)
NORMAL_INDEX_OFFSET = 1_000_000


def synth_case(seed: int, index: int, *, hard: bool = False, normal: bool = False) -> TrainCase:
    from hexnode.synth.phantom import generate_case

    if normal:
        index += NORMAL_INDEX_OFFSET
    c = generate_case(seed, index, hard=hard, normal=normal)
    t = c.truth
    tag = "-normal" if normal else "-hard" if hard else ""
    return TrainCase(
        case_id=f"synth-{seed}-{index}{tag}",
        hu=np.asarray(c.hu, np.int16),
        mask=(np.asarray(c.mask) > 0).astype(np.uint8),
        spacing=tuple(float(s) for s in c.spacing),  # type: ignore[arg-type]
        label=int(t.he_label),
        he_probability=float(t.he_probability),
        hard=hard,
    )


def read_labels(root: Path) -> dict[str, int]:
    """The cases with a known outcome; a site export lists segmentation-only cases with an empty
    he_label (no follow-up yet), which only `train --site` uses."""
    labels: dict[str, int] = {}
    with open(root / "labels.csv", newline="") as fh:
        for row in csv.DictReader(fh):
            if (row.get("he_label") or "").strip():
                labels[row["case_id"].strip()] = int(float(row["he_label"]))
    if not labels:
        raise ValueError(f"{root / 'labels.csv'} lists no cases")
    return labels


def _read_dicom_series(folder: Path) -> tuple[Any, list[str]]:
    import pydicom
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    files = list(reader.GetGDCMSeriesFileNames(str(folder)))
    if not files:
        raise ValueError(f"no DICOM series in {folder}")
    reader.SetFileNames(files)
    img = reader.Execute()
    uids = [str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files]
    return img, uids


def _on_grid(mask_img: Any, ref: Any) -> NDArray[np.uint8]:
    """The mask resampled (nearest neighbour) onto the image's voxel grid, whatever axis order or
    orientation the mask file was written in; identical grids pass through unchanged."""
    import SimpleITK as sitk

    same = (mask_img.GetSize() == ref.GetSize()
            and np.allclose(mask_img.GetOrigin(), ref.GetOrigin(), atol=1e-3)
            and np.allclose(mask_img.GetDirection(), ref.GetDirection(), atol=1e-4)
            and np.allclose(mask_img.GetSpacing(), ref.GetSpacing(), atol=1e-4))
    if not same:
        mask_img = sitk.Resample(mask_img, ref, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
    return (sitk.GetArrayFromImage(mask_img) > 0).astype(np.uint8)


def _read_seg(path: Path, uids: list[str], shape: tuple[int, ...]) -> NDArray[np.uint8]:
    import highdicom as hd

    seg = hd.seg.segread(str(path))
    px = seg.get_pixels_by_source_instance(source_sop_instance_uids=uids, segment_numbers=[1])
    arr = np.asarray(px)[..., 0]
    if arr.shape != shape:
        raise ValueError(f"SEG {path.name} has shape {arr.shape}, series {shape}")
    return (arr > 0).astype(np.uint8)


def site_case(root: Path, case_id: str, label: int) -> TrainCase:
    import SimpleITK as sitk

    d = root / case_id
    uids: list[str] = []
    if (d / "image.nii.gz").is_file():
        img = sitk.ReadImage(str(d / "image.nii.gz"))
    else:
        img, uids = _read_dicom_series(d / "series" if (d / "series").is_dir() else d)
    hu = sitk.GetArrayFromImage(img).astype(np.int16)
    sx, sy, sz = (float(v) for v in img.GetSpacing())
    spacing = (sx, sy, sz)
    if (d / "mask.nii.gz").is_file():
        mask = _on_grid(sitk.ReadImage(str(d / "mask.nii.gz")), img)
    elif (d / "seg.dcm").is_file():
        mask = _read_seg(d / "seg.dcm", uids, hu.shape)
    else:
        raise ValueError(f"{case_id}: no mask.nii.gz or seg.dcm")
    truth = d / "truth.json"
    prob = None
    if truth.is_file():  # synthetic cases written by `hexnode synth` carry the true probability
        prob = json.loads(truth.read_text()).get("he_probability")
    return TrainCase(case_id, hu, mask, spacing, int(label), None if prob is None else float(prob))
