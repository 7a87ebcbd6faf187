"""Store and queue on SQLite: schema, state machines + audit events, claim/lease/reclaim, results."""

from __future__ import annotations

import os
import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select

from hexnode.store import migrate, queue
from hexnode.store.db import (
    Event,
    Job,
    Outbox,
    Series,
    Study,
    open_store,
    utcnow,
)
from hexnode.store.spool import uid_hash


def _series(store, uid: str = "1.2.3.4") -> int:
    with store.transaction() as s:
        study = Study(study_uid=uid + ".0")
        s.add(study)
        s.flush()
        series = Series(series_uid=uid, study_id=study.id, calling_ae="CT1")
        s.add(series)
        s.flush()
        return series.id


def _queued(store, n: int) -> list[int]:
    ids = []
    for i in range(n):
        sid = _series(store, f"1.2.3.{i + 1}")
        with store.transaction() as s:
            ser = s.get(Series, sid)
            queue.transition(s, ser, "complete", "stable")
            ids.append(queue.enqueue_job(s, ser).id)
    return ids


@pytest.fixture
def store(tmp_path: Path):
    st = open_store(f"sqlite:///{tmp_path / 'db' / 'hexnode.sqlite'}")
    yield st
    st.dispose()


def test_schema_created_versioned_and_reopenable(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'x.sqlite'}"
    st = open_store(url)
    assert migrate.current(st) == migrate.head()
    _series(st)
    st.dispose()
    st2 = open_store(url)  # second start: no error, data kept
    assert migrate.current(st2) == migrate.head()
    with st2.transaction() as s:
        assert s.execute(select(func.count()).select_from(Series)).scalar_one() == 1
        mode = s.connection().exec_driver_sql("PRAGMA journal_mode").scalar()
    assert mode == "wal"
    st2.dispose()


def test_transitions_write_events_and_refuse_illegal_moves(store) -> None:
    sid = _series(store)
    with store.transaction() as s:
        ser = s.get(Series, sid)
        queue.transition(s, ser, "complete", "stable 10 s")
        assert queue.transition(s, ser, "complete") is None  # no-op, no event
        with pytest.raises(queue.InvalidTransition):
            queue.transition(s, ser, "delivered")
    with store.transaction() as s:
        evs = s.execute(select(Event).where(Event.entity == "series", Event.entity_id == sid)).scalars().all()
        assert [(e.from_state, e.to_state, e.detail) for e in evs] == [("received", "complete", "stable 10 s")]
        assert s.get(Series, sid).state == "complete"


def test_enqueue_is_idempotent_per_revision(store) -> None:
    sid = _series(store)
    with store.transaction() as s:
        ser = s.get(Series, sid)
        queue.transition(s, ser, "complete")
        j1 = queue.enqueue_job(s, ser)
        j2 = queue.enqueue_job(s, ser)
        assert j1.id == j2.id and ser.state == "queued"
    with store.transaction() as s:
        assert s.execute(select(func.count()).select_from(Job)).scalar_one() == 1


def test_claim_heartbeat_complete(store) -> None:
    (jid,) = _queued(store, 1)
    with store.transaction() as s:
        job = queue.claim_job(s, "w1", 30, max_attempts=3)
        assert job is not None and job.id == jid and job.attempts == 1 and job.lease_owner == "w1"
        assert s.get(Series, job.series_id).state == "running"
    with store.transaction() as s:
        assert queue.claim_job(s, "w2", 30, max_attempts=3) is None  # nothing else queued
        assert queue.heartbeat(s, jid, "w1", 30)
        assert not queue.heartbeat(s, jid, "w2", 30)  # not w2's lease
    with store.transaction() as s:
        queue.complete_job(s, jid, "w1", timings={"segment": 1.5})
    with store.transaction() as s:
        job = s.get(Job, jid)
        assert job.state == "done" and job.timings == {"segment": 1.5}
        assert s.get(Series, job.series_id).state == "reported"
        states = s.execute(select(Event.to_state).where(Event.entity == "job").order_by(Event.id)).scalars().all()
        assert states == ["queued", "running", "done"]


def test_expired_lease_is_reclaimed_and_old_owner_loses_it(store) -> None:
    (jid,) = _queued(store, 1)
    t0 = utcnow()
    with store.transaction() as s:
        assert queue.claim_job(s, "dead-worker", 5, max_attempts=3, now=t0).id == jid
    with store.transaction() as s:  # lease still valid: nothing to claim
        assert queue.claim_job(s, "w2", 5, max_attempts=3, now=t0 + timedelta(seconds=4)) is None
    with store.transaction() as s:
        job = queue.claim_job(s, "w2", 5, max_attempts=3, now=t0 + timedelta(seconds=6))
        assert job is not None and job.id == jid and job.attempts == 2 and job.lease_owner == "w2"
    with store.transaction() as s, pytest.raises(queue.LeaseLost):
        queue.complete_job(s, jid, "dead-worker")
    with store.transaction() as s:
        details = s.execute(select(Event.detail).where(Event.entity == "job")).scalars().all()
        assert any("lease of dead-worker expired" in (d or "") for d in details)


def test_max_attempts_fails_job_and_series_with_reason(store) -> None:
    (jid,) = _queued(store, 1)
    for attempt in range(1, 3):
        with store.transaction() as s:
            job = queue.claim_job(s, "w", 30, max_attempts=2)
            assert job.attempts == attempt
            queue.fail_job(s, jid, "w", "ValueError: boom", max_attempts=2)
    with store.transaction() as s:
        job = s.get(Job, jid)
        ser = s.get(Series, job.series_id)
        assert job.state == "failed" and ser.state == "failed"
        assert "boom" in ser.reason and "2 attempts" in ser.reason
        assert queue.claim_job(s, "w", 30, max_attempts=2) is None


def test_reopen_supersedes_queued_job_and_new_revision_runs(store) -> None:
    (jid,) = _queued(store, 1)
    with store.transaction() as s:
        ser = s.get(Series, s.get(Job, jid).series_id)
        queue.reopen_series(s, ser, "instance after completion")
        assert ser.revision == 1 and ser.state == "received"
        assert s.get(Job, jid).state == "superseded"
        queue.transition(s, ser, "complete")
        j2 = queue.enqueue_job(s, ser)
        assert j2.id != jid and j2.revision == 1


def test_add_result_idempotent_with_outbox_per_destination(store) -> None:
    (jid,) = _queued(store, 1)
    with store.transaction() as s:
        job = queue.claim_job(s, "w", 30, max_attempts=3)
        r1 = queue.add_result(s, job, "SEG", "2.25.1", "results/a.dcm", ["pacs", "web"])
        r2 = queue.add_result(s, job, "SEG", "2.25.1", "results/b.dcm", ["pacs", "web"])
        assert r1.id == r2.id and r2.path == "results/b.dcm"
        assert s.execute(select(func.count()).select_from(Outbox)).scalar_one() == 2


def test_two_threads_claim_each_job_exactly_once_on_sqlite(store) -> None:
    ids = _queued(store, 10)
    claimed: list[tuple[str, int]] = []
    lock = threading.Lock()

    def worker(name: str) -> None:
        while True:
            with store.transaction() as s:
                job = queue.claim_job(s, name, 30, max_attempts=3)
                if job is None:
                    return
                time.sleep(0.01)  # hold the claim transaction open: the other thread must wait
            with lock:
                claimed.append((name, job.id))

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(j for _, j in claimed) == sorted(ids)


def test_version_1_database_is_migrated_in_place(tmp_path: Path) -> None:
    """Today's schema with the columns of versions 2-4 taken out, as hexnode's own migrations
    recorded it (hexnode_meta.schema_version 1, no alembic_version): the legacy revision adds
    them back. tests/store/test_migrations.py does the same from the real DDL of each old version."""
    import sqlite3

    url = f"sqlite:///{tmp_path / 'old.sqlite'}"
    open_store(url).dispose()
    con = sqlite3.connect(tmp_path / "old.sqlite")  # make it look like a version-1 database
    con.execute("DROP TABLE alembic_version")
    con.execute("ALTER TABLE outbox DROP COLUMN queued_at")
    con.execute("ALTER TABLE series DROP COLUMN aborted_at")
    con.execute("ALTER TABLE series DROP COLUMN aborted_note")
    for col in ("answer_kind", "answer_sr_uid", "answer_sr_series_uid", "report_revision"):
        con.execute(f"ALTER TABLE studies DROP COLUMN {col}")
    con.execute("ALTER TABLE jobs DROP COLUMN study_revision")
    # the revisions after the baseline
    con.execute("ALTER TABLE series DROP COLUMN decided_count")
    con.execute("ALTER TABLE series DROP COLUMN header")
    con.execute("ALTER TABLE instances DROP COLUMN image_type")
    con.execute("DROP TABLE stage_beats")
    con.execute("ALTER TABLE jobs DROP COLUMN held")
    con.execute("DROP TABLE corrections")
    for table, col in (("series", "uid_hash"), ("series", "accession_number"), ("studies", "uid_hash")):
        con.execute(f"DROP INDEX ix_{table}_{col}")
        con.execute(f"ALTER TABLE {table} DROP COLUMN {col}")
    con.execute("INSERT INTO studies (study_uid, created_at) VALUES ('1.2.3', '2026-01-01 00:00:00')")
    con.execute("INSERT INTO hexnode_meta (key, value) VALUES ('schema_version', '1')")
    con.commit()
    con.close()
    st = open_store(url)
    assert migrate.current(st) == migrate.head()
    with st.transaction() as s:
        cols = [r[1] for r in s.connection().exec_driver_sql("PRAGMA table_info(outbox)")]
        series_cols = [r[1] for r in s.connection().exec_driver_sql("PRAGMA table_info(series)")]
        meta = s.connection().exec_driver_sql("SELECT key FROM hexnode_meta").scalars().all()
    assert "queued_at" in cols
    assert {"aborted_at", "aborted_note"} <= set(series_cols)  # version 3
    assert "schema_version" not in meta  # alembic_version is the record now
    with st.transaction() as s:  # version 4: the study's answer; an old study has none yet
        study = s.execute(select(Study)).scalar_one()
        assert (study.answer_kind, study.answer_sr_uid, study.report_revision) == (None, None, 0)
        assert study.uid_hash == uid_hash("1.2.3")  # series_lookup fills in the rows it finds
        job_cols = [r[1] for r in s.connection().exec_driver_sql("PRAGMA table_info(jobs)")]
    assert "study_revision" in job_cols
    st.dispose()


def test_job_of_a_dead_local_worker_is_reclaimed_before_its_lease_ends(store) -> None:
    import socket
    import subprocess

    (jid,) = _queued(store, 1)
    p = subprocess.Popen(["true"])
    p.wait()  # a pid that no longer exists
    dead_owner = f"{socket.gethostname()}:{p.pid}"
    with store.transaction() as s:
        assert queue.claim_job(s, dead_owner, 3600, max_attempts=3).id == jid
    assert queue.owner_is_dead(dead_owner)
    assert not queue.owner_is_dead(f"{socket.gethostname()}:{os.getpid()}")
    assert not queue.owner_is_dead(f"some-other-host:{p.pid}")
    with store.transaction() as s:
        job = queue.claim_job(s, "w2", 30, max_attempts=3)
        assert job is not None and job.id == jid and job.attempts == 2


def test_one_back_off_for_outbox_and_notifications() -> None:
    """hexnode.store.lease's back-off: initial * 2**(attempts-1), capped; [send] and [notify] defaults."""
    from hexnode.config import NotifyConfig, SendConfig
    from hexnode.notify import state
    from hexnode.send import outbox

    assert [outbox.backoff_seconds(a, SendConfig()) for a in (0, 1, 2, 3, 8, 9, 20)] == [
        2.0, 2.0, 4.0, 8.0, 256.0, 300.0, 300.0]
    assert [state.backoff_seconds(a, NotifyConfig()) for a in (1, 2, 6, 7, 20)] == [2.0, 4.0, 64.0, 120.0, 120.0]
