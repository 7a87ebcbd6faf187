"""Synthetic cases written as a site's corrected export (`hexnode train --site DIR` reads it): per
case `image.nii.gz` (HU) and `mask.nii.gz` (the generator's truth, standing in for a radiologist's
corrected mask), and one `labels.csv` row (case_id, he_label, followup_volume_ml).

Case ids are pseudonymous keys (a hash of seed and index): nothing in the folder says which draw
made a case, as nothing in a real export says who the patient was."""

from __future__ import annotations

import csv
import hashlib
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from hexnode.synth.case import Case


def case_key(seed: int, index: int, profile: str | None) -> str:
    return "pt-" + hashlib.sha256(f"{seed}:{index}:{profile}".encode()).hexdigest()[:12]


def write_case(root: Path, case_id: str, case: Case) -> None:
    import SimpleITK as sitk

    d = root / case_id
    d.mkdir(parents=True, exist_ok=True)
    for name, arr in (("image.nii.gz", np.asarray(case.hu, np.int16)), ("mask.nii.gz", (np.asarray(case.mask) > 0).astype(np.uint8))):
        img = sitk.GetImageFromArray(arr)
        img.SetSpacing(tuple(float(s) for s in case.spacing))
        sitk.WriteImage(img, str(d / name), useCompression=True)


def write_labels(root: Path, rows: Iterable[tuple[str, Case]]) -> None:
    with open(root / "labels.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["case_id", "he_label", "followup_volume_ml"])
        for cid, c in rows:
            w.writerow([cid, int(c.truth.he_label), f"{c.truth.followup_volume_ml:.3f}"])
