"""One series' files → result objects: the part of the pipeline the worker and `hexnode run` share.

load_volume → Models.analyse → build_results, or build_not_analysed when the series was rejected
(by select, or by load_volume) — never a crash for bad input; and a study's one "not analysed"
report when none of its series can be analysed (`produce_study`). No database, no network.
"""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from pydicom.dataset import Dataset

from hexnode.pipeline.contracts import Analyser, IncompleteCoverage, NotAnalysable, Prediction
from hexnode.pipeline.load import load_volume
from hexnode.series.header import VolumeError, read_header

if TYPE_CHECKING:
    from hexnode.report.study import PreviousAnswer

log = logging.getLogger(__name__)


@dataclass
class Produced:
    """The outcome for one series: result objects ([SEG, SR, SC]) or a not-analysed set ([SR, SC])."""

    datasets: list[Dataset]
    prediction: Prediction | None = None  # None: not analysed
    reason: str | None = None  # why not analysed
    # why not analysed, for notifications (hexnode/notify): "incomplete_coverage" | "sender_stopped" | None
    cause: str | None = None
    notes: tuple[str, ...] = ()
    timings: dict[str, float] = field(default_factory=dict)
    shape: tuple[int, int, int] | None = None
    key: KeySlice | None = None  # an analysed series' key slice (the follow-up report shows it)

    @property
    def analysed(self) -> bool:
        return self.prediction is not None


@dataclass(frozen=True)
class KeySlice:
    """The slice with the largest hematoma area (the middle one without blood): HU, mask, pixel
    spacing (row, column mm), its index and header. Kept for the follow-up report's side-by-side."""

    hu: np.ndarray  # int16 (rows, cols)
    mask: np.ndarray  # bool (rows, cols)
    spacing: tuple[float, float]
    index: int
    n_slices: int
    sop_instance_uid: str  # the CT image (or multi-frame instance) the slice comes from


def key_slice_of(hu: np.ndarray, mask: np.ndarray, spacing: tuple[float, float, float],
                 headers: Sequence[Dataset]) -> KeySlice:
    from hexnode.report.frames import slice_source
    from hexnode.report.render import key_slice

    k = key_slice(mask)
    hu_k = np.clip(np.rint(hu[k]), -32768, 32767).astype(np.int16)
    source, _frame = slice_source(headers, k)
    return KeySlice(hu_k, mask[k].astype(bool), (float(spacing[1]), float(spacing[0])), k, int(hu.shape[0]),
                    str(source.SOPInstanceUID))


def kind_of(ds: Dataset) -> str:
    """SEG | SR | SC: the kind column of the results table."""
    modality = str(ds.get("Modality", "")).upper()
    return modality if modality in ("SEG", "SR") else "SC"


def encode(ds: Dataset) -> bytes:
    """A dataset as a DICOM Part 10 file in memory (written to the spool atomically by the caller)."""
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def headers_of(paths: Sequence[Path]) -> list[Dataset]:
    """Readable headers of a series in instance order, for a not-analysed report."""
    out = []
    for p in paths:
        try:
            out.append(read_header(p))
        except VolumeError:
            continue
    out.sort(key=lambda d: (_instance_number(d), str(d.get("SOPInstanceUID", ""))))
    return out


def _instance_number(ds: Dataset) -> int:
    """Instance Number for ordering; 0 when absent or not a number (exports drop or mangle it)."""
    try:
        return int(ds.get("InstanceNumber", 0) or 0)
    except (TypeError, ValueError):
        return 0


def not_analysed(paths: Sequence[Path], reason: str, models: Analyser, *, revision: int = 0,
                 timings: dict[str, float] | None = None) -> Produced:
    from hexnode.report import build_not_analysed

    t = time.perf_counter()
    sources = headers_of(paths)
    if not sources:
        raise VolumeError(f"{reason}; and no readable header to address a report to")
    datasets = build_not_analysed(sources, reason, models.info, revision=revision)
    timings = dict(timings or {})
    timings["report"] = time.perf_counter() - t
    return Produced(datasets=datasets, reason=reason, timings=timings)


def header_words(ds: Dataset) -> tuple[str, ...]:
    """What a series' header says in words about what it shows (the analyser's hints)."""
    words = [str(ds.get(k, "") or "") for k in ("SeriesDescription", "ProtocolName", "StudyDescription",
                                                 "RequestedProcedureDescription", "ImageComments")]
    if "ContrastBolusAgent" in ds:
        words.append(f"agent:{ds.get('ContrastBolusAgent', '') or ''}")
    return tuple(w for w in words if w)


def _stopped_reason(stopped: str, why: str) -> str:
    return f"the sender stopped part-way: {stopped} ({why})"


def produce(paths: Sequence[Path], models: Analyser, *, revision: int = 0, selection_note: str | None = None,
            rejected: str | None = None, stopped: str | None = None) -> Produced:
    """Analyse the series in `paths` (or report `rejected` as not analysed).

    `stopped`: the sender stopped part-way while sending this series (what the receiver recorded,
    e.g. "10 instances arrived before the association was aborted"). The series is then analysed
    only if it is whole by positions and coverage; otherwise the report says the sender stopped."""
    from hexnode.report import build_results

    if rejected is not None:
        return not_analysed(paths, rejected, models, revision=revision)
    timings: dict[str, float] = {}
    t = time.perf_counter()
    try:
        vol = load_volume(paths)
    except VolumeError as exc:
        timings["load"] = time.perf_counter() - t
        reason = exc.reason if stopped is None else _stopped_reason(stopped, exc.reason)
        out = not_analysed(paths, reason, models, revision=revision, timings=timings)
        out.cause = None if stopped is None else "sender_stopped"
        return out
    timings["load"] = time.perf_counter() - t
    notes = vol.notes
    if stopped is not None:  # whole after all (the sender resent the rest): say so in the report
        notes = (*notes, f"the sender stopped part-way ({stopped}); the series is whole by slice positions and coverage")

    try:
        analysis = models.analyse(vol.hu, vol.spacing, notes=notes, extents=vol.extents, head_up=vol.head_up,
                                  hints=header_words(vol.headers[0]) if vol.headers else (),
                                  orientation=vol.orientation)
    except NotAnalysable as exc:
        # Deterministic for this series and model: a retry would give the same answer.
        del vol
        reason = exc.reason
        if stopped is not None and isinstance(exc, IncompleteCoverage):
            reason = _stopped_reason(stopped, exc.reason)
        out = not_analysed(paths, reason, models, revision=revision, timings=timings)
        if isinstance(exc, IncompleteCoverage):
            out.cause = "sender_stopped" if stopped is not None else "incomplete_coverage"
        return out
    for stage, seconds in analysis.timings.items():
        if stage != "total":
            timings[stage] = float(seconds)
    timings["analyse"] = float(analysis.timings.get("total", sum(analysis.timings.values())))
    t = time.perf_counter()
    datasets = build_results(vol.headers, vol.hu, analysis.mask, analysis.prediction, revision=revision,
                             selection_note=selection_note)
    timings["report"] = time.perf_counter() - t
    out = Produced(datasets=datasets, prediction=analysis.prediction, notes=notes, timings=timings, shape=vol.shape,
                   key=key_slice_of(vol.hu, analysis.mask, vol.spacing, vol.headers))
    del vol, analysis  # the volume is the biggest thing a worker holds: free it before the next job
    return out


@dataclass(frozen=True)
class ListedSeries:
    """A series of a study as its study-level report lists it: why it was not analysed, its files."""

    series_uid: str
    reason: str
    paths: tuple[Path, ...]


def produce_study(listed: Sequence[ListedSeries], models: Analyser, *, revision: int = 0,
                  previous: PreviousAnswer | None = None) -> Produced:
    """One "not analysed" SR + SC for the study, listing each series that arrived and why;
    `previous`: the study's answer the PACS holds, which this one supersedes."""
    from hexnode.report.study import Listed, build_study_not_analysed, headline
    from hexnode.series.info import SeriesInfo
    from hexnode.series.ranking import describe
    from hexnode.store.spool import uid_hash

    t = time.perf_counter()
    rows: list[Listed] = []
    sources = []
    for x in listed:
        headers = headers_of(x.paths)
        if not headers:
            rows.append(Listed(f"{uid_hash(x.series_uid)} (unreadable)", x.reason))
            continue
        info = SeriesInfo(series_uid=x.series_uid, header=headers[len(headers) // 2], instance_count=len(headers))
        rows.append(Listed(describe(info), x.reason))
        sources += headers
    if not sources:
        raise VolumeError("no readable header in the study to address a report to")
    datasets = build_study_not_analysed(sources, rows, models.info, revision=revision, previous=previous)
    return Produced(datasets=datasets, reason=headline(rows), timings={"report": time.perf_counter() - t})
