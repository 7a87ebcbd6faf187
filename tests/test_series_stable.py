"""Series completion (stable time or provably whole), study-level selection, re-opening, restarts,
and the real APScheduler job — on a real SQLite database and spool."""

from __future__ import annotations

import time
from datetime import timedelta
from pathlib import Path

import pytest
from pydicom.uid import generate_uid
from series_helpers import index, write_series
from sqlalchemy import select

from hexnode.config import Config
from hexnode.receive.spool import Spool
from hexnode.series.stable import check_once, start_scheduler, whole_reason
from hexnode.store.db import Instance, Job, Series, Store, open_store, utcnow


@pytest.fixture
def env(tmp_path: Path) -> tuple[Store, Spool, Config]:
    cfg = Config()
    cfg.series.stable_seconds = 10.0
    store = open_store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    spool = Spool(tmp_path / "spool").prepare()
    return store, spool, cfg


def series_row(store: Store, uid: str) -> Series:
    with store.transaction() as s:
        return s.execute(select(Series).where(Series.series_uid == uid)).scalar_one()


def jobs(store: Store, uid: str) -> list[tuple[int, str]]:
    with store.transaction() as s:
        sid = s.execute(select(Series.id).where(Series.series_uid == uid)).scalar_one()
        return [(j.revision, j.state) for j in s.execute(select(Job).where(Job.series_id == sid).order_by(Job.id)).scalars()]


def test_complete_after_stable_seconds_then_queued(env: tuple[Store, Spool, Config], tmp_path: Path) -> None:
    store, spool, cfg = env
    t0 = utcnow()
    uid = generate_uid()
    index(store, spool, write_series(tmp_path / "a", n=12, rows=16, cols=16, series_uid=uid), t0)
    tick = check_once(store, cfg, spool, now=t0 + timedelta(seconds=5))
    assert tick.completed == [] and series_row(store, uid).state == "received"
    tick = check_once(store, cfg, spool, now=t0 + timedelta(seconds=10.5))
    assert tick.completed == [uid] and tick.queued == [uid]
    row = series_row(store, uid)
    assert row.state == "queued" and row.selected is True and row.reason and "analysed series #2" in row.reason
    assert jobs(store, uid) == [(0, "queued")]
    # idempotent: another tick changes nothing
    assert check_once(store, cfg, spool, now=t0 + timedelta(seconds=20)).queued == []
    assert jobs(store, uid) == [(0, "queued")]


def test_provably_whole_completes_early(env: tuple[Store, Spool, Config], tmp_path: Path) -> None:
    store, spool, cfg = env
    t0 = utcnow()
    whole, partial, head = generate_uid(), generate_uid(), generate_uid()
    index(store, spool, write_series(tmp_path / "w", n=12, rows=16, cols=16, series_uid=whole, ImagesInAcquisition=12), t0)
    index(store, spool, write_series(tmp_path / "p", n=12, rows=16, cols=16, series_uid=partial, ImagesInAcquisition=30), t0)
    index(store, spool, write_series(tmp_path / "h", n=32, rows=16, cols=16, series_uid=head), t0)  # 155 mm
    tick = check_once(store, cfg, spool, now=t0 + timedelta(seconds=0.5))
    assert tick.completed == []  # a burst may still be going on
    tick = check_once(store, cfg, spool, now=t0 + timedelta(seconds=1.5))
    assert tick.completed == [whole]  # the count is a proof; coverage waits half the stable time
    tick = check_once(store, cfg, spool, now=t0 + timedelta(seconds=5.5))
    assert tick.completed == [head]
    assert series_row(store, partial).state == "received"
    with store.transaction() as s:
        sid = s.execute(select(Series.id).where(Series.series_uid == head)).scalar_one()
        insts = list(s.execute(select(Instance).where(Instance.series_id == sid)).scalars())
    assert whole_reason(insts) == "contiguous slices cover 155 mm"
    assert whole_reason(insts[:-2]) is None  # 145 mm: not a whole head yet


def test_study_choice_reports_and_closes(env: tuple[Store, Spool, Config], tmp_path: Path) -> None:
    store, spool, cfg = env
    t0 = utcnow()
    study = generate_uid()
    soft, bone, thin, scout = (generate_uid() for _ in range(4))
    kw = {"rows": 16, "cols": 16, "study_uid": study}
    index(store, spool, write_series(tmp_path / "s", n=12, series_uid=soft, ConvolutionKernel="H40s", SeriesNumber=3, **kw), t0)
    index(store, spool, write_series(tmp_path / "b", n=12, series_uid=bone, ConvolutionKernel="H70h", SeriesNumber=4, **kw), t0)
    index(store, spool, write_series(tmp_path / "t", n=40, dz=1.0, series_uid=thin, ConvolutionKernel="H40s", SeriesNumber=5, **kw), t0)
    index(store, spool, write_series(tmp_path / "c", n=2, series_uid=scout, SeriesNumber=1,
                                     ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"], **kw), t0)
    # a result object of ours coming back into the same study: receive closes it, no report, no job
    sc_uid = generate_uid()
    sc = write_series(tmp_path / "r", n=2, Modality="OT", SOPClassUID="1.2.840.10008.5.1.4.1.1.7", series_uid=sc_uid, **kw)
    index(store, spool, sc, t0, calling_ae="ORTHANC")
    tick = check_once(store, cfg, spool, now=t0 + timedelta(seconds=11))
    assert tick.queued == [soft]
    assert set(tick.not_analysed) == {bone, scout}
    assert tick.closed == [thin]
    assert series_row(store, sc_uid).state == "rejected" and jobs(store, sc_uid) == []
    assert series_row(store, thin).reason.startswith("another series of the study was analysed (#3")
    assert series_row(store, thin).state == "rejected"
    assert series_row(store, bone).reason.startswith("bone or sharp kernel")
    assert series_row(store, bone).state == "queued" and series_row(store, bone).selected is False
    assert series_row(store, scout).reason == "localizer/scout image"
    note = series_row(store, soft).reason
    assert "chosen from 2 candidate series: slice thickness closest to 5 mm" in note


def test_waits_for_siblings_still_arriving(env: tuple[Store, Spool, Config], tmp_path: Path) -> None:
    store, spool, cfg = env
    t0 = utcnow()
    study = generate_uid()
    first, second = generate_uid(), generate_uid()
    index(store, spool, write_series(tmp_path / "1", n=12, rows=16, cols=16, study_uid=study, series_uid=first), t0)
    index(store, spool, write_series(tmp_path / "2", n=12, rows=16, cols=16, study_uid=study, series_uid=second,
                                     ConvolutionKernel="H30s", SliceThickness=5.0), t0 + timedelta(seconds=8))
    tick = check_once(store, cfg, spool, now=t0 + timedelta(seconds=11))
    assert tick.completed == [first] and tick.waiting == [first]
    tick = check_once(store, cfg, spool, now=t0 + timedelta(seconds=19))
    assert tick.completed == [second] and len(tick.queued) == 1 and len(tick.closed) == 1


def test_late_instance_reopens_and_survives_restart(env: tuple[Store, Spool, Config], tmp_path: Path) -> None:
    store, spool, cfg = env
    t0 = utcnow()
    uid = generate_uid()
    paths = write_series(tmp_path / "a", n=13, rows=16, cols=16, series_uid=uid)
    index(store, spool, paths[:12], t0)
    check_once(store, cfg, spool, now=t0 + timedelta(seconds=11))
    assert jobs(store, uid) == [(0, "queued")]
    index(store, spool, paths[12:], t0 + timedelta(seconds=12))  # late: revision 1, old job superseded
    assert series_row(store, uid).revision == 1 and jobs(store, uid) == [(0, "superseded")]
    store.dispose()
    # a restarted serve: a new engine on the same file carries on from the database alone
    store2 = open_store(str(store.engine.url))
    tick = check_once(store2, cfg, spool, now=t0 + timedelta(seconds=23))
    assert tick.queued == [uid]
    assert jobs(store2, uid) == [(0, "superseded"), (1, "queued")]
    assert series_row(store2, uid).instance_count == 13


def test_apscheduler_job_in_the_background(env: tuple[Store, Spool, Config], tmp_path: Path) -> None:
    store, spool, cfg = env
    cfg.series.stable_seconds = 0.3
    cfg.series.check_interval_seconds = 0.1
    uid = generate_uid()
    index(store, spool, write_series(tmp_path / "a", n=12, rows=16, cols=16, series_uid=uid), utcnow())
    scheduler = start_scheduler(store, cfg, spool)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and series_row(store, uid).state != "queued":
            time.sleep(0.05)
    finally:
        scheduler.shutdown()
    assert series_row(store, uid).state == "queued"


def test_indexer_lag_does_not_complete_a_series_mid_indexing(env: tuple[Store, Spool, Config], tmp_path: Path) -> None:
    """Rows appearing with old C-STORE times (the indexer behind a fast sender) keep the series open
    until its count has been still for the stable time; the count proof (Images in Acquisition) is
    not delayed."""
    from hexnode.series.stable import CountWatch

    store, spool, cfg = env
    watch = CountWatch()
    t0 = utcnow()
    uid, counted = generate_uid(), generate_uid()
    paths = write_series(tmp_path / "a", n=24, rows=16, cols=16, series_uid=uid)
    index(store, spool, paths[:12], t0)  # received at t0, indexed late
    assert check_once(store, cfg, spool, now=t0 + timedelta(seconds=11), watch=watch).completed == []
    index(store, spool, paths[12:], t0)  # more rows, still stamped t0
    assert check_once(store, cfg, spool, now=t0 + timedelta(seconds=15), watch=watch).completed == []
    assert check_once(store, cfg, spool, now=t0 + timedelta(seconds=24), watch=watch).completed == []
    assert check_once(store, cfg, spool, now=t0 + timedelta(seconds=25.5), watch=watch).completed == [uid]
    assert series_row(store, uid).instance_count == 24
    # a series whose count reaches its Images in Acquisition completes after 1 s, watch or not
    index(store, spool, write_series(tmp_path / "b", n=12, rows=16, cols=16, series_uid=counted,
                                     ImagesInAcquisition=12), t0 + timedelta(seconds=30))
    assert check_once(store, cfg, spool, now=t0 + timedelta(seconds=31.5), watch=watch).completed == [counted]
