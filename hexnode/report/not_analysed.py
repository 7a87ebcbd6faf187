"""'Not analysed' report: an SR and an SC saying that a series was rejected or failed, and why.

The reader must never wait for a result that will not come (docs/architecture.md §4). The SR is the same TID
1500 document kind as a result, with one measurement group whose qualitative evaluation is
"analysis status: not analysed" and the reason as a text comment; it uses the same SR/SC UID slot
as a result would, so a later corrected revision supersedes it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import highdicom as hd
from pydicom.dataset import Dataset

from hexnode.pipeline.contracts import ModelInfo
from hexnode.report import codes
from hexnode.report.common import addressable, clinical_use_note, first_image
from hexnode.report.sc import build_message_sc, source_line
from hexnode.report.sr import (
    TRACKING_LABEL,
    algorithm_id,
    document,
    measurement_report,
    supersedes_text,
)
from hexnode.report.uids import derive_uid


def not_analysed_comment(reason: str) -> str:
    return f"Not analysed: {reason}"


def not_analysed_report(
    key: str, model: ModelInfo, revision: int, sources: Sequence[Dataset], comments: Iterable[str]
) -> hd.sr.ContentSequence:
    """The TID 1500 report of a "not analysed" answer: one group whose status is Not analysed,
    tracked by a UID derived from `key` (a series UID, or a study's key), the image library of
    `sources` and the `comments`."""
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=derive_uid(key, model.version, "tracking", revision), identifier=TRACKING_LABEL
        ),
        algorithm_id=algorithm_id(model),
        qualitative_evaluations=[
            hd.sr.QualitativeEvaluation(name=codes.ANALYSIS_STATUS, value=codes.NOT_ANALYSED)
        ],
    )
    return measurement_report(model, [group], sources, comments)


def build_not_analysed_sr(
    sources: Sequence[Dataset], reason: str, model: ModelInfo, *, revision: int = 0
) -> hd.sr.Comprehensive3DSR:
    src = first_image(sources)
    comments = [
        not_analysed_comment(reason),
        source_line(src),
        clinical_use_note(model),
        supersedes_text(revision) or "",
    ]
    report = not_analysed_report(str(src.SeriesInstanceUID), model, revision, sources, comments)
    return document(sources, report, model, revision=revision, not_analysed=True)


def build_not_analysed(
    sources: Sequence[Dataset], reason: str, model: ModelInfo, *, revision: int = 0
) -> list[Dataset]:
    """[SR, SC] telling the reader that `sources`' series was not analysed, and why.

    `sources` are whatever headers of the series could be read (images or not, any order).
    """
    sources = addressable(sources)
    return [
        build_not_analysed_sr(sources, reason, model, revision=revision),
        build_message_sc(sources, reason, model, revision=revision),
    ]
