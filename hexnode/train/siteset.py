"""A site's data set for fine-tuning (`hexnode train --site DIR`, `hexnode models compare`): its
cases, which of them are held out, and the digest that names the data set in a model card.

The folder is the layout `hexnode train --data` reads (`hexnode.train.data`): `labels.csv` and one
folder per case (NIfTI image + mask, or DICOM + SEG). In a site's export the outcome is often not
known yet, so `he_label` may be empty: such a case trains and measures the segmentation only.

Held out: a case whose key (its pseudonymous case id) hashes below `HOLDOUT_SHARE` is never trained
on; training and comparison read the same rule, so the comparison is always on cases the candidate
never saw, and a case keeps its side when more cases are added to the folder later.
"""

from __future__ import annotations

import csv
import hashlib
from dataclasses import dataclass
from pathlib import Path

#: the share of a site's cases held out for the comparison (by key hash, so about this share)
HOLDOUT_SHARE = 0.25
#: what the key is hashed with: a different salt would move cases between the sides
HOLDOUT_SALT = "hexnode-site-holdout-v1"
#: the fusion stage is recalibrated on the site only with at least this many training cases with
#: blood, a known outcome and a predicted mask, and at least `MIN_PER_CLASS` of each class (fewer:
#: the Platt fit is noise)
MIN_OUTCOMES = 30
MIN_PER_CLASS = 5


@dataclass(frozen=True)
class SiteCase:
    case_id: str
    label: int | None  # the expansion outcome, None where not known (yet)
    held_out: bool


@dataclass(frozen=True)
class SiteSet:
    root: Path
    cases: tuple[SiteCase, ...]
    digest: str  # sha256 of every file of the data set, by relative path

    @property
    def train(self) -> list[SiteCase]:
        return [c for c in self.cases if not c.held_out]

    @property
    def held_out(self) -> list[SiteCase]:
        return [c for c in self.cases if c.held_out]


def is_held_out(case_id: str) -> bool:
    h = hashlib.sha256(f"{HOLDOUT_SALT}:{case_id}".encode()).digest()
    return int.from_bytes(h[:8], "big") / 2.0**64 < HOLDOUT_SHARE


def _label(text: str | None) -> int | None:
    text = (text or "").strip()
    return None if text == "" else int(float(text))


def read_site(root: Path) -> SiteSet:
    """The site's cases (labels.csv order does not matter: sorted by key) and the data set's digest."""
    root = Path(root)
    cases: list[SiteCase] = []
    with open(root / "labels.csv", newline="") as fh:
        for row in csv.DictReader(fh):
            cid = row["case_id"].strip()
            if not (root / cid).is_dir():
                raise ValueError(f"{root / 'labels.csv'} names {cid!r}, which has no folder")
            cases.append(SiteCase(cid, _label(row.get("he_label")), is_held_out(cid)))
    if not cases:
        raise ValueError(f"{root / 'labels.csv'} lists no cases")
    cases.sort(key=lambda c: c.case_id)
    return SiteSet(root, tuple(cases), dataset_digest(root, [c.case_id for c in cases]))


def dataset_digest(root: Path, case_ids: list[str]) -> str:
    """sha256 over labels.csv and every file under the listed cases' folders (relative path and
    content hash of each, sorted): the same files give the same digest wherever they lie."""
    from hexnode.models.registry import sha256_file

    h = hashlib.sha256()
    files = [root / "labels.csv"] + sorted(p for cid in case_ids for p in (root / cid).rglob("*") if p.is_file())
    for p in files:
        h.update(f"{p.relative_to(root).as_posix()}\0{sha256_file(p)}\n".encode())
    return h.hexdigest()
