"""Follow-up scans: which earlier scan of the same patient a new analysed NCCT is measured against.

The rule (README "Follow-up scans"):

* Patients are matched on Patient ID + Issuer of Patient ID, stored only as a keyed hash
  (`patient_key`: HMAC-SHA256 under the site secret); a series without a Patient ID is never linked.
* The first analysed scan of an episode is its **baseline**. A later analysed scan of the same
  patient, acquired `min_hours` .. `max_hours` after the baseline, is a **follow-up** of it and
  gives one outcome pair. Every later scan in that window is a follow-up of the same baseline
  (the metrics count the first one per baseline, the 24 h scan of the stroke protocol).
* A scan less than `min_hours` after the baseline is a **repeat** (a second reconstruction, a
  rescan after motion): recorded, no outcome, and it does not start an episode.
* A scan more than `max_hours` after the episode's baseline starts a new episode: it is a new
  baseline. So is a scan of a patient hexnode has not seen analysed.
* Times are the scans' own (Acquisition, else Series, else Study Date/Time), so the order in which
  a PACS sends them does not matter for the interval; a scan is only ever linked to a baseline
  acquired before it.

Pure functions: the worker's follow-up step (hexnode/pipeline/followup.py) reads the candidates from the
database and records the decision.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from pydicom.dataset import Dataset

BASELINE, FOLLOWUP, REPEAT = "baseline", "followup", "repeat"

# "expansion observed" definitions: (absolute ml, relative fraction); growth above either counts.
DEFINITIONS: dict[str, tuple[float, float]] = {"6ml-33pct": (6.0, 0.33), "12.5ml-33pct": (12.5, 0.33)}
# A follow-up volume below this share of the baseline (evacuation, resorption) is "decreased".
DECREASED_BELOW = 0.5


def patient_key(secret: str, patient_id: str | None, issuer: str | None) -> str | None:
    """HMAC-SHA256 (hex) of the patient's identity under the site secret; None without a Patient ID.

    The issuer is part of the identity: the same number from two assigning authorities is two
    patients. NUL-separated so that ("12", "3x") and ("123", "x") differ."""
    pid = (patient_id or "").strip()
    if not pid:
        return None
    if not secret:
        raise ValueError("no site secret: patient keys cannot be computed")
    msg = f"{pid}\0{(issuer or '').strip()}".encode()
    return hmac.new(secret.encode(), msg, hashlib.sha256).hexdigest()


def header_patient_key(secret: str, header: Dataset) -> str | None:
    return patient_key(secret, str(header.get("PatientID", "") or ""), str(header.get("IssuerOfPatientID", "") or ""))


def _dicom_datetime(date: object, time: object) -> datetime | None:
    d = str(date or "").strip()
    if len(d) != 8 or not d.isdigit():
        return None
    t = str(time or "").strip().split(".")[0].ljust(6, "0")[:6]
    if not t.isdigit():
        t = "000000"
    try:
        return datetime.strptime(d + t, "%Y%m%d%H%M%S")
    except ValueError:
        return None


def acquired_at(header: Dataset) -> datetime | None:
    """When the scan was made: Acquisition, else Series, else Study Date/Time (scanner local time)."""
    for date_kw, time_kw in (("AcquisitionDate", "AcquisitionTime"), ("SeriesDate", "SeriesTime"),
                             ("StudyDate", "StudyTime")):
        when = _dicom_datetime(header.get(date_kw), header.get(time_kw))
        if when is not None:
            return when
    return None


@dataclass(frozen=True)
class Window:
    min_hours: float = 3.0
    max_hours: float = 168.0


@dataclass(frozen=True)
class Candidate:
    """An earlier baseline scan of the same patient (from the database)."""

    scan_id: int
    acquired_at: datetime


@dataclass(frozen=True)
class Link:
    role: str  # baseline | followup | repeat
    baseline_id: int | None = None
    hours: float | None = None
    why: str = ""  # for the log: the rule that decided (no identifiers)


def link(when: datetime, baselines: Sequence[Candidate], window: Window) -> Link:
    """The role of a scan acquired at `when`, given the patient's baselines (any order)."""
    earlier = [c for c in baselines if c.acquired_at <= when]
    if not earlier:
        return Link(BASELINE, why="no earlier analysed scan of this patient: a new episode")
    latest = max(earlier, key=lambda c: c.acquired_at)
    hours = (when - latest.acquired_at).total_seconds() / 3600.0
    if hours < window.min_hours:
        return Link(REPEAT, latest.scan_id, hours,
                    f"{hours:.1f} h after the baseline, under min_hours {window.min_hours:g}: a repeat, no outcome")
    if hours > window.max_hours:
        return Link(BASELINE, None, hours,
                    f"{hours:.1f} h after the last baseline, over max_hours {window.max_hours:g}: a new episode")
    return Link(FOLLOWUP, latest.scan_id, hours, f"follow-up {hours:.1f} h after the baseline")


@dataclass(frozen=True)
class Growth:
    baseline_ml: float
    followup_ml: float
    growth_ml: float
    growth_pct: float | None  # None when the baseline had no measurable blood
    category: str  # "yes" | "no" | "decreased"
    definition: str

    @property
    def expansion(self) -> bool:
        return self.category == "yes"

    def line(self, hours: float) -> str:
        """`growth: +12.3 ml (+45 %) over 24.0 h; expansion: yes` (the sign always shown)."""
        pct = "n/a" if self.growth_pct is None else f"{self.growth_pct:+.0f} %"
        label = "no (decreased)" if self.category == "decreased" else self.category
        return f"growth: {self.growth_ml:+.1f} ml ({pct}) over {hours:.1f} h; expansion: {label}"


def growth(baseline_ml: float, followup_ml: float, definition: str = "6ml-33pct") -> Growth:
    """Growth and "expansion observed" by `definition`; a drop below half the baseline is
    "decreased" (evacuation or resorption), which is not the same finding as "no expansion"."""
    absolute, relative = DEFINITIONS[definition]
    b, f = max(float(baseline_ml), 0.0), max(float(followup_ml), 0.0)
    g = f - b
    pct = 100.0 * g / b if b > 0 else None
    if g > absolute or (b > 0 and g > relative * b):
        category = "yes"
    elif b > 0 and f < DECREASED_BELOW * b:
        category = "decreased"
    else:
        category = "no"
    return Growth(b, f, g, pct, category, definition)
