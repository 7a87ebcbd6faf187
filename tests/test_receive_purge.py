"""Spool retention: only finished (delivered, or rejected with everything delivered) old series go."""

from __future__ import annotations

import argparse
from datetime import timedelta
from pathlib import Path

from sqlalchemy import func, select

from hexnode.receive.purge import run_purge
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
