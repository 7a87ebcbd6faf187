"""The study's answer on record (the `studies` row): what the PACS holds as hexnode's answer, so
the next answer for the study names it as its predecessor. Written by the worker at its commit and
by route when it releases a held answer; read when a job is handed to the worker."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from hexnode.series.answer import Answer
from hexnode.sop import CT_SOP_CLASSES
from hexnode.store.db import Series, Study


def answer_of(study: Study) -> Answer:
    return Answer(study.answer_kind, study.answer_sr_uid, study.answer_sr_series_uid)


def record_answer(s: Session, study_id: int, kind: str, sr_uid: str, sr_series_uid: str,
                  study_revision: int | None = None) -> None:
    study = s.get(Study, study_id)
    if study is None:
        return
    study.answer_kind, study.answer_sr_uid, study.answer_sr_series_uid = kind, sr_uid, sr_series_uid
    if study_revision is not None:
        study.report_revision = max(study.report_revision or 0, study_revision + 1)


def listed_series(s: Session, study_id: int) -> list[Series]:
    """The CT image series of the study that have been decided, for the study-level report."""
    q = (select(Series).where(Series.study_id == study_id, Series.state.not_in(("received", "complete")))
         .order_by(Series.series_number, Series.id))
    return [x for x in s.execute(q).scalars() if (x.sop_class_uid or "") in CT_SOP_CLASSES]
