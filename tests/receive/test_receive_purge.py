"""Spool retention: only finished (delivered, or rejected with everything delivered) old series go."""

from __future__ import annotations

import argparse
from datetime import timedelta
from pathlib import Path

from sqlalchemy import func, select

from hexnode.admin.purge import run_purge
from hexnode.store import queue
from hexnode.store.db import Event, Instance, Job, Outbox, Series, Study, open_store, utcnow
from hexnode.store.spool import Spool, instance_relpath


def test_purge_deletes_only_finished_old_series(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path / 'var' / 'hexnode.sqlite'}")
    spool = Spool(tmp_path / "var" / "spool").prepare()
    old = utcnow() - timedelta(days=40)
    ids = {}
    with store.transaction() as s:
        study = Study(study_uid="1.2.3")
        s.add(study)
        s.flush()
        for name, state in (("done", "delivered"), ("waiting", "rejected"), ("broken", "failed"),
                            ("recent", "delivered")):
            ser = Series(series_uid=f"1.2.3.{len(ids)}", study_id=study.id, state=state,
                         state_at=old if name != "recent" else utcnow(), last_instance_at=old)
            s.add(ser)
            s.flush()
            rel = instance_relpath(f"1.2.3.{len(ids)}.1")
            spool.write_bytes(rel, b"x" * 100)
            s.add(Instance(sop_instance_uid=f"1.2.3.{len(ids)}.1", series_id=ser.id, sop_class_uid="1.2",
                           transfer_syntax="1.2.840.10008.1.2.1", path=rel, size_bytes=100))
            ids[name] = ser.id
        job = Job(series_id=ids["waiting"], revision=0, state="done")
        s.add(job)
        s.flush()
        res = queue.add_result(s, job, "SR", "2.25.77", "results/x/sr.dcm", ["pacs"])  # still pending
        assert res.id
    cfg = tmp_path / "hexnode.toml"
    cfg.write_text(f'data_dir = "{tmp_path / "var"}"\n')
    assert run_purge(argparse.Namespace(config=str(cfg), days=30.0, dry_run=True)) == 0
    assert len(list((spool.root / "instances").rglob("*.dcm"))) == 4
    assert run_purge(argparse.Namespace(config=str(cfg), days=30.0, dry_run=False)) == 0
    with store.transaction() as s:
        left = {sid for sid in s.execute(select(Instance.series_id)).scalars()}
        assert left == {ids["waiting"], ids["broken"], ids["recent"]}
        ev = s.execute(select(Event).where(Event.entity == "series", Event.entity_id == ids["done"])).scalar_one()
        assert ev.detail.startswith("purged 1 files")
        assert s.get(Series, ids["done"]).state == "delivered"  # the audit rows stay
        assert s.execute(select(func.count()).select_from(Outbox)).scalar_one() == 1
    assert len(list((spool.root / "instances").rglob("*.dcm"))) == 3
    store.dispose()


def test_purge_deletes_old_quarantine_orphans_and_events_but_keeps_what_needs_a_person(tmp_path: Path) -> None:
    import os

    from hexnode.store.db import Notification

    store = open_store(f"sqlite:///{tmp_path / 'var' / 'hexnode.sqlite'}")
    spool = Spool(tmp_path / "var" / "spool").prepare()
    old = utcnow() - timedelta(days=40)
    long_ago = utcnow().timestamp() - 40 * 86400

    def aged(rel: str, data: bytes = b"x" * 10, age: float | None = long_ago) -> Path:
        p = spool.path(rel)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        if age is not None:
            os.utime(p, (age, age))
        return p

    q_old, q_new = aged("quarantine/a.dcm"), aged("quarantine/b.dcm", age=None)
    orphan, recent_orphan = aged(instance_relpath("1.9.1")), aged(instance_relpath("1.9.2"), age=None)
    indexed = aged(instance_relpath("1.9.3"))  # old, but a row names it (its series is not finished)
    with store.transaction() as s:
        study = Study(study_uid="1.9")
        s.add(study)
        s.flush()
        failed = Series(series_uid="1.9.10", study_id=study.id, state="failed", state_at=old, last_instance_at=old)
        done = Series(series_uid="1.9.11", study_id=study.id, state="delivered", state_at=utcnow(),
                      last_instance_at=utcnow())
        s.add_all([failed, done])
        s.flush()
        s.add(Instance(sop_instance_uid="1.9.3", series_id=failed.id, sop_class_uid="1.2",
                       transfer_syntax="1.2.840.10008.1.2.1", path=instance_relpath("1.9.3"), size_bytes=10))
        note = Notification(key="k1", kind="webhook", target="x", trigger="result", series_id=done.id, payload={},
                            state="failed")
        s.add(note)
        s.flush()
        for name, entity, eid, at in (
                ("failed", "series", failed.id, old), ("done-old", "series", done.id, old),
                ("done-new", "series", done.id, utcnow()), ("outbox", "outbox", 999, old),
                ("undelivered", "notification", note.id, old), ("model", "model", 0, old),
                ("quarantined", "instance", 0, old)):
            s.add(Event(entity=entity, entity_id=eid, to_state="x", detail=name, at=at))
    from hexnode.admin.purge import purge

    dry = purge(store, spool, 30.0, dry_run=True)
    assert (dry.quarantined, dry.orphans, dry.events) == (1, 1, 3)
    assert q_old.exists() and orphan.exists()
    res = purge(store, spool, 30.0)
    assert (res.quarantined, res.orphans, res.events) == (1, 1, 3)  # old done series, old outbox, old instance
    assert not q_old.exists() and q_new.exists()
    assert not orphan.exists() and recent_orphan.exists() and indexed.exists()
    with store.transaction() as s:
        kept = sorted(e.detail for e in s.execute(select(Event)).scalars())
    # the failed series' history, the undelivered notification's, the model's and the recent one stay
    assert kept == ["done-new", "failed", "model", "undelivered"]
    store.dispose()
