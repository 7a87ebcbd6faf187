"""The study's one answer (route's second step each tick): which complete series is analysed.

Completed series of one study are decided together once the study has settled (no instance of it
for `[series] study_settle_seconds`; a PACS routing a whole study sends one series after another),
but the best complete series so far is queued at once and only its answer waits
(`hexnode.route.hold`: held unless it is already the best kind the rules can choose; superseded,
never sent, when a better series completes before the study settles).
The study is the unit of the answer (`hexnode.series.answer`, `hexnode.route.study`): the chosen
series gets a job and its result set; every other series is closed as `rejected` with its reason
and no report. A study with no analysable series gets one job for a study-level "not analysed"
SR + SC listing what arrived; localizers, dose reports and objects that are not CT images never
cause one. `[report] per_series_not_analysed = true` gives each rejected CT series its own report
instead. A late series re-opens its study (hexnode.route.completion) and its answer names the
study's previous answer as its predecessor.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from pydicom.dataset import Dataset
from sqlalchemy import select
from sqlalchemy.orm import Session

from hexnode.config import Config
from hexnode.route.hold import best_kind, held_jobs, release, supersede
from hexnode.route.study import enqueue_study_job, study_jobs, supersede_study_jobs
from hexnode.series.answer import never_candidate
from hexnode.series.header import VolumeError, read_header
from hexnode.series.info import SeriesInfo
from hexnode.series.ranking import describe
from hexnode.series.select import Decision, Selector
from hexnode.store.answers import answer_of
from hexnode.store.db import Instance, Job, Series, Study
from hexnode.store.queue import enqueue_job, series_instances, transition
from hexnode.store.spool import Spool, uid_hash

log = logging.getLogger(__name__)

# A complete series waits for siblings of its study still arriving, but not longer than this.
STUDY_WAIT_FACTOR = 3.0
STUDY_WAIT_MIN_SECONDS = 30.0

PASSED_OVER = "another series of the study was analysed"


@dataclass
class Tick:
    """What one check did (for logs and tests); series named by UID hash only."""

    completed: list[str] = field(default_factory=list)
    queued: list[str] = field(default_factory=list)
    not_analysed: list[str] = field(default_factory=list)  # queued for a per-series "not analysed" report
    study_reports: list[str] = field(default_factory=list)  # study UIDs queued for a study-level one
    closed: list[str] = field(default_factory=list)  # rejected without a report
    waiting: list[str] = field(default_factory=list)  # complete, waiting for study siblings
    reopened: list[str] = field(default_factory=list)  # instances after the decision: a new revision
    rejected_at_once: list[str] = field(default_factory=list)  # not CT: never a candidate
    held: list[str] = field(default_factory=list)  # queued before the study settled, answer held
    released: list[str] = field(default_factory=list)  # the study settled: the held answer goes out
    superseded: list[str] = field(default_factory=list)  # a held answer a better series replaced


def _info(s: Session, series: Series, spool: Spool) -> SeriesInfo | str:
    """SeriesInfo from what receive indexed (the series header with the middle instance's own
    values), or from the middle instance's spooled header for a series indexed before the header
    was; or the reason it cannot be read."""
    instances = series_instances(s, series.id)
    if not instances:
        return "no instances"
    # the middle instance: the first may be a stray of another acquisition more often than the middle
    mid = instances[len(instances) // 2]
    header = indexed_header(series, mid)
    if header is None:
        try:
            header = read_header(spool.path(mid.path))
        except (VolumeError, ValueError) as exc:
            return str(exc)
    return SeriesInfo(series_uid=series.series_uid, header=header, instance_count=len(instances), ref=series.id)


def indexed_header(series: Series, mid: Instance) -> Dataset | None:
    """The series header receive indexed, with the values that vary per instance taken from the
    `mid` instance's row (so a stray first instance does not decide them); None if not indexed."""
    if series.header is None:
        return None
    try:
        ds = Dataset.from_json(series.header)
    except Exception:  # written by receive from a parsed header; unreadable only if corrupted since
        return None
    per_instance: dict[str, Any] = {
        "SOPClassUID": mid.sop_class_uid, "SOPInstanceUID": mid.sop_instance_uid,
        "InstanceNumber": mid.instance_number, "ImagePositionPatient": mid.position,
        "ImageOrientationPatient": mid.orientation, "Rows": mid.rows, "Columns": mid.columns,
        "NumberOfFrames": mid.number_of_frames, "SliceThickness": mid.slice_thickness,
        "ImagesInAcquisition": mid.images_in_acquisition,
        "ImageType": mid.image_type.split("\\") if mid.image_type else None,
    }
    for keyword, value in per_instance.items():
        if value is None:
            if keyword in ds:
                del ds[keyword]  # absent or unreadable in that instance: as its own header would say
        else:
            setattr(ds, keyword, value)
    return ds


def _report_worthy(series: Series, reason: str) -> bool:
    """A per-series "not analysed" report (`[report] per_series_not_analysed`) only for CT images."""
    if reason.startswith(PASSED_OVER):
        return False
    return (series.modality or "").upper() == "CT"


@dataclass
class _Verdict:
    """One series of the deciding group: its header (None: unreadable) and what select said."""

    series: Series
    info: SeriesInfo | None
    reason: str = ""
    decision: Decision | None = None

    @property
    def never(self) -> bool:
        return never_candidate(self.series, self.decision)


def _close(s: Session, cfg: Config, v: _Verdict, reason: str, tick: Tick) -> None:
    """Rejected: no report, unless the site wants one per rejected CT series."""
    series = v.series
    series.selected = False
    series.reason = reason
    name = uid_hash(series.series_uid)
    if cfg.report.per_series_not_analysed and not v.never and _report_worthy(series, reason):
        enqueue_job(s, series, f"not analysed: {reason}")
        tick.not_analysed.append(series.series_uid)
        log.info("series %s not analysed (report of its own): %s", name, reason)
        return
    transition(s, series, "rejected", reason)
    tick.closed.append(series.series_uid)
    log.info("series %s rejected without report%s: %s", name, " (never a candidate)" if v.never else "", reason)


def _chosen_before(siblings: list[Series], group: list[Series]) -> list[Series]:
    """Series of the study chosen by an earlier decision whose answer still stands or is coming.

    One whose own answer was "not analysed" (the worker found it incomplete) does not stand in the
    way: a later analysable series of the study then gets chosen and its result supersedes it."""
    return [x for x in siblings if x.selected and x not in group and x.state not in ("rejected", "failed")]


def _passed_over(s: Session, cfg: Config, spool: Spool, standing: list[Series], series: Series) -> str:
    """Why an accepted series is closed because another one answers for the study: the answering
    series by name when both came in the same sending of the study (no settle-long gap between
    them: it was chosen early, hexnode.route.hold), else "before" (an answer already stood)."""
    settle = timedelta(seconds=cfg.series.study_settle_seconds)
    for x in standing:
        if series.first_instance_at - x.last_instance_at < settle:
            info = _info(s, x, spool)
            if isinstance(info, SeriesInfo):
                return f"{PASSED_OVER} ({describe(info)})"
    return f"{PASSED_OVER} before"


def _decide_study(s: Session, cfg: Config, spool: Spool, selector: Selector, study_id: int,
                  group: list[Series], siblings: list[Series], tick: Tick) -> None:
    verdicts = _verdicts(s, spool, selector, group)
    standing = _chosen_before(siblings, group)
    if standing:
        for v in verdicts:
            accepted = v.decision is not None and v.decision.accepted
            _close(s, cfg, v, _passed_over(s, cfg, spool, standing, v.series) if accepted else v.reason, tick)
        return
    candidates = [v for v in verdicts if v.info is not None and not v.never]
    choice = selector.choose([v.info for v in candidates if v.info is not None])
    study = s.get(Study, study_id)
    assert study is not None
    for v in verdicts:
        if choice.chosen is not None and v.info is choice.chosen:
            series = v.series
            series.selected = True
            series.reason = choice.note  # the report says which series and why
            enqueue_job(s, series, choice.note)
            tick.queued.append(series.series_uid)
            log.info("series %s queued: %s", uid_hash(series.series_uid), _no_desc(choice.note))
        elif v.info is None or v.never:
            _close(s, cfg, v, v.reason, tick)
        else:
            _close(s, cfg, v, choice.rejected.get(v.info.series_uid, v.reason or "not selected"), tick)
    if choice.chosen is not None:
        supersede_study_jobs(s, study_id, "a series of the study was chosen")
        return
    if cfg.report.per_series_not_analysed:
        return  # each rejected CT series was reported on its own
    if any(x not in group and x.state in ("received", "complete") for x in siblings):
        # A sibling still to be decided (a trickling series, a re-opened chosen one) may yet be the
        # answer: its decision makes the study report if it is not.
        log.info("study %s: nothing analysable yet; waiting for the rest of the study", uid_hash(study.study_uid))
        return
    worthy = [v.series for v in verdicts if not v.never] + _worthy_before(s, spool, selector, siblings, group)
    if not worthy:
        return  # nothing a reader waits for (only localizers, dose reports ...)
    if answer_of(study).kind == "not analysed" and not study_jobs(s, study_id, ("queued",)):
        # The PACS already has this study's "not analysed" answer: a late series that changes
        # nothing (another bone reconstruction) adds nothing to the radiologist's study.
        log.info("study %s: still no analysable series; its answer stands", uid_hash(study.study_uid))
        return
    if study_jobs(s, study_id, ("running",)):
        log.info("study %s: a study report is being built; its answer stands", uid_hash(study.study_uid))
        return
    anchor = _anchor(s, worthy + [v.series for v in verdicts])  # under a series a reader knows
    if anchor is None:
        log.warning("study %s: no series to file the study report under", uid_hash(study.study_uid))
        return
    job = enqueue_study_job(s, anchor, study, "study not analysed: no analysable series")
    tick.study_reports.append(study.study_uid)
    log.info("study %s: no analysable series; one study report queued (job %d, revision %d)",
             uid_hash(study.study_uid), job.id, job.study_revision or 0)


def _worthy_before(s: Session, spool: Spool, selector: Selector, siblings: list[Series],
                   group: list[Series]) -> list[Series]:
    """Series decided earlier without an answer for the study (it waited for this group) that a
    reader may have waited on; re-judged from one header each (only on this rare path)."""
    out = []
    for x in siblings:
        if x in group or x.state != "rejected" or x.selected is not False:
            continue
        info = _info(s, x, spool)
        decision = None if isinstance(info, str) else selector.decide(info)
        if not never_candidate(x, decision):
            out.append(x)
    return out


def _anchor(s: Session, candidates: list[Series]) -> Series | None:
    """The first series without a job at its current revision (jobs are unique per series revision)."""
    for x in candidates:
        taken = s.execute(select(Job.id).where(Job.series_id == x.id, Job.revision == x.revision)).first()
        if taken is None:
            return x
    return None


def select_complete(s: Session, cfg: Config, spool: Spool, selector: Selector, now: datetime, tick: Tick) -> None:
    """Decide the complete, undecided series study by study: the best one so far at once (its
    answer held while a better one may still come, hexnode.route.hold), the rest once the study
    has settled."""
    pending = s.execute(
        select(Series).where(Series.state == "complete", Series.selected.is_(None)).order_by(Series.id)
    ).scalars().all()
    by_study: dict[int, list[Series]] = defaultdict(list)
    for series in pending:
        by_study[series.study_id].append(series)
    held = held_jobs(s)
    wait = timedelta(seconds=max(STUDY_WAIT_MIN_SECONDS, STUDY_WAIT_FACTOR * cfg.series.stable_seconds,
                                 cfg.series.study_settle_seconds))
    settled_before = now - timedelta(seconds=cfg.series.study_settle_seconds)
    for study_id in sorted(set(by_study) | set(held)):
        group = by_study.get(study_id, [])
        provisional = held.get(study_id)
        siblings = list(s.execute(select(Series).where(Series.study_id == study_id)).scalars().all())
        arriving = [x for x in siblings if x.state == "received"]
        oldest = min([x.state_at for x in group] + ([provisional[1].created_at] if provisional else []))
        # Settled: nothing of the study arrived for study_settle_seconds (a PACS routing a whole
        # study sends one series after another); a sibling still arriving is waited for, up to
        # `wait` (a trickling series must not hold the others forever).
        newest = max(x.last_instance_at for x in siblings)
        settled = not ((arriving and now - oldest < wait) or (newest > settled_before and now - oldest < wait))
        if provisional is None and settled:
            _decide_study(s, cfg, spool, selector, study_id, group, siblings, tick)
        else:
            _decide_early(s, cfg, spool, selector, study_id, group, provisional, siblings, settled, tick)


def _verdicts(s: Session, spool: Spool, selector: Selector, group: list[Series]) -> list[_Verdict]:
    out = []
    for series in group:
        info = _info(s, series, spool)
        if isinstance(info, str):
            out.append(_Verdict(series, None, info))
        else:
            d = selector.decide(info)
            out.append(_Verdict(series, info, d.reason, d))
    return out


def _decide_early(s: Session, cfg: Config, spool: Spool, selector: Selector, study_id: int, group: list[Series],
                  provisional: tuple[Series, Job] | None, siblings: list[Series], settled: bool, tick: Tick) -> None:
    """A study with a held answer, or one still settling: the best series so far is analysed now;
    a better one supersedes its held answer; the study's settling releases it."""
    held_series = provisional[0] if provisional else None
    if [x for x in _chosen_before(siblings, group) if x is not held_series]:
        # an answer that was never held stands: later series are passed over once the study settles
        if settled:
            _decide_study(s, cfg, spool, selector, study_id, group, siblings, tick)
        else:
            tick.waiting += [x.series_uid for x in group]
        return
    verdicts = _verdicts(s, spool, selector, group)
    pool = [v for v in verdicts if v.info is not None and not v.never]
    if held_series is not None:
        info = _info(s, held_series, spool)
        if isinstance(info, SeriesInfo):
            pool.append(_Verdict(held_series, info))
    choice = selector.choose([v.info for v in pool if v.info is not None])
    chosen = next((v for v in pool if choice.chosen is not None and v.info is choice.chosen), None)
    if chosen is not None and chosen.series is held_series and provisional is not None:
        if not settled:
            tick.waiting += [x.series_uid for x in group]
            return
        for v in verdicts:  # as _decide_study closes the rest of its group
            if v.info is None or v.never:
                _close(s, cfg, v, v.reason, tick)
            else:
                _close(s, cfg, v, choice.rejected.get(v.info.series_uid, v.reason or "not selected"), tick)
        release(s, spool, *provisional)
        tick.released.append(held_series.series_uid)
        log.info("series %s: the study settled; its held answer is released", uid_hash(held_series.series_uid))
        return
    if chosen is None:
        if settled and held_series is None:
            _decide_study(s, cfg, spool, selector, study_id, group, siblings, tick)
        elif settled and provisional is not None:
            release(s, spool, *provisional)  # its header became unreadable: what it answered stands
            tick.released.append(provisional[0].series_uid)
        else:
            tick.waiting += [x.series_uid for x in group]
        return
    if provisional is not None:
        reason = choice.rejected.get(provisional[0].series_uid, PASSED_OVER)
        dropped = supersede(s, provisional[0], provisional[1], reason)
        tick.superseded.append(provisional[0].series_uid)
        log.info("series %s: its held answer is superseded by series %s (%d objects never sent)",
                 uid_hash(provisional[0].series_uid), uid_hash(chosen.series.series_uid), dropped)
    if settled:
        _decide_study(s, cfg, spool, selector, study_id, group, siblings, tick)
        return
    series = chosen.series
    series.selected = True
    series.reason = choice.note
    job = enqueue_job(s, series, choice.note)
    job.held = chosen.info is None or not best_kind(selector, chosen.info)
    supersede_study_jobs(s, study_id, "a series of the study was chosen")
    tick.queued.append(series.series_uid)
    if job.held:
        tick.held.append(series.series_uid)
    tick.waiting += [x.series_uid for x in group if x is not series]
    log.info("series %s queued before the study settled (%s): %s", uid_hash(series.series_uid),
             "answer held until it settles" if job.held else "no better series can come", _no_desc(choice.note))


def _no_desc(note: str) -> str:
    # Series descriptions may carry free text; logs keep only the decision.
    return note.split(" (", 1)[0]
