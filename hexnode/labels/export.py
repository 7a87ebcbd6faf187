"""`hexnode dataset export DIR`: the site's labelled cases in the layout `hexnode train --data` reads.

One case per series with a reference mask (its newest stored correction, hexnode/labels/take.py)
whose slices are still in the spool, written as hexnode/train/data.py reads a site folder::

    DIR/labels.csv               case_id,he_label,followup_volume_ml: every case (he_label empty: no outcome yet)
    DIR/<case_id>/image.nii.gz   the CT volume in HU (int16), slices ordered along the normal
    DIR/<case_id>/mask.nii.gz    the reference mask on the same grid (uint8)
    DIR/manifest.json            every case written (with or without an outcome) and every one skipped

``he_label`` is the expansion measured on the baseline's first follow-up (the pair
hexnode/store/outcomes.py scores); a case without one is listed with an empty ``he_label`` (null in
the manifest): its mask is still a segmentation case, which `hexnode train --site` fine-tunes on,
while `train --data` and `evaluate --data`, which need the outcome, pass it by. The case id is the series'
uid_hash (what `hexnode series HASH` looks up at the site); the manifest's ``patient`` is a prefix
of the keyed patient hash of the follow-up rule, so that cases of one patient can be kept in one
split; no name, ID, birth date, UID or DICOM header leaves the spool (NIfTI carries geometry only).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import select

from hexnode.labels.take import read_mask
from hexnode.store.db import Correction, Instance, Outcome, Scan, Series, Store, utcnow
from hexnode.store.spool import Spool, uid_hash

log = logging.getLogger(__name__)

PATIENT_KEY_CHARS = 16


@dataclass(frozen=True)
class Case:
    case_id: str
    he_label: int | None
    followup_volume_ml: float | None
    growth_ml: float | None
    hours_to_followup: float | None
    patient: str | None
    model_version: str | None
    dice: float | None
    hexnode_ml: float | None
    reference_ml: float | None
    correction_received_at: str
    slices: int
    spacing_mm: tuple[float, float, float]


@dataclass(frozen=True)
class Skipped:
    case_id: str
    reason: str


@dataclass(frozen=True)
class Exported:
    cases: list[Case]
    skipped: list[Skipped]

    @property
    def labelled(self) -> int:
        return sum(1 for c in self.cases if c.he_label is not None)


def _references(store: Store) -> list[dict[str, Any]]:
    """The reference of every series that has one, with its outcome when the series is a baseline."""
    out = []
    with store.transaction() as s:
        rows = s.execute(select(Correction, Series.series_uid).join(Series, Series.id == Correction.series_id)
                         .where(Correction.state == "stored").order_by(Correction.id)).all()
        for c, series_uid in rows:
            ref: dict[str, Any] = {"series_id": c.series_id, "case_id": uid_hash(series_uid), "mask_path": c.mask_path,
                                   "model_version": c.model_version, "dice": c.dice, "hexnode_ml": c.hexnode_ml,
                                   "reference_ml": c.reference_ml, "received_at": c.received_at.isoformat() + "Z"}
            scan = s.execute(select(Scan).where(Scan.series_id == c.series_id)).scalar_one_or_none()
            ref["patient"] = scan.patient_key[:PATIENT_KEY_CHARS] if scan is not None else None
            ref["outcome"] = None
            if scan is not None and scan.role == "baseline":
                first = s.execute(select(Outcome).join(Scan, Scan.id == Outcome.followup_id)
                                  .where(Outcome.baseline_id == scan.id)
                                  .order_by(Scan.acquired_at, Outcome.id)).scalars().first()
                if first is not None:
                    ref["outcome"] = {"expansion": bool(first.expansion), "followup_ml": float(first.followup_ml),
                                      "growth_ml": float(first.growth_ml), "hours": float(first.hours)}
            ref["instances"] = {uid: (path, pos) for uid, path, pos in s.execute(
                select(Instance.sop_instance_uid, Instance.path, Instance.position)
                .where(Instance.series_id == c.series_id)).all()}
            out.append(ref)
    return out


def _ordered(uids: list[str], instances: dict[str, tuple[str, Any]]) -> list[int]:
    """Indices of `uids` sorted along the slice normal (the order a NIfTI volume's z axis needs)."""
    pos = [instances[u][1] for u in uids]
    if any(p is None or len(p) != 3 for p in pos):
        raise ValueError("a slice has no indexed position")
    arr = np.asarray(pos, float)
    axis = arr[-1] - arr[0]
    norm = float(np.linalg.norm(axis))
    if norm == 0.0:
        raise ValueError("the slices share one position")
    return list(np.argsort(arr @ (axis / norm), kind="stable"))


def _write_case(spool: Spool, ref: dict[str, Any], out: Path) -> Case:
    import SimpleITK as sitk

    mask, uids = read_mask(spool, ref["mask_path"])
    instances = ref["instances"]
    missing = [u for u in uids if u not in instances or not spool.path(instances[u][0]).is_file()]
    if missing:
        raise ValueError(f"{len(missing)} of its {len(uids)} slices are no longer in the spool (purged?)")
    order = _ordered(uids, instances)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(spool.path(instances[uids[i]][0])) for i in order])
    image = reader.Execute()
    hu = sitk.Cast(image, sitk.sitkInt16)
    label = sitk.GetImageFromArray(np.ascontiguousarray(mask[order]).astype(np.uint8))
    if label.GetSize() != hu.GetSize():
        raise ValueError(f"mask {label.GetSize()} and volume {hu.GetSize()} differ")
    label.CopyInformation(hu)
    d = out / ref["case_id"]
    d.mkdir(parents=True, exist_ok=True)
    for name, img in (("image.nii.gz", hu), ("mask.nii.gz", label)):
        tmp = d / f".{name}.tmp.nii.gz"
        sitk.WriteImage(img, str(tmp), True)
        os.replace(tmp, d / name)
    oc = ref["outcome"]
    sx, sy, sz = (float(v) for v in hu.GetSpacing())
    return Case(ref["case_id"], None if oc is None else int(oc["expansion"]),
                None if oc is None else round(oc["followup_ml"], 3), None if oc is None else round(oc["growth_ml"], 3),
                None if oc is None else round(oc["hours"], 2), ref["patient"], ref["model_version"], ref["dice"],
                ref["hexnode_ml"], ref["reference_ml"], ref["received_at"], len(uids), (sx, sy, sz))


def export(store: Store, spool: Spool, out: Path) -> Exported:
    """Write the site data set to `out` (created; cases already there are overwritten)."""
    out.mkdir(parents=True, exist_ok=True)
    cases: list[Case] = []
    skipped: list[Skipped] = []
    for ref in _references(store):
        try:
            cases.append(_write_case(spool, ref, out))
        except Exception as exc:  # one case's missing files or odd geometry never stops the export
            reason = str(exc) if isinstance(exc, ValueError) else f"{type(exc).__name__}"
            skipped.append(Skipped(ref["case_id"], reason))
            log.warning("case %s not exported: %s", ref["case_id"], reason)
    _atomic_text(out / "labels.csv", _labels_csv(cases))
    manifest = {
        "format": "hexnode site data set",
        "layout": "hexnode train --data DIR (hexnode/train/data.py): labels.csv, <case_id>/image.nii.gz, "
                  "<case_id>/mask.nii.gz",
        "exported_utc": utcnow().isoformat(timespec="seconds") + "Z",
        "cases": [asdict(c) for c in cases],
        "skipped": [asdict(k) for k in skipped],
        "note": "he_label null (empty in labels.csv): no follow-up outcome yet, a segmentation case only",
    }
    _atomic_text(out / "manifest.json", json.dumps(manifest, indent=1) + "\n")
    return Exported(cases, skipped)


def _labels_csv(cases: list[Case]) -> str:
    fh = io.StringIO(newline="")
    w = csv.writer(fh, lineterminator="\n")
    w.writerow(["case_id", "he_label", "followup_volume_ml"])
    for c in cases:
        w.writerow([c.case_id, "" if c.he_label is None else c.he_label, "" if c.followup_volume_ml is None else c.followup_volume_ml])
    return fh.getvalue()


def _atomic_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def run_dataset(args: argparse.Namespace) -> int:
    """`hexnode dataset export DIR`."""
    from hexnode.config import load_config
    from hexnode.store.db import open_existing

    cfg = load_config(getattr(args, "config", None))
    store = open_existing(cfg.database_url)  # an export of a new, empty database would say "no cases"
    try:
        done = export(store, Spool(cfg.spool_path), Path(args.dir))
    finally:
        store.dispose()
    print(f"wrote {len(done.cases)} cases to {args.dir} ({done.labelled} with a follow-up outcome in labels.csv); "
          f"{len(done.skipped)} skipped", file=sys.stderr)
    for k in done.skipped:
        print(f"  {k.case_id}: {k.reason}", file=sys.stderr)
    return 0
