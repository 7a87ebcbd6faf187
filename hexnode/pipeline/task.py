"""One job as route hands it to the worker: everything the worker needs, read once from the job row
in the claim transaction, so the worker passes one typed value around instead of ten and knows
nothing of how route decided.

`Task.from_job` reads the job's series (its files, route's verdict and note, the receiver's note
when the sender stopped part-way), its study (the answer the PACS holds) and, for a study-level
report, the study's decided series with their reasons and files.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.orm import Session

from hexnode.pipeline.run import ListedSeries
from hexnode.series.answer import Answer
from hexnode.store.answers import answer_of, listed_series
from hexnode.store.db import Job, Series, Study
from hexnode.store.queue import series_instances
from hexnode.store.spool import Spool, uid_hash


@dataclass(frozen=True)
class Task:
    """What the worker does for one job. Refused on build when its values contradict each other."""

    job_id: int
    attempts: int  # this claim's attempt (1 = the first)
    series_uid: str
    revision: int  # the series' revision the job is for (derived UIDs, report text)
    calling_ae: str  # who sent the series (which destinations get the results)
    paths: tuple[Path, ...]  # the series' spooled files in instance order
    # route's verdict for this revision: True chosen, False rejected (a per-series "not analysed"
    # report), None decided before selection was recorded
    selected: bool | None
    note: str | None  # the selection note when chosen, the reason when rejected
    stopped: str | None  # the sender stopped part-way while sending the series (receive's note)
    study_id: int
    study_uid: str
    answer: Answer  # what the PACS holds as the study's answer now
    study_revision: int | None = None  # set: the study-level "not analysed" report
    listed: tuple[ListedSeries, ...] = ()  # the study's decided series (study-level report only)

    def __post_init__(self) -> None:
        if self.job_id < 1 or self.study_id < 1:
            raise ValueError(f"task: job {self.job_id} / study {self.study_id} is not a row id")
        if self.attempts < 1:
            raise ValueError(f"task for job {self.job_id}: attempt {self.attempts} (a claimed job has at least 1)")
        if self.revision < 0 or (self.study_revision is not None and self.study_revision < 0):
            raise ValueError(f"task for job {self.job_id}: negative revision")
        if not self.series_uid or not self.study_uid:
            raise ValueError(f"task for job {self.job_id}: no series or study UID")
        if self.listed and self.study_revision is None:
            raise ValueError(f"task for job {self.job_id}: series listed for a job that is no study report")

    @property
    def name(self) -> str:
        """The series as logs name it (a UID hash)."""
        return uid_hash(self.series_uid)

    @property
    def study_report(self) -> bool:
        return self.study_revision is not None

    @property
    def answers(self) -> bool:
        """The job's outcome becomes the study's answer: the chosen series', or the study report."""
        return self.selected is True or self.study_report

    @classmethod
    def from_job(cls, s: Session, job: Job, spool: Spool) -> Task:
        series = s.get(Series, job.series_id)
        assert series is not None
        study = s.get(Study, series.study_id)
        assert study is not None
        listed: tuple[ListedSeries, ...] = ()
        if job.study_revision is not None:
            listed = tuple(ListedSeries(x.series_uid, x.reason or x.state,
                                        tuple(spool.path(i.path) for i in series_instances(s, x.id)))
                           for x in listed_series(s, study.id))
        return cls(job_id=job.id, attempts=job.attempts, series_uid=series.series_uid, revision=job.revision,
                   calling_ae=series.calling_ae, paths=tuple(spool.path(i.path) for i in series_instances(s, series.id)),
                   selected=series.selected, note=series.reason, stopped=series.aborted_note, study_id=study.id,
                   study_uid=study.study_uid, answer=answer_of(study), study_revision=job.study_revision,
                   listed=listed)
