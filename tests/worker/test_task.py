"""The worker's hand-off (hexnode.pipeline.task.Task): read from a real job row on a real SQLite
store, and refused on build when its values contradict each other."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest
from series_helpers import index, write_series

from hexnode.config import Config
from hexnode.pipeline.run import ListedSeries
from hexnode.pipeline.task import Task
from hexnode.route.service import check_once
from hexnode.series.answer import Answer
from hexnode.store.db import open_store, utcnow
from hexnode.store.queue import claim_job
from hexnode.store.spool import Spool, uid_hash


def test_a_claimed_job_becomes_one_task(tmp_path: Path) -> None:
    cfg = Config()
    cfg.data_dir = str(tmp_path / "data")
    cfg.series.stable_seconds = cfg.series.study_settle_seconds = 1.0
    store = open_store(cfg.database_url)
    spool = Spool(cfg.spool_path).prepare()
    paths = write_series(tmp_path / "in", n=12, SeriesDescription="Head 5mm")
    index(store, spool, paths, utcnow() - timedelta(seconds=60), calling_ae="CT1")
    check_once(store, cfg, spool, now=utcnow() + timedelta(seconds=120))
    with store.transaction() as s:
        job = claim_job(s, "w1", 60, max_attempts=2)
        assert job is not None
        task = Task.from_job(s, job, spool)
    assert (task.attempts, task.revision, task.calling_ae, task.selected) == (1, 0, "CT1", True)
    assert len(task.paths) == 12 and all(p.is_file() for p in task.paths)
    assert task.note is not None and task.note.startswith("analysed series")
    assert task.answer == Answer() and task.answers and not task.study_report and task.listed == ()
    assert task.name == uid_hash(task.series_uid)  # logs name the series by a hash, never its UID
    store.dispose()


def test_a_task_that_contradicts_itself_is_refused() -> None:
    ok = Task(job_id=1, attempts=1, series_uid="1.2.3", revision=0, calling_ae="CT1", paths=(), selected=True,
              note=None, stopped=None, study_id=1, study_uid="1.2", answer=Answer())
    listed = (ListedSeries("1.2.4", "bone kernel", ()),)
    assert replace(ok, study_revision=0, listed=listed).study_report
    for bad in ({"attempts": 0}, {"revision": -1}, {"series_uid": ""}, {"job_id": 0}, {"listed": listed},
                {"study_revision": -1}):
        with pytest.raises(ValueError, match="task"):
            replace(ok, **bad)
