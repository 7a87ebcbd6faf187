"""The study-level "not analysed" report: ONE SR + SC for a study none of whose series could be
analysed, listing what arrived and why each was not analysed (docs/architecture.md §4).

Its UIDs derive from the study, not from a series: (``study:`` + Study Instance UID, model version,
kind, study revision), so a retry rebuilds the same objects and a study that re-opens gets new ones.
Whatever answer the PACS held before for the study is named as the SR's predecessor
(`name_predecessor`, also used when a later series' result supersedes this report).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.uid import Comprehensive3DSRStorage

from hexnode.pipeline.contracts import ModelInfo
from hexnode.report.common import addressable, burned_in_warning, clinical_use_note, model_label
from hexnode.report.not_analysed import not_analysed_comment, not_analysed_report
from hexnode.report.render import WARN_RGB, Line, annotate, blank
from hexnode.report.sc import sc_dataset
from hexnode.report.sr import document
from hexnode.report.uids import derive_uid

# Lines the SC has room for; the SR lists every series.
SC_MAX_SERIES = 8


@dataclass(frozen=True)
class Listed:
    """One series that arrived: how a reader recognises it, and why it was not analysed."""

    label: str  # e.g. "#4 ('Head 5mm bone', kernel H70h, 5 mm, 12 slices)"
    reason: str

    @property
    def line(self) -> str:
        return f"series {self.label}: {self.reason}"


@dataclass(frozen=True)
class PreviousAnswer:
    """The SR the PACS holds as the study's previous answer (a result or a "not analysed")."""

    study_uid: str
    series_uid: str
    sop_uid: str


def study_key(study_uid: str) -> str:
    # No Series Instance UID starts with a letter: the study's UIDs cannot meet a series' UIDs.
    return f"study:{study_uid}"


def study_uids(study_uid: str, model_version: str, revision: int) -> dict[str, str]:
    """The SR and SC SOP Instance UIDs of the study report at `revision`."""
    key = study_key(study_uid)
    return {"SR": derive_uid(key, model_version, "sr", revision), "SC": derive_uid(key, model_version, "sc", revision)}


def name_predecessor(sr: Dataset, previous: PreviousAnswer) -> None:
    """Add `previous` to the SR's Predecessor Documents Sequence (Hierarchical SOP Instance Reference)."""
    existing = list(sr.get("PredecessorDocumentsSequence", []) or [])
    for study in existing:
        for series in study.get("ReferencedSeriesSequence", []):
            if any(ref.ReferencedSOPInstanceUID == previous.sop_uid for ref in series.ReferencedSOPSequence):
                return
    ref = Dataset()
    ref.ReferencedSOPClassUID = Comprehensive3DSRStorage
    ref.ReferencedSOPInstanceUID = previous.sop_uid
    series = Dataset()
    series.SeriesInstanceUID = previous.series_uid
    series.ReferencedSOPSequence = [ref]
    item = Dataset()
    item.StudyInstanceUID = previous.study_uid
    item.ReferencedSeriesSequence = [series]
    sr.PredecessorDocumentsSequence = [*existing, item]


def headline(listed: Sequence[Listed]) -> str:
    """One series: its own reason. Several: the reason that matters."""
    return listed[0].reason if len(listed) == 1 else "no axial soft-tissue head non-contrast CT in this study"


def supersedes_study_text(revision: int, previous: PreviousAnswer | None) -> str:
    if previous is None:
        return ""
    return (f"Corrected report (revision {revision}) after the study changed: it supersedes hexnode's "
            "previous answer for this study.")


def build_study_not_analysed(
    sources: Sequence[Dataset],
    listed: Sequence[Listed],
    model: ModelInfo,
    *,
    revision: int = 0,
    previous: PreviousAnswer | None = None,
) -> list[Dataset]:
    """[SR, SC] saying that no series of the study was analysed, and why each was not.

    `sources`: readable headers of the listed series (evidence; the first addresses the report).
    """
    if not listed:
        raise ValueError("a study-level report lists at least one series")
    sources = addressable(sources)
    study_uid = str(sources[0].StudyInstanceUID)
    key = study_key(study_uid)
    reason = headline(listed)
    comments = [
        not_analysed_comment(reason),
        f"Series received in this study ({len(listed)}), none analysed:",
        *(x.line for x in listed),
        clinical_use_note(model),
        supersedes_study_text(revision, previous),
    ]
    report = not_analysed_report(key, model, revision, sources, comments)
    sr = document(sources, report, model, revision=revision, not_analysed=True, uid_key=key)
    if previous is not None:
        name_predecessor(sr, previous)
    sc = _message_sc(sources, reason, listed, model, revision=revision, key=key, corrected=previous is not None)
    return [sr, sc]


def _message_sc(sources: Sequence[Dataset], reason: str, listed: Sequence[Listed], model: ModelInfo, *,
                revision: int, key: str, corrected: bool) -> hd.sc.SCImage:
    top = [Line("NOT ANALYSED", 28, WARN_RGB), Line(f"Reason: {reason}", 18)]
    if len(listed) > 1:
        top.append(Line(f"Series received in this study ({len(listed)}):", 15))
        top += [Line(x.line, 13) for x in listed[:SC_MAX_SERIES]]
        if len(listed) > SC_MAX_SERIES:
            top.append(Line(f"... and {len(listed) - SC_MAX_SERIES} more (listed in the SR)", 13))
    else:
        top.append(Line(f"Source: series {listed[0].label}", 15))
    if corrected:
        top.append(Line(f"Corrected report (revision {revision}): supersedes the previous answer", 14, WARN_RGB))
    bottom = [
        Line("No hematoma expansion result will follow for this study.", 14),
        Line(f"Model {model_label(model)}", 14),
        Line(burned_in_warning(model), 15, WARN_RGB),
    ]
    pixels = annotate(blank(), top, bottom)
    return sc_dataset(sources, pixels, model, revision=revision, not_analysed=True, key=None, uid_key=key)
