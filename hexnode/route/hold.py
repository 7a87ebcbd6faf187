"""Analyse at once, hold only what must wait: the early choice of a study's series and its hold.

A study is decided once it has settled (`[series] study_settle_seconds` without an instance),
but its best complete series so far need not wait for that to be analysed: route queues it at
once (`provisional`), and only its *answer* waits. The job is `held` (`jobs.held`): its results
and notifications are written as usual but neither the sender nor the notifier claims them.

- The series is already the best kind the rules can choose (`best_kind`: accepted, a soft-tissue
  kernel, a thickness within `PREFERRED_THICKNESS_MM` of the target): no later series of the study
  would be chosen over it, so nothing is held; later series are passed over as they always were.
- Otherwise the job is held until the study settles, then released: its answer goes out at once
  (the analysis ran meanwhile). A better series completing before that supersedes it: the held job,
  its unsent results and notifications become `superseded` (never sent) and the better series
  takes its place, so the PACS still gets one answer per study.

The study's standing answer (`studies.answer_*`) is recorded when the answer is released, never
for a held result that may be superseded (a later answer names it as its predecessor).
"""

from __future__ import annotations

import logging
import re

from pydicom import dcmread
from sqlalchemy import select
from sqlalchemy.orm import Session

from hexnode.series.info import SeriesInfo, as_number, as_text
from hexnode.series.select import Selector
from hexnode.store.answers import record_answer
from hexnode.store.db import Job, Result, Series
from hexnode.store.queue import drop_held, transition
from hexnode.store.spool import Spool, uid_hash

log = logging.getLogger(__name__)

# A thickness this close to `target_thickness_mm` is the preferred kind: a later series closer
# still would win the ranking by a fraction of a millimetre, which is not worth a held answer.
PREFERRED_THICKNESS_MM = 1.0
# Job states whose results (or the results to come) a hold applies to.
HOLDABLE = ("queued", "running", "done", "failed")


def best_kind(selector: Selector, info: SeriesInfo) -> bool:
    """No later series of the study can rank above this one by kind: accepted by the rules (axial,
    ORIGINAL\\PRIMARY, no contrast, ...), a soft-tissue kernel, thickness in the preferred range."""
    if not selector.decide(info).accepted:
        return False
    kernel = as_text(info.value("ConvolutionKernel"))
    if not kernel or not re.search(selector.soft_kernel_regex, kernel):
        return False
    thick = as_number(info.value("SliceThickness"))
    return thick is not None and abs(thick - selector.target_thickness_mm) <= PREFERRED_THICKNESS_MM


def held_jobs(s: Session) -> dict[int, tuple[Series, Job]]:
    """Study id → (provisional series, its held job at the series' current revision)."""
    q = (select(Series, Job).join(Job, Job.series_id == Series.id)
         .where(Job.held.is_(True), Job.revision == Series.revision, Job.state.in_(HOLDABLE),
                Series.selected.is_(True), Job.study_revision.is_(None))
         .order_by(Job.id))
    return {series.study_id: (series, job) for series, job in s.execute(q).all()}


def release(s: Session, spool: Spool, series: Series, job: Job) -> None:
    """The study settled and nothing better came: the held answer goes out now."""
    job.held = False
    if job.state != "done":
        return  # the worker records the answer at its commit (it reads `held` there); a failed job records none

    sr = s.execute(select(Result).where(Result.job_id == job.id, Result.kind == "SR")).scalars().first()
    if sr is None:
        return
    try:
        sr_series = str(dcmread(spool.path(sr.path), stop_before_pixels=True,
                                specific_tags=["SeriesInstanceUID"]).SeriesInstanceUID)
    except Exception:  # the answer goes out regardless; the next answer then names no predecessor
        log.warning("series %s: its held SR could not be read to record the study's answer",
                    uid_hash(series.series_uid), exc_info=True)
        return
    kind = "result" if series.state in ("reported", "delivered") else "not analysed"
    record_answer(s, series.study_id, kind, sr.sop_instance_uid, sr_series)


def supersede(s: Session, series: Series, job: Job, reason: str) -> int:
    """A better series of the study came before the held answer went out: it is never sent."""
    dropped = drop_held(s, job, f"superseded before release: {reason}")
    series.selected = False
    series.reason = reason
    if series.state != "rejected":
        transition(s, series, "rejected", reason)
    return dropped
