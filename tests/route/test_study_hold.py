"""Analyse at once, hold only what must wait (issue 37): with the shipped timings (stable and study
settle 10 s), the best series so far is analysed as soon as it is complete; its answer goes out at
once when no better series can come, else when the study settles; a better series arriving during
the hold supersedes it and only one answer is ever sent. Route's ticks, the real worker with the
real models, and the sender's own claim, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pydicom
import pytest
from plumbing_helpers import models_dir, store_on
from series_helpers import index
from sqlalchemy import select

from hexnode.config import Config
from hexnode.route.hold import best_kind
from hexnode.route.service import check_once
from hexnode.send import outbox
from hexnode.series.info import SeriesInfo
from hexnode.series.select import Selector
from hexnode.store.db import Job, Outbox, Result, Series, Store, Study, utcnow
from hexnode.store.queue import LeaseLost, claim_job, complete_job
from hexnode.store.spool import Spool
from hexnode.worker import Worker


@pytest.fixture(scope="module")
def models() -> Any:
    from hexnode.models.analyser import Models

    return Models.load(models_dir(), ["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def case() -> Any:
    from hexnode.synth.phantom import generate_case

    return generate_case(11, 1)  # 32 slices of 5 mm, Images in Acquisition 32


def series(case: Any, out: Path, number: int, **kw: Any) -> list[Path]:
    from hexnode.synth.dicom import write_series

    return write_series(case, out / f"s{number}", series_number=number, **kw)


@pytest.fixture(params=["sqlite", "postgresql"])
def env(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Store, Spool, Config]]:
    cfg = Config()  # the shipped timings: stable_seconds = study_settle_seconds = 10
    assert cfg.series.stable_seconds == 10.0 and cfg.series.study_settle_seconds == 10.0
    cfg.data_dir = str(tmp_path)
    spool = Spool(cfg.spool_path).prepare()
    with store_on(request.param, cfg.database_url) as store:
        yield store, spool, cfg


def sendable(store: Store) -> list[tuple[str, str]]:
    """What the sender claims now: (series UID, kind) of each due outbox row."""
    with store.transaction() as s:
        due = outbox.claim_due(s, "probe", lease_seconds=60)
        return sorted((s.get(Series, d.series_id).series_uid, d.kind) for d in due)  # type: ignore[union-attr]


def uid(paths: list[Path]) -> str:
    return str(pydicom.dcmread(paths[0], stop_before_pixels=True).SeriesInstanceUID)


def row(store: Store, series_uid: str) -> Series:
    with store.transaction() as s:
        return s.execute(select(Series).where(Series.series_uid == series_uid)).scalar_one()


def held(store: Store, series_uid: str) -> list[tuple[str, bool]]:
    with store.transaction() as s:
        q = select(Job.state, Job.held).join(Series, Series.id == Job.series_id).where(Series.series_uid == series_uid)
        return [(st, h) for st, h in s.execute(q).all()]


def answer(store: Store, paths: list[Path]) -> str | None:
    study = str(pydicom.dcmread(paths[0], stop_before_pixels=True).StudyInstanceUID)
    with store.transaction() as s:
        return s.execute(select(Study.answer_sr_uid).where(Study.study_uid == study)).scalar_one()


def sr_of(store: Store, spool: Spool, series_uid: str) -> pydicom.Dataset:
    with store.transaction() as s:
        path = s.execute(select(Result.path).join(Series, Series.id == Result.series_id)
                         .where(Series.series_uid == series_uid, Result.kind == "SR")).scalar_one()
    return pydicom.dcmread(spool.path(path))


def tick(store: Store, spool: Spool, cfg: Config, t0: datetime, seconds: float) -> Any:
    return check_once(store, cfg, spool, now=t0 + timedelta(seconds=seconds))


def test_best_kind_is_only_the_preferred_soft_tissue_series(case: Any, tmp_path: Path) -> None:
    sel = Selector.from_config({})

    def info(**kw: Any) -> SeriesInfo:
        paths = series(case, tmp_path, 2 + len(list(tmp_path.iterdir())), **kw)
        return SeriesInfo(series_uid=uid(paths), header=pydicom.dcmread(paths[16], stop_before_pixels=True),
                          instance_count=len(paths))

    assert best_kind(sel, info())  # the synthetic 5 mm STANDARD axial series
    assert not best_kind(sel, info(drop=("ConvolutionKernel",)))  # a soft kernel may still come
    assert not best_kind(sel, info(header={"SliceThickness": "2.5"}))  # a 5 mm one may still come
    assert not best_kind(sel, info(header={"ConvolutionKernel": "H70h"}))  # bone: not even accepted


def test_provably_whole_best_series_is_sent_without_waiting_for_the_study(
        env: tuple[Store, Spool, Config], models: Any, case: Any, tmp_path: Path) -> None:
    store, spool, cfg = env
    paths = series(case, tmp_path, 2)
    t0 = utcnow() - timedelta(seconds=2)
    index(store, spool, paths, t0)
    t = tick(store, spool, cfg, t0, 1.5)  # Images in Acquisition reached, 1 s quiet
    assert t.completed == [uid(paths)] and t.queued == [uid(paths)] and t.held == []
    assert held(store, uid(paths)) == [("queued", False)]
    outcome = Worker(store, spool, cfg, models, owner="w1").run_once()
    assert outcome is not None and outcome.state == "reported", outcome
    # 8 s before the study settles, the sender already has the whole answer
    assert sendable(store) == [(uid(paths), k) for k in ("SC", "SEG", "SR")]
    assert answer(store, paths) == str(sr_of(store, spool, uid(paths)).SOPInstanceUID)
    # a later series of the study is passed over once the study settles: one answer per study
    later = series(case, tmp_path, 7, header={"SeriesDescription": "Head 5mm again"})
    index(store, spool, later, t0 + timedelta(seconds=3))
    t = tick(store, spool, cfg, t0, 4.5)
    assert t.completed == [uid(later)] and t.queued == [] and t.waiting == [uid(later)]
    t = tick(store, spool, cfg, t0, 13.5)
    assert t.closed == [uid(later)] and t.queued == [] and t.released == []
    # named: both came in the same sending of the study
    assert row(store, uid(later)).reason.startswith("another series of the study was analysed (#2 ")


def test_a_series_that_may_be_bettered_is_analysed_at_once_and_held_until_the_study_settles(
        env: tuple[Store, Spool, Config], models: Any, case: Any, tmp_path: Path) -> None:
    store, spool, cfg = env
    paths = series(case, tmp_path, 2, drop=("ConvolutionKernel",))  # no kernel named: a soft one may follow
    t0 = utcnow() - timedelta(seconds=2)
    index(store, spool, paths, t0)
    t = tick(store, spool, cfg, t0, 1.5)
    assert t.queued == [uid(paths)] and t.held == [uid(paths)]
    outcome = Worker(store, spool, cfg, models, owner="w1").run_once()
    assert outcome is not None and outcome.state == "reported", outcome
    assert held(store, uid(paths)) == [("done", True)]
    assert sendable(store) == [] and answer(store, paths) is None  # analysed, not sent, not the answer yet
    t = tick(store, spool, cfg, t0, 9.5)  # the study has not settled
    assert t.released == [] and sendable(store) == []
    t = tick(store, spool, cfg, t0, 10.5)
    assert t.released == [uid(paths)] and t.queued == []
    assert held(store, uid(paths)) == [("done", False)]
    assert sendable(store) == [(uid(paths), k) for k in ("SC", "SEG", "SR")]
    assert answer(store, paths) == str(sr_of(store, spool, uid(paths)).SOPInstanceUID)
    assert tick(store, spool, cfg, t0, 30).released == []  # once


def test_a_better_series_during_the_hold_supersedes_it_and_one_answer_is_sent(
        env: tuple[Store, Spool, Config], models: Any, case: Any, tmp_path: Path) -> None:
    store, spool, cfg = env
    first = series(case, tmp_path, 2, drop=("ConvolutionKernel",))
    t0 = utcnow() - timedelta(seconds=2)
    index(store, spool, first, t0)
    assert tick(store, spool, cfg, t0, 1.5).held == [uid(first)]
    worker = Worker(store, spool, cfg, models, owner="w1")
    assert worker.run_once() is not None  # its result exists, held
    better = series(case, tmp_path, 3)  # the soft-tissue reconstruction, 3 s later
    index(store, spool, better, t0 + timedelta(seconds=3))
    t = tick(store, spool, cfg, t0, 4.5)
    assert t.superseded == [uid(first)] and t.queued == [uid(better)] and t.held == []
    gone = row(store, uid(first))
    assert gone.state == "rejected" and gone.selected is False
    assert gone.reason.startswith("another series of the study was analysed (#3"), gone.reason
    with store.transaction() as s:
        states = s.execute(select(Outbox.state).join(Result, Result.id == Outbox.result_id)
                           .join(Series, Series.id == Result.series_id)
                           .where(Series.series_uid == uid(first))).scalars().all()
    assert sorted(states) == ["superseded"] * 3  # never sent
    outcome = worker.run_once()
    assert outcome is not None and outcome.state == "reported"
    assert sendable(store) == [(uid(better), k) for k in ("SC", "SEG", "SR")]  # before the study settles
    sr = sr_of(store, spool, uid(better))
    assert answer(store, better) == str(sr.SOPInstanceUID)
    assert "PredecessorDocumentsSequence" not in sr  # the held answer was never in the PACS
    t = tick(store, spool, cfg, t0, 20)
    assert t.released == [] and t.queued == [] and sendable(store) == []
    # the superseded series waits on no delivery: purge may take it (the chosen one still has rows sending)
    from hexnode.admin.purge import purgeable

    with store.transaction() as s:
        ids = dict(s.execute(select(Series.series_uid, Series.id)).all())
    assert purgeable(store, utcnow() + timedelta(days=1)) == [ids[uid(first)]]


def test_superseding_a_held_job_that_is_queued_or_running(env: tuple[Store, Spool, Config], case: Any,
                                                         tmp_path: Path) -> None:
    """The better series may come before the worker has started on the held one, or while it runs:
    the job is superseded, and a running worker's commit finds its lease gone (nothing recorded)."""
    store, spool, cfg = env
    first = series(case, tmp_path, 2, header={"SliceThickness": "2.5", "SeriesDescription": "Head 2.5mm"})
    second = series(case, tmp_path, 3, drop=("ConvolutionKernel",))
    best = series(case, tmp_path, 4)
    t0 = utcnow() - timedelta(seconds=5)
    index(store, spool, first, t0)
    assert tick(store, spool, cfg, t0, 1.5).held == [uid(first)]
    with store.transaction() as s:
        job = claim_job(s, "w1", 60, max_attempts=3)  # a worker is on it
        assert job is not None
        running = job.id
    # a soft-kernel 2.5 mm series does not beat it (the kernel-less series ranks after it) ...
    index(store, spool, second, t0 + timedelta(seconds=2))
    t = tick(store, spool, cfg, t0, 3.5)
    assert t.superseded == [] and t.waiting == [uid(second)]
    # ... the 5 mm soft one does
    index(store, spool, best, t0 + timedelta(seconds=4))
    t = tick(store, spool, cfg, t0, 5.5)
    assert t.superseded == [uid(first)] and t.queued == [uid(best)]
    with store.transaction() as s, pytest.raises(LeaseLost):
        complete_job(s, running, "w1")
    assert held(store, uid(first)) == [("superseded", True)]
    assert held(store, uid(best)) == [("queued", False)]
    t = tick(store, spool, cfg, t0, 16)  # settled: the other candidate is passed over, nothing more
    assert t.closed == [uid(second)] and t.queued == [] and t.released == []
    assert row(store, uid(second)).reason.startswith("another series of the study was analysed (#4 ")
