"""Series completion and selection: `hexnode route`, an APScheduler job in a process of its own.

It reads what receive indexed and writes the decisions (series states, jobs) to the same database;
it never talks to the receiver, so either can be restarted, or run on another machine with the
database and the spool, without the other.

A series is *complete* `stable_seconds` after its last instance, or sooner when it is provably
whole: every instance carries the same Images in Acquisition (0020,1002) and that many have
arrived; or it is one Enhanced CT multi-frame object; or its positions are contiguous, evenly
spaced and cover a whole head (≥ `WHOLE_HEAD_MM`) and nothing has arrived for half the stable time. Instance
counts alone never decide (PACS resend and send in any order).

Completed series of one study are decided together once the study has settled (no instance of it
for `[series] study_settle_seconds`; a PACS routing a whole study sends one series after another),
but the best complete series so far is queued at once and only its answer waits
(`hexnode.route.hold`: held unless it is already the best kind the rules can choose; superseded,
never sent, when a better series completes before the study settles).
The study is the unit of the answer (`hexnode.route.study`): the chosen series gets a job and its
result set; every other series is closed as `rejected` with its reason and no report. A study with
no analysable series gets one job for a study-level "not analysed" SR + SC listing what arrived;
localizers, dose reports and objects that are not CT images never cause one. `[report]
per_series_not_analysed = true` gives each rejected CT series its own report instead.

Everything lives in the database: a restart re-reads the state, and the next tick carries on.
Receive only records and counts; the first step of each tick (`settle_arrivals`) rejects a series
that is not CT at once, and re-opens a series that got instances after it was decided (revision
+ 1), and it comes
through here again to a new job and a corrected result set; a late series re-opens its study the same
way (its answer names the study's previous answer as its predecessor).
"""

from __future__ import annotations

import argparse
import logging
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
from pydicom.dataset import Dataset
from sqlalchemy import select
from sqlalchemy.orm import Session

from hexnode import runtime
from hexnode.config import Config, load_config
from hexnode.labels.take import take_received
from hexnode.pipeline.load import VolumeError, read_header
from hexnode.route.hold import best_kind, held_jobs, release, supersede
from hexnode.route.info import SeriesInfo
from hexnode.route.ranking import describe
from hexnode.route.select import Decision, Selector
from hexnode.route.study import (
    answer_of,
    enqueue_study_job,
    never_candidate,
    study_jobs,
    supersede_study_jobs,
)
from hexnode.sop import is_ct, sop_class_name
from hexnode.store.db import Instance, Job, Series, Store, Study, open_store, utcnow
from hexnode.store.heartbeat import Beater
from hexnode.store.queue import enqueue_job, reopen_series, transition
from hexnode.store.spool import Spool, uid_hash

log = logging.getLogger(__name__)

# Skull base to vertex is 120-160 mm; a contiguous stack this long is a whole head.
WHOLE_HEAD_MM = 150.0
# Even a provably whole series waits this long after its last instance (a burst may not be over;
# an instance after it re-opens the series and a corrected result follows).
MIN_QUIET_SECONDS = 0.5
# A complete series waits for siblings of its study still arriving, but not longer than this.
STUDY_WAIT_FACTOR = 3.0
STUDY_WAIT_MIN_SECONDS = 30.0

PASSED_OVER = "another series of the study was analysed"
# A series whose own headers say it is incomplete (Images in Acquisition not reached) waits this
# many stable periods before it is completed anyway: a sender or node that died mid-series resends
# within that time (Orthanc's routing retries after 1, 2, 4, 8 s), and completing early would send
# a "not analysed"/partial result first and a corrected one later (two result sets in the PACS).
INCOMPLETE_WAIT_FACTOR = 6.0


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


def whole_reason(instances: list[Instance]) -> str | None:
    """Why the series is provably whole already, or None."""
    if not instances:
        return None
    if len(instances) == 1 and (instances[0].number_of_frames or 1) > 1:
        return "one multi-frame object"
    expected = {i.images_in_acquisition for i in instances}
    if len(expected) == 1:
        n = expected.pop()
        if n and len(instances) >= n:
            return f"Images in Acquisition ({n}) reached"
    return _coverage_reason(instances)


def _coverage_reason(instances: list[Instance]) -> str | None:
    if len(instances) < 3:
        return None
    orients = {tuple(round(float(v), 4) for v in (i.orientation or ())) for i in instances}
    if len(orients) != 1:
        return None
    o = np.array(orients.pop(), dtype=np.float64)
    if o.shape != (6,) or any(i.position is None or len(i.position) != 3 for i in instances):
        return None
    normal = np.cross(o[:3], o[3:])
    d = np.sort(np.array([i.position for i in instances], dtype=np.float64) @ normal)
    steps = np.diff(d)
    if steps.min() <= 0.01:
        return None
    step = float(np.median(steps))
    if steps.max() > 1.1 * step or steps.min() < 0.9 * step:
        return None
    extent = float(d[-1] - d[0])
    if extent >= WHOLE_HEAD_MM:
        return f"contiguous slices cover {extent:.0f} mm"
    return None


def announced_missing(instances: list[Instance]) -> bool:
    """Fewer instances than the Images in Acquisition (0020,1002) they all announce."""
    expected = {i.images_in_acquisition for i in instances}
    if len(expected) != 1:
        return False
    n = expected.pop()
    return bool(n) and len(instances) < (n or 0)


def _instances(s: Session, series_id: int) -> list[Instance]:
    q = select(Instance).where(Instance.series_id == series_id).order_by(Instance.instance_number, Instance.id)
    return list(s.execute(q).scalars())


class CountWatch:
    """When each received series' instance count last changed, as this process has seen it.

    `last_instance_at` is the C-STORE time of the newest *indexed* instance; when the indexer lags
    behind a fast sender (thousands of instances in seconds), rows keep appearing with old
    timestamps, and the stable time alone would complete the series mid-indexing. A series is
    therefore quiet only when its count has also not changed for the same time. Kept in memory:
    after a restart every series waits one more quiet period, which errs on the safe side.
    """

    def __init__(self) -> None:
        self._seen: dict[int, tuple[int, datetime]] = {}

    def changed_at(self, series_id: int, count: int, now: datetime) -> datetime:
        last = self._seen.get(series_id)
        if last is None or last[0] != count:
            self._seen[series_id] = (count, now)
            return now
        return last[1]

    def keep_only(self, series_ids: set[int]) -> None:
        for sid in set(self._seen) - series_ids:
            del self._seen[sid]


def settle_arrivals(s: Session) -> tuple[list[str], list[str]]:
    """Decide what receive only recorded: (re-opened, rejected) series UIDs.

    A series whose SOP class is not a CT image is rejected at once with the reason (it never waits
    for the stable time, and is never a candidate). A CT series that has more instances than the
    ones it was decided on (`decided_count`) got a late instance: it re-opens as a new revision
    and comes through completion and selection again."""
    reopened, rejected = [], []
    fresh = s.execute(select(Series).where(Series.state == "received", Series.decided_count.is_(None))).scalars()
    for series in fresh:
        if not is_ct(series.sop_class_uid):
            series.reason = f"{sop_class_name(series.sop_class_uid or '')} is not CT: not analysed"
            transition(s, series, "rejected", series.reason)
            rejected.append(series.series_uid)
    late = s.execute(select(Series).where(Series.state != "received", Series.decided_count.is_not(None),
                                          Series.instance_count > Series.decided_count)).scalars()
    for series in late:
        if not is_ct(series.sop_class_uid):
            series.decided_count = series.instance_count  # never a candidate: nothing to re-decide
            continue
        was = series.state
        reopen_series(s, series, f"new instance after the series was {was}")
        log.info("series %s: re-opened as revision %d (%d instances after it was %s)", uid_hash(series.series_uid),
                 series.revision, series.instance_count - (series.decided_count or 0), was)
        reopened.append(series.series_uid)
    return reopened, rejected


def complete_ready(s: Session, cfg: Config, now: datetime, watch: CountWatch | None = None) -> list[str]:
    """received → complete for every series that is stable or provably whole."""
    done = []
    stable_before = now - timedelta(seconds=cfg.series.stable_seconds)
    quiet_before = now - timedelta(seconds=min(MIN_QUIET_SECONDS, cfg.series.stable_seconds))
    received = s.execute(select(Series).where(Series.state == "received")).scalars().all()
    incomplete_before = now - timedelta(seconds=INCOMPLETE_WAIT_FACTOR * cfg.series.stable_seconds)
    coverage_before = now - timedelta(seconds=max(MIN_QUIET_SECONDS, cfg.series.stable_seconds / 2))
    if watch is not None:
        watch.keep_only({x.id for x in received})
    aborted_before = now - timedelta(seconds=cfg.series.aborted_wait_seconds)
    for series in received:
        last = series.last_instance_at
        if watch is not None:
            last = max(last, watch.changed_at(series.id, series.instance_count, now))
        if series.aborted_at is not None:
            # The sender stopped part-way: wait for the rest (a PACS resends what failed) unless
            # the series' own headers prove it whole; the worker then analyses it only if it is
            # whole by positions and coverage.
            why = whole_reason(_instances(s, series.id)) or ""
            if why.startswith("contiguous") or not why:
                if last > aborted_before:
                    continue
                why = (f"no instance for {cfg.series.aborted_wait_seconds:g} s after the sender stopped part-way")
            elif last > quiet_before:  # whole by its own count, but a burst may not be over
                continue
        elif last <= stable_before:
            if last > incomplete_before and announced_missing(_instances(s, series.id)):
                continue
            why = f"no instance for {cfg.series.stable_seconds:g} s"
        elif last <= quiet_before or (watch is not None and series.last_instance_at <= quiet_before):
            why = whole_reason(_instances(s, series.id)) or ""
            if not why:
                continue
            # Coverage is a weaker proof than a count: a scanner that sends slice by slice as it
            # reconstructs may still be going. Half the stable time still saves most of the wait.
            if why.startswith("contiguous") and last > coverage_before:
                continue
        else:
            continue
        transition(s, series, "complete", f"complete: {why} ({series.instance_count} instances)")
        log.info("series %s complete: %s", uid_hash(series.series_uid), why)
        done.append(series.series_uid)
    return done


def _info(s: Session, series: Series, spool: Spool) -> SeriesInfo | str:
    """SeriesInfo from what receive indexed (the series header with the middle instance's own
    values), or from the middle instance's spooled header for a series indexed before the header
    was; or the reason it cannot be read."""
    instances = _instances(s, series.id)
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


def check_once(store: Store, cfg: Config, spool: Spool, selector: Selector | None = None,
               now: datetime | None = None, watch: CountWatch | None = None) -> Tick:
    """One pass: complete what is stable or whole, then select and queue. Safe to run repeatedly.

    `watch` (the scheduler keeps one) also waits for the instance count to stop changing.
    """
    selector = selector or Selector.from_config(cfg.series.selection)
    now = now or utcnow()
    tick = Tick()
    with store.transaction() as s:
        tick.reopened, tick.rejected_at_once = settle_arrivals(s)
        tick.completed = complete_ready(s, cfg, now, watch)
    with store.transaction() as s:
        select_complete(s, cfg, spool, selector, now, tick)
    return tick


def start_scheduler(store: Store, cfg: Config, spool: Spool, beater: Beater | None = None) -> Any:
    """A BackgroundScheduler running `check_once` every `check_interval_seconds` (one at a time).

    `hexnode route` (:func:`run_route`) calls this after opening the store and stops it with
    `.shutdown()`. `beater`: the stage heartbeat, beaten after each check that finished (a check
    stuck on a lock stops it).
    """
    from apscheduler.schedulers.background import BackgroundScheduler

    selector = Selector.from_config(cfg.series.selection)  # a bad rule fails start-up, not a tick
    # APScheduler logs every run at INFO: four lines a second that drown the node's own log
    logging.getLogger("apscheduler").setLevel(logging.WARNING)

    watch = CountWatch()

    def job() -> None:
        try:
            check_once(store, cfg, spool, selector, watch=watch)
        except Exception:  # a tick must never kill the scheduler; the next one retries
            log.exception("series completion check failed")
            return
        try:  # the reference masks readers sent back (hexnode/labels/take.py)
            take_received(store, spool)
        except Exception:
            log.exception("taking received corrections failed")
        if beater is not None:
            beater.beat()

    scheduler = BackgroundScheduler(timezone="UTC")
    scheduler.add_job(job, "interval", seconds=max(0.1, cfg.series.check_interval_seconds),
                      id="hexnode-series-stable", max_instances=1, coalesce=True, next_run_time=datetime.now(UTC))
    scheduler.start()
    return scheduler


def run_route(args: argparse.Namespace) -> int:
    """`hexnode route`: the scheduler until SIGTERM/SIGINT (a tick in progress finishes first)."""
    cfg = load_config(getattr(args, "config", None))
    runtime.setup_logging(cfg.log_level)
    stop = runtime.stop_on_signals()
    store = open_store(cfg.database_url)
    spool = Spool(cfg.spool_path)  # read only here: headers of indexed instances
    beater = Beater(store, "route")
    beater.start()
    scheduler = start_scheduler(store, cfg, spool, beater)
    log.info("routing: completion checks every %g s, series stable after %g s, studies settled after %g s",
             cfg.series.check_interval_seconds, cfg.series.stable_seconds, cfg.series.study_settle_seconds)
    try:
        while not stop.wait(1.0):
            pass
    finally:
        log.info("stopping")
        scheduler.shutdown()  # waits for a running check: its transaction commits or rolls back whole
        beater.stop()
        store.dispose()
    return 0
