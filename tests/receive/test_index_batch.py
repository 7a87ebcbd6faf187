"""The indexer records a batch of arrivals in one look-up and one flush (hexnode.receive.index.
record_instances): the same rows and counts as one instance at a time, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import pytest
from plumbing_helpers import store_on, write_ct
from sqlalchemy import func, select

from hexnode.receive.index import Arrival, index_header, record_instance, record_instances
from hexnode.store.db import Instance, Series, Study

T0 = datetime(2026, 12, 6, 10, 0, 0)


def _arrivals(paths: list[Path], start: int = 0) -> list[Arrival]:
    return [Arrival(index_header(p), f"instances/x/{p.parent.name}-{p.name}", p.stat().st_size, "SCU",
                    T0 + timedelta(seconds=start + i)) for i, p in enumerate(paths)]


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_a_batch_records_what_one_at_a_time_records(tmp_path: Path, kind: str) -> None:
    a = write_ct(tmp_path / "a", 5, size=16)
    b = write_ct(tmp_path / "b", 3, size=16, study_uid=str(index_header(a[0]).study_uid))
    with store_on(kind, f"sqlite:///{tmp_path / 'db.sqlite'}") as store:
        with store.transaction() as s:  # an instance indexed earlier, then a batch holding it again
            assert record_instance(s, index_header(a[0]), "instances/x/first.dcm", 1, "SCU", T0).created
        batch = _arrivals(a) + _arrivals(b, 10) + _arrivals(a[3:4], 20)  # a[3] twice in one batch
        with store.transaction() as s:
            recs = record_instances(s, batch)
        assert [r.created for r in recs] == [False, True, True, True, True, True, True, True, False]
        assert [r.new_series for r in recs].count(True) == 1  # series b; a existed before the batch
        assert len({r.series_id for r in recs[:5]}) == 1 and recs[5].series_id != recs[0].series_id
        with store.transaction() as s:
            assert s.scalar(select(func.count()).select_from(Instance)) == 8
            assert s.scalar(select(func.count()).select_from(Study)) == 1
            counts = {ser.series_uid: (ser.instance_count, ser.last_instance_at) for ser in s.scalars(select(Series))}
        assert counts == {str(index_header(a[0]).series_uid): (5, T0 + timedelta(seconds=4)),
                          str(index_header(b[0]).series_uid): (3, T0 + timedelta(seconds=12))}
