"""Series completion (stable time or provably whole), study-level selection, re-opening, restarts,
and the real APScheduler job — on a real SQLite database and spool."""

from __future__ import annotations

import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from pydicom.uid import generate_uid
from series_helpers import index, write_series
from sqlalchemy import select

from hexnode.config import Config
from hexnode.route.completion import MIN_QUIET_SECONDS, whole_reason
from hexnode.route.service import check_once, start_scheduler
from hexnode.store.db import Event, Instance, Job, Series, Store, open_store, utcnow
from hexnode.store.spool import Spool


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
    tick = check_once(store, cfg, spool, now=t0 + timedelta(seconds=MIN_QUIET_SECONDS / 2))
    assert tick.completed == []  # a burst may still be going on
    tick = check_once(store, cfg, spool, now=t0 + timedelta(seconds=MIN_QUIET_SECONDS + 0.5))
    assert tick.completed == [whole]  # the count is a proof; coverage waits half the stable time
    tick = check_once(store, cfg, spool, now=t0 + timedelta(seconds=5.5))
    assert tick.completed == [head]
    assert series_row(store, partial).state == "received"
    with store.transaction() as s:
        sid = s.execute(select(Series.id).where(Series.series_uid == head)).scalar_one()
        insts = list(s.execute(select(Instance).where(Instance.series_id == sid)).scalars())
    assert whole_reason(insts) == "contiguous slices cover 155 mm"
    assert whole_reason(insts[:-2]) is None  # 145 mm: not a whole head yet


def _whole_study(store: Store, spool: Spool, tmp_path: Path, t0: Any) -> dict[str, str]:
    """Soft 5 mm (#3), bone (#4), thin soft 1 mm (#5), scout (#1), and a secondary capture of ours."""
    study = generate_uid()
    uids = {k: generate_uid() for k in ("soft", "bone", "thin", "scout", "sc")}
    kw = {"rows": 16, "cols": 16, "study_uid": study}
    index(store, spool, write_series(tmp_path / "s", n=12, series_uid=uids["soft"], ConvolutionKernel="H40s", SeriesNumber=3, **kw), t0)
    index(store, spool, write_series(tmp_path / "b", n=12, series_uid=uids["bone"], ConvolutionKernel="H70h", SeriesNumber=4, **kw), t0)
    index(store, spool, write_series(tmp_path / "t", n=40, dz=1.0, series_uid=uids["thin"], ConvolutionKernel="H40s",
                                     SeriesNumber=5, **kw), t0)
    index(store, spool, write_series(tmp_path / "c", n=2, series_uid=uids["scout"], SeriesNumber=1,
                                     ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"], **kw), t0)
    # a result object of ours coming back into the same study: receive closes it, no report, no job
    sc = write_series(tmp_path / "r", n=2, Modality="OT", SOPClassUID="1.2.840.10008.5.1.4.1.1.7", series_uid=uids["sc"], **kw)
    index(store, spool, sc, t0, calling_ae="ORTHANC")
    return uids


def all_jobs(store: Store) -> list[tuple[int, int | None, str]]:
    with store.transaction() as s:
        return [(j.series_id, j.study_revision, j.state) for j in s.execute(select(Job).order_by(Job.id)).scalars()]


def test_study_choice_analyses_one_and_closes_the_others(env: tuple[Store, Spool, Config], tmp_path: Path) -> None:
    store, spool, cfg = env
    t0 = utcnow()
    uids = _whole_study(store, spool, tmp_path, t0)
    tick = check_once(store, cfg, spool, now=t0 + timedelta(seconds=11))
    assert tick.queued == [uids["soft"]]
    assert tick.not_analysed == [] and tick.study_reports == []  # the study has its answer: no other report
    assert set(tick.closed) == {uids["bone"], uids["thin"], uids["scout"]}
    assert len(all_jobs(store)) == 1 and jobs(store, uids["soft"]) == [(0, "queued")]
    assert series_row(store, uids["sc"]).state == "rejected" and jobs(store, uids["sc"]) == []
    thin = series_row(store, uids["thin"])
    assert thin.state == "rejected" and thin.reason.startswith("another series of the study was analysed (#3")
    bone = series_row(store, uids["bone"])
    assert bone.state == "rejected" and bone.selected is False and bone.reason.startswith("bone or sharp kernel")
    assert series_row(store, uids["scout"]).reason == "localizer/scout image"
    note = series_row(store, uids["soft"]).reason
    assert "chosen from 2 candidate series: slice thickness closest to 5 mm" in note


def test_per_series_not_analysed_reports_can_be_turned_back_on(env: tuple[Store, Spool, Config], tmp_path: Path) -> None:
    store, spool, cfg = env
    cfg.report.per_series_not_analysed = True
    t0 = utcnow()
    uids = _whole_study(store, spool, tmp_path, t0)
    tick = check_once(store, cfg, spool, now=t0 + timedelta(seconds=11))
    assert tick.queued == [uids["soft"]]
    assert tick.not_analysed == [uids["bone"]]  # a rejected CT series; never the scout or our SC
    assert set(tick.closed) == {uids["thin"], uids["scout"]}
    assert series_row(store, uids["bone"]).state == "queued" and jobs(store, uids["bone"]) == [(0, "queued")]
    assert jobs(store, uids["scout"]) == []


def _study_of(store: Store, spool: Spool, tmp_path: Path, t0: Any, study: str, **series: dict[str, Any]) -> dict[str, str]:
    uids = {}
    for name, kw in series.items():
        uids[name] = generate_uid()
        index(store, spool, write_series(tmp_path / name, rows=16, cols=16, study_uid=study, series_uid=uids[name],
                                         **{"n": 12, **kw}), t0)
    return uids


SCOUT = {"n": 2, "SeriesNumber": 1, "ImageType": ["ORIGINAL", "PRIMARY", "LOCALIZER"]}
BONE = {"SeriesNumber": 4, "ConvolutionKernel": "H70h"}
SOFT = {"SeriesNumber": 2, "ConvolutionKernel": "H40s"}


def test_study_without_analysable_series_gets_one_study_report(env: tuple[Store, Spool, Config], tmp_path: Path) -> None:
    store, spool, cfg = env
    t0 = utcnow()
    study = generate_uid()
    uids = _study_of(store, spool, tmp_path, t0, study, scout=SCOUT, bone=BONE)
    tick = check_once(store, cfg, spool, now=t0 + timedelta(seconds=11))
    assert tick.queued == [] and tick.not_analysed == [] and tick.study_reports == [study]
    assert set(tick.closed) == {uids["scout"], uids["bone"]}
    bone = series_row(store, uids["bone"])
    assert all_jobs(store) == [(bone.id, 0, "queued")]  # one job, filed under the bone series
    assert bone.state == "rejected"  # the series keeps its own state and reason
    assert check_once(store, cfg, spool, now=t0 + timedelta(seconds=20)).study_reports == []  # idempotent

    # a late axial series before the study report was built: chosen, the queued report superseded
    late = _study_of(store, spool, tmp_path, t0 + timedelta(seconds=21), study, soft=SOFT)
    tick = check_once(store, cfg, spool, now=t0 + timedelta(seconds=32))
    assert tick.queued == [late["soft"]] and tick.study_reports == []
    assert all_jobs(store) == [(bone.id, 0, "superseded"), (series_row(store, late["soft"]).id, None, "queued")]


def test_late_series_after_a_study_answer(env: tuple[Store, Spool, Config], tmp_path: Path) -> None:
    from hexnode.store.answers import record_answer

    store, spool, cfg = env
    t0 = utcnow()
    study = generate_uid()
    _study_of(store, spool, tmp_path, t0, study, scout=SCOUT, bone=BONE)
    check_once(store, cfg, spool, now=t0 + timedelta(seconds=11))
    with store.transaction() as s:  # what the worker records once the study report is built
        job = s.execute(select(Job)).scalar_one()
        job.state = "done"
        sid = s.get(Series, job.series_id).study_id
        record_answer(s, sid, "not analysed", "2.25.1", "2.25.2", study_revision=0)
    # another bone reconstruction later: nothing changes, nothing is sent
    more = _study_of(store, spool, tmp_path, t0 + timedelta(seconds=12), study, bone2={**BONE, "SeriesNumber": 6})
    tick = check_once(store, cfg, spool, now=t0 + timedelta(seconds=23))
    assert tick.closed == [more["bone2"]] and tick.study_reports == [] and tick.queued == []
    # a localizer later: recorded, ignored
    scout2 = _study_of(store, spool, tmp_path, t0 + timedelta(seconds=24), study, scout2={**SCOUT, "SeriesNumber": 7})
    tick = check_once(store, cfg, spool, now=t0 + timedelta(seconds=35))
    assert tick.closed == [scout2["scout2"]] and tick.study_reports == [] and tick.queued == []
    # the axial series at last: the study re-opens, it is chosen (its result supersedes the report)
    late = _study_of(store, spool, tmp_path, t0 + timedelta(seconds=36), study, soft=SOFT)
    tick = check_once(store, cfg, spool, now=t0 + timedelta(seconds=47))
    assert tick.queued == [late["soft"]]
    assert len(all_jobs(store)) == 2


def test_no_study_report_while_a_sibling_is_still_arriving(env: tuple[Store, Spool, Config], tmp_path: Path) -> None:
    """A trickling series outlasts the study wait: the finished series are closed, but the study's
    answer waits for the trickling one; when it is no better, one report covers both."""
    store, spool, cfg = env
    t0 = utcnow()
    study = generate_uid()
    uids = _study_of(store, spool, tmp_path, t0, study, bone=BONE)
    trickle = generate_uid()
    paths = write_series(tmp_path / "trickle", n=12, rows=16, cols=16, study_uid=study, series_uid=trickle,
                         ConvolutionKernel="H70h", SeriesNumber=5)
    index(store, spool, paths[:6], t0)
    index(store, spool, paths[6:9], t0 + timedelta(seconds=20))
    index(store, spool, paths[9:], t0 + timedelta(seconds=34))
    tick = check_once(store, cfg, spool, now=t0 + timedelta(seconds=35))
    assert tick.closed == [uids["bone"]] and tick.study_reports == []  # past the study wait, but no answer yet
    assert all_jobs(store) == []
    tick = check_once(store, cfg, spool, now=t0 + timedelta(seconds=45))
    assert tick.closed == [trickle] and tick.study_reports == [study]
    assert [(sid, rev) for sid, rev, _ in all_jobs(store)] == [(series_row(store, trickle).id, 0)]


def test_chosen_series_not_analysed_lets_a_later_series_answer(env: tuple[Store, Spool, Config], tmp_path: Path) -> None:
    """The chosen series came out "not analysed" (incomplete coverage, a sender that stopped): a
    later analysable series of the study is chosen, not passed over."""
    store, spool, cfg = env
    t0 = utcnow()
    study = generate_uid()
    first = _study_of(store, spool, tmp_path, t0, study, soft=SOFT)
    assert check_once(store, cfg, spool, now=t0 + timedelta(seconds=11)).queued == [first["soft"]]
    with store.transaction() as s:  # what the worker does for a not-analysed outcome of the chosen series
        row = s.execute(select(Series).where(Series.series_uid == first["soft"])).scalar_one()
        row.state = "rejected"
    later = _study_of(store, spool, tmp_path, t0 + timedelta(seconds=12), study, again={**SOFT, "SeriesNumber": 8})
    assert check_once(store, cfg, spool, now=t0 + timedelta(seconds=23)).queued == [later["again"]]
    # while the chosen one still stands (reported), a later candidate is passed over
    third = _study_of(store, spool, tmp_path, t0 + timedelta(seconds=24), study, third={**SOFT, "SeriesNumber": 9})
    tick = check_once(store, cfg, spool, now=t0 + timedelta(seconds=35))
    assert tick.queued == [] and tick.closed == [third["third"]]
    assert series_row(store, third["third"]).reason == "another series of the study was analysed before"


def test_study_answer_waits_for_the_study_but_not_the_analysis(env: tuple[Store, Spool, Config],
                                                                 tmp_path: Path) -> None:
    """The best series so far is queued as soon as it is complete; a thin one (a 5 mm series may
    still come) is held until the study settles, then released."""
    store, spool, cfg = env
    cfg.series.study_settle_seconds = 20.0
    t0 = utcnow()
    study = generate_uid()
    uids = _study_of(store, spool, tmp_path, t0, study, thin={**SOFT, "n": 40, "dz": 1.0, "ImagesInAcquisition": 40})
    tick = check_once(store, cfg, spool, now=t0 + timedelta(seconds=2))
    assert tick.completed == [uids["thin"]] and tick.queued == [uids["thin"]] and tick.held == [uids["thin"]]
    tick = check_once(store, cfg, spool, now=t0 + timedelta(seconds=19))
    assert tick.queued == [] and tick.released == []
    tick = check_once(store, cfg, spool, now=t0 + timedelta(seconds=20.5))
    assert tick.released == [uids["thin"]] and tick.queued == []
    with store.transaction() as s:
        assert [j.held for j in s.execute(select(Job)).scalars()] == [False]


def test_waits_for_siblings_still_arriving(env: tuple[Store, Spool, Config], tmp_path: Path) -> None:
    store, spool, cfg = env
    t0 = utcnow()
    study = generate_uid()
    first, second = generate_uid(), generate_uid()
    index(store, spool, write_series(tmp_path / "1", n=12, rows=16, cols=16, study_uid=study, series_uid=first,
                                     dz=3.0), t0)
    index(store, spool, write_series(tmp_path / "2", n=12, rows=16, cols=16, study_uid=study, series_uid=second,
                                     ConvolutionKernel="H30s", SliceThickness=5.0), t0 + timedelta(seconds=8))
    tick = check_once(store, cfg, spool, now=t0 + timedelta(seconds=11))
    assert tick.completed == [first] and tick.held == [first]  # analysed now, its answer held
    tick = check_once(store, cfg, spool, now=t0 + timedelta(seconds=19))
    # the closer thickness completes as the study settles: it is chosen, the held answer never sent
    assert tick.completed == [second] and tick.queued == [second] and tick.superseded == [first]
    assert jobs(store, first) == [(0, "superseded")] and jobs(store, second) == [(0, "queued")]


def test_late_instance_reopens_and_survives_restart(env: tuple[Store, Spool, Config], tmp_path: Path) -> None:
    store, spool, cfg = env
    t0 = utcnow()
    uid = generate_uid()
    paths = write_series(tmp_path / "a", n=13, rows=16, cols=16, series_uid=uid)
    index(store, spool, paths[:12], t0)
    check_once(store, cfg, spool, now=t0 + timedelta(seconds=11))
    assert jobs(store, uid) == [(0, "queued")]
    index(store, spool, paths[12:], t0 + timedelta(seconds=12))
    # receive only recorded it: the decision is route's, on its next tick
    assert series_row(store, uid).revision == 0 and jobs(store, uid) == [(0, "queued")]
    assert series_row(store, uid).instance_count == 13 and series_row(store, uid).decided_count == 12
    tick = check_once(store, cfg, spool, now=t0 + timedelta(seconds=12.5))  # late: revision 1, old job superseded
    assert tick.reopened == [uid] and tick.queued == []
    assert series_row(store, uid).revision == 1 and jobs(store, uid) == [(0, "superseded")]
    store.dispose()
    # a restarted serve: a new engine on the same file carries on from the database alone
    store2 = open_store(str(store.engine.url))
    tick = check_once(store2, cfg, spool, now=t0 + timedelta(seconds=23))
    assert tick.queued == [uid]
    assert jobs(store2, uid) == [(0, "superseded"), (1, "queued")]
    assert series_row(store2, uid).instance_count == 13


def test_a_series_that_is_not_ct_is_rejected_on_the_first_tick_and_never_reopens(
        env: tuple[Store, Spool, Config], tmp_path: Path) -> None:
    store, spool, cfg = env
    t0 = utcnow()
    uid = generate_uid()
    paths = write_series(tmp_path / "mr", n=3, rows=16, cols=16, series_uid=uid,
                         SOPClassUID="1.2.840.10008.5.1.4.1.1.4", Modality="MR")
    index(store, spool, paths[:2], t0)
    assert series_row(store, uid).state == "received"  # receive decides nothing
    tick = check_once(store, cfg, spool, now=t0 + timedelta(seconds=0.5))  # long before the stable time
    row = series_row(store, uid)
    assert tick.rejected_at_once == [uid] and row.state == "rejected"
    assert row.reason == "MR Image Storage is not CT: not analysed" and row.decided_count == 2
    index(store, spool, paths[2:], t0 + timedelta(seconds=1))
    tick = check_once(store, cfg, spool, now=t0 + timedelta(seconds=30))
    row = series_row(store, uid)
    assert tick.reopened == [] and row.state == "rejected" and row.revision == 0 and row.decided_count == 3
    assert jobs(store, uid) == []


def test_apscheduler_job_in_the_background(env: tuple[Store, Spool, Config], tmp_path: Path) -> None:
    store, spool, cfg = env
    cfg.series.stable_seconds = 0.3
    cfg.series.study_settle_seconds = 0.3
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
    from hexnode.route.completion import CountWatch

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


def test_stopped_sender_waits_aborted_wait_then_completes(env: tuple[Store, Spool, Config], tmp_path: Path) -> None:
    """A series whose sender stopped part-way waits `aborted_wait_seconds`, not `stable_seconds`,
    unless its own headers prove it whole (Images in Acquisition reached)."""
    store, spool, cfg = env
    cfg.series.aborted_wait_seconds = 60.0
    t0 = utcnow()
    part, whole = generate_uid(), generate_uid()
    index(store, spool, write_series(tmp_path / "p", n=12, rows=16, cols=16, series_uid=part), t0)
    index(store, spool, write_series(tmp_path / "w", n=12, rows=16, cols=16, series_uid=whole,
                                     ImagesInAcquisition=12), t0)
    with store.transaction() as s:
        for row in s.execute(select(Series)).scalars():
            row.aborted_at, row.aborted_note = t0, "12 instances arrived before the association was aborted"
    tick = check_once(store, cfg, spool, now=t0 + timedelta(seconds=MIN_QUIET_SECONDS / 2))
    assert tick.completed == []  # whole by count, but not yet quiet
    tick = check_once(store, cfg, spool, now=t0 + timedelta(seconds=20))  # past stable_seconds
    assert tick.completed == [whole] and series_row(store, part).state == "received"
    tick = check_once(store, cfg, spool, now=t0 + timedelta(seconds=61))
    assert tick.completed == [part]
    with store.transaction() as s:
        detail = s.execute(select(Event.detail).where(Event.to_state == "complete")
                           .order_by(Event.id.desc())).scalars().first()
    assert detail is not None and "after the sender stopped part-way" in detail


def test_route_selects_from_the_index_alone(env: tuple[Store, Spool, Config], tmp_path: Path) -> None:
    """Receive indexed the series header once: route decides with every spooled file gone, and
    the database holds no patient name, ID or birth date."""
    store, spool, cfg = env
    t0 = utcnow()
    uid = generate_uid()
    index(store, spool, write_series(tmp_path / "a", n=12, rows=16, cols=16, series_uid=uid,
                                     ReferringPhysicianName="DR^REFERRING", OperatorsName="OP^ERATOR"), t0)
    row = series_row(store, uid)
    assert row.header is not None
    text = str(row.header)
    assert "Test^Series" not in text and "SER-0001" not in text and '"00100030"' not in text
    assert "REFERRING" not in text and "ERATOR" not in text and "'PN'" not in text  # no person names
    assert row.header["00080060"]["Value"] == ["CT"] and "7FE00010" not in row.header  # modality kept, no pixels
    for f in (spool.root / "instances").rglob("*.dcm"):
        f.unlink()
    tick = check_once(store, cfg, spool, now=t0 + timedelta(seconds=11))
    assert tick.queued == [uid], tick


def test_a_stray_first_instance_does_not_decide_the_per_instance_values(
        env: tuple[Store, Spool, Config], tmp_path: Path) -> None:
    """The series header comes from the first instance; Image Type and orientation, which vary per
    instance, come from the middle one's indexed row (as when route read that file)."""
    store, spool, cfg = env
    t0 = utcnow()
    uid, study = generate_uid(), generate_uid()
    paths = write_series(tmp_path / "a", n=12, rows=16, cols=16, series_uid=uid, study_uid=study)
    stray = write_series(tmp_path / "s", n=1, rows=16, cols=16, series_uid=uid, study_uid=study,
                         ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"], InstanceNumber=0)
    index(store, spool, stray, t0)  # indexed first: its header is the series header
    index(store, spool, paths, t0)
    assert "LOCALIZER" in str(series_row(store, uid).header)
    tick = check_once(store, cfg, spool, now=t0 + timedelta(seconds=11))
    assert tick.queued == [uid], (tick, series_row(store, uid).reason)
