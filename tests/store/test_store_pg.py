"""Queue on the real PostgreSQL (127.0.0.1:5432, database `test`), one fresh schema per test."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest
from plumbing_helpers import PG_URL, pg_available, pg_schema
from sqlalchemy import select

from hexnode.store import migrate, queue
from hexnode.store.db import Event, Job, Series, Study, open_store, utcnow

pytestmark = pytest.mark.skipif(not pg_available(), reason="PostgreSQL not running on 127.0.0.1:5432")


@pytest.fixture
def store():
    with pg_schema() as schema:
        st = open_store(PG_URL, schema=schema)
        yield st
        st.dispose()


def _queued(store, n: int) -> list[int]:
    ids = []
    with store.transaction() as s:
        study = Study(study_uid="1.2.3")
        s.add(study)
        s.flush()
        for i in range(n):
            ser = Series(series_uid=f"1.2.3.{i}", study_id=study.id, calling_ae="CT")
            s.add(ser)
            s.flush()
            queue.transition(s, ser, "complete")
            ids.append(queue.enqueue_job(s, ser).id)
    return ids


def test_schema_is_isolated_and_versioned(store) -> None:
    assert store.dialect == "postgresql"
    assert migrate.current(store) == migrate.head()
    with store.transaction() as s:
        path = s.connection().exec_driver_sql("SHOW search_path").scalar()
    assert path.startswith("hexnode_t_")


def test_two_concurrent_claimers_skip_locked_each_job_once(store) -> None:
    ids = _queued(store, 10)
    claimed: list[tuple[str, int]] = []
    lock = threading.Lock()
    start = threading.Barrier(2)

    def worker(name: str) -> None:
        start.wait()
        while True:
            with store.transaction() as s:
                job = queue.claim_job(s, name, 60, max_attempts=3)
                if job is None:
                    return
                # Keep the row locked a while: the other claimer must skip it, not wait or re-take it.
                time.sleep(0.05)
            with lock:
                claimed.append((name, job.id))

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    got = [j for _, j in claimed]
    assert sorted(got) == sorted(ids), "every job claimed exactly once"
    assert {n for n, _ in claimed} == {"w0", "w1"}, "both claimers worked concurrently"
    with store.transaction() as s:
        jobs = s.execute(select(Job)).scalars().all()
        assert all(j.state == "running" and j.attempts == 1 for j in jobs)
        running = s.execute(select(Event).where(Event.entity == "job", Event.to_state == "running")).scalars().all()
        assert len(running) == 10


def test_lease_expiry_reclaim_and_completion(store) -> None:
    (jid,) = _queued(store, 1)
    t0 = utcnow()
    with store.transaction() as s:
        assert queue.claim_job(s, "dead", 2, max_attempts=3, now=t0).id == jid
    with store.transaction() as s:
        job = queue.claim_job(s, "alive", 2, max_attempts=3, now=t0 + timedelta(seconds=3))
        assert job.id == jid and job.attempts == 2
    with store.transaction() as s:
        assert not queue.heartbeat(s, jid, "dead", 30)
        assert queue.heartbeat(s, jid, "alive", 30)
    with store.transaction() as s:
        queue.complete_job(s, jid, "alive", timings={"load": 0.2})
    with store.transaction() as s:
        assert s.get(Job, jid).state == "done"
        assert s.get(Series, s.get(Job, jid).series_id).state == "reported"
