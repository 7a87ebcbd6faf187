"""The study as the unit of the answer (docs/architecture.md §4 "Not analysed"): the database side
(the rules are hexnode.series.answer, the answer on record hexnode.store.answers).

What goes back to the PACS is decided per study: the chosen series' result set (or its own
"not analysed" report, when the worker finds it incomplete), or, when no series of the study can be
analysed, ONE study-level "not analysed" SR + SC listing what arrived and why. The `studies` row
remembers which SR the PACS holds as the study's answer, so the next answer (a late series
re-opened the study) names it as its predecessor.

Series that are never candidates — localizers, dose reports / screen captures, objects that are not
CT images (hexnode's own SEG/SR/SC routed back are rejected at receive) — are recorded with their
reason and never cause a report, nor re-open an answered study.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from hexnode.store.db import Event, Job, Series, Study, utcnow
from hexnode.store.queue import transition


def study_jobs(s: Session, study_id: int, states: tuple[str, ...]) -> list[Job]:
    """Study-level report jobs of the study in `states`."""
    q = (select(Job).join(Series, Series.id == Job.series_id)
         .where(Series.study_id == study_id, Job.study_revision.is_not(None), Job.state.in_(states))
         .order_by(Job.id))
    return list(s.execute(q).scalars())


def supersede_study_jobs(s: Session, study_id: int, detail: str) -> list[int]:
    """Queued study-level reports of the study that a newer decision replaces (none was sent)."""
    out = []
    for job in study_jobs(s, study_id, ("queued",)):
        transition(s, job, "superseded", detail)
        out.append(job.study_revision or 0)
    return out


def enqueue_study_job(s: Session, anchor: Series, study: Study, detail: str) -> Job:
    """A job for the study-level "not analysed" report, filed under `anchor` (a rejected series
    of the deciding group, at a revision that has no job of its own); the series keeps its state."""
    superseded = supersede_study_jobs(s, study.id, "a newer study decision")
    revision = min(superseded) if superseded else (study.report_revision or 0)
    job = Job(series_id=anchor.id, revision=anchor.revision, state="queued", attempts=0, study_revision=revision)
    s.add(job)
    s.flush()
    s.add(Event(entity="job", entity_id=job.id, from_state=None, to_state="queued", detail=detail, at=utcnow()))
    return job
