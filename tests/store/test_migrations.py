"""Alembic migrations on SQLite and the real PostgreSQL: an empty database, and databases made by
earlier hexnode versions (schema versions 1..4, their real DDL in tests/legacy_schema), all end at
the head revision with no difference from Base.metadata (alembic's autogenerate comparison)."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from plumbing_helpers import PG_URL, legacy_ddl, pg_available, pg_schema
from sqlalchemy import Engine, create_engine, inspect, select, text

from hexnode.store import migrate
from hexnode.store.db import (
    Base,
    Meta,
    Notification,
    Outbox,
    Scan,
    Series,
    Store,
    Study,
    make_engine,
    open_store,
)

T0 = "2026-01-01 00:00:00"
# What hexnode's own migrations did to a version-1 database on the way to version 4 (db.py before
# Alembic): such a database is at 4 with the columns those steps added, report_revision nullable.
OLD_STEPS_1_TO_4 = [
    "ALTER TABLE outbox ADD COLUMN queued_at TIMESTAMP",
    "UPDATE outbox SET queued_at = created_at WHERE queued_at IS NULL",
    "ALTER TABLE series ADD COLUMN aborted_at TIMESTAMP",
    "ALTER TABLE series ADD COLUMN aborted_note TEXT",
    "ALTER TABLE studies ADD COLUMN answer_kind VARCHAR(16)",
    "ALTER TABLE studies ADD COLUMN answer_sr_uid TEXT",
    "ALTER TABLE studies ADD COLUMN answer_sr_series_uid TEXT",
    "ALTER TABLE studies ADD COLUMN report_revision INTEGER",
    "UPDATE studies SET report_revision = 0 WHERE report_revision IS NULL",
    "ALTER TABLE jobs ADD COLUMN study_revision INTEGER",
    "UPDATE hexnode_meta SET value = '4' WHERE key = 'schema_version'",
]
CASES = ["v1", "v2", "v3", "v4", "v1-migrated-to-v4"]
needs_pg = pytest.mark.skipif(not pg_available(), reason="PostgreSQL not running on 127.0.0.1:5432")


def differences(store: Store) -> list[object]:
    with store.engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True, "compare_server_default": True})
        return list(compare_metadata(ctx, Base.metadata))


def make_legacy(engine: Engine, case: str) -> None:
    """A database as an earlier hexnode left it: its tables, its schema_version row, a delivered
    result and an unrelated hexnode_meta key."""
    version = case[:2]
    statements = legacy_ddl(version, engine.dialect.name)
    rows = [
        f"INSERT INTO studies (id, study_uid, created_at{', report_revision' if version == 'v4' else ''}) "
        f"VALUES (1, '1.2.3', '{T0}'{', 0' if version == 'v4' else ''})",
        "INSERT INTO series (id, series_uid, study_id, calling_ae, state, revision, instance_count, "
        f"first_instance_at, last_instance_at, state_at) VALUES (1, '1.2.3.1', 1, 'CT', 'delivered', 0, 1, "
        f"'{T0}', '{T0}', '{T0}')",
        f"INSERT INTO jobs (id, series_id, revision, state, attempts, created_at) VALUES (1, 1, 0, 'done', 1, '{T0}')",
        "INSERT INTO results (id, job_id, series_id, kind, sop_instance_uid, sop_class_uid, path, created_at) "
        f"VALUES (1, 1, 1, 'SR', '1.2.3.9', '', 'x.dcm', '{T0}')",
        # from version 2 on, hexnode wrote queued_at itself; version 1 had no such column
        f"INSERT INTO outbox (id, result_id, destination, state, attempts, next_attempt_at, created_at"
        f"{'' if version == 'v1' else ', queued_at'}) VALUES (1, 1, 'PACS', 'delivered', 1, '{T0}', '{T0}'"
        f"{'' if version == 'v1' else f', {T0!r}'})",
        "INSERT INTO hexnode_meta (key, value) VALUES ('active_model', 'v-old')",
    ]
    with engine.begin() as conn:
        for sql in statements + rows + (OLD_STEPS_1_TO_4 if case == "v1-migrated-to-v4" else []):
            conn.execute(text(sql))


def check_upgraded(store: Store, case: str) -> None:
    assert migrate.current(store) == migrate.head()
    assert differences(store) == []
    tables = set(inspect(store.engine).get_table_names())
    assert {"notifications", "scans", "outcomes", "alembic_version"} <= tables
    with store.transaction() as s:
        study = s.execute(select(Study)).scalar_one()
        assert (study.study_uid, study.answer_kind, study.report_revision) == ("1.2.3", None, 0)
        outbox = s.execute(select(Outbox)).scalar_one()
        assert outbox.queued_at == outbox.created_at  # the maximum age counts from the row's creation
        assert s.execute(select(Series.aborted_at)).scalar_one() is None
        # a series decided before the upgrade counts as decided on what it has: nothing re-opens
        assert s.execute(select(Series.decided_count)).scalar_one() == 1
        assert s.get(Meta, "schema_version") is None  # alembic_version is the record now
        assert s.get(Meta, "active_model").value == "v-old"
        # the tables create_all used to add are usable
        s.add(Scan(patient_key="0" * 64, series_id=1, acquired_at=study.created_at, role="baseline"))
        s.add(Notification(key="k", target="t", kind="webhook", trigger="alert", payload={}))


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'db' / 'hexnode.sqlite'}"


@pytest.fixture
def pg() -> Iterator[str]:
    if not pg_available():
        pytest.skip("PostgreSQL not running on 127.0.0.1:5432")
    with pg_schema() as schema:
        yield schema


def test_empty_sqlite_database_is_created_at_head_with_no_difference(sqlite_url: str) -> None:
    store = open_store(sqlite_url)
    try:
        assert migrate.current(store) == migrate.head() == "corrections"
        assert migrate.pending(store) == []
        assert differences(store) == []
        assert set(inspect(store.engine).get_table_names()) == set(Base.metadata.tables) | {"alembic_version"}
    finally:
        store.dispose()


@needs_pg
def test_empty_postgresql_schema_is_created_at_head_with_no_difference(pg: str) -> None:
    store = open_store(PG_URL, schema=pg)
    try:
        assert migrate.current(store) == migrate.head()
        assert differences(store) == []
        assert set(inspect(store.engine).get_table_names()) == set(Base.metadata.tables) | {"alembic_version"}
    finally:
        store.dispose()


def test_compare_metadata_sees_a_schema_that_drifted(sqlite_url: str) -> None:
    """The comparison the other tests rely on does find a difference when there is one."""
    store = open_store(sqlite_url)
    try:
        with store.engine.begin() as conn:
            conn.execute(text("DROP INDEX ix_outbox_state_due"))
            conn.execute(text("ALTER TABLE series DROP COLUMN aborted_note"))
        found = {d[0] if isinstance(d, tuple) else d[0][0] for d in differences(store)}  # type: ignore[index]
        assert {"add_index", "add_column"} <= found  # what an upgrade would have to add
    finally:
        store.dispose()


@pytest.mark.parametrize("case", CASES)
def test_legacy_sqlite_database_is_upgraded_in_place(tmp_path: Path, sqlite_url: str, case: str) -> None:
    engine = make_engine(sqlite_url.replace("/db/", "/"))
    make_legacy(engine, case)
    engine.dispose()
    store = open_store(sqlite_url.replace("/db/", "/"))
    try:
        check_upgraded(store, case)
    finally:
        store.dispose()


@needs_pg
@pytest.mark.parametrize("case", CASES)
def test_legacy_postgresql_database_is_upgraded_in_place(pg: str, case: str) -> None:
    engine = make_engine(PG_URL, schema=pg)
    with engine.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{pg}"'))
    make_legacy(engine, case)
    engine.dispose()
    store = open_store(PG_URL, schema=pg)
    try:
        check_upgraded(store, case)
    finally:
        store.dispose()


def _open_together(url: str, schema: str | None, n: int) -> list[str]:
    """n stores opened at the same moment, each with its own engine (as n processes would)."""
    start = threading.Barrier(n)
    got: list[str] = []
    errors: list[BaseException] = []

    def one() -> None:
        try:
            start.wait()
            st = open_store(url, schema=schema)
            got.append(str(migrate.current(st)))
            st.dispose()
        except BaseException as exc:  # reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=one) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    return got


def test_several_starts_at_once_upgrade_a_legacy_sqlite_database_once(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.sqlite'}"
    engine = make_engine(url)
    make_legacy(engine, "v1")
    engine.dispose()
    assert _open_together(url, None, 4) == [migrate.head()] * 4
    store = open_store(url)
    try:
        check_upgraded(store, "v1")
    finally:
        store.dispose()


@needs_pg
def test_several_starts_at_once_on_postgresql_serialise_on_the_advisory_lock(pg: str) -> None:
    assert _open_together(PG_URL, pg, 4) == [migrate.head()] * 4
    store = open_store(PG_URL, schema=pg)
    try:
        assert differences(store) == []
        with store.engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM alembic_version")).scalar() == 1
    finally:
        store.dispose()


def test_a_failed_upgrade_rolls_back_whole(tmp_path: Path) -> None:
    """A legacy database the bridge cannot finish (a study row that breaks the NOT NULL copy is
    impossible, so: an orphaned outbox row that foreign_key_check finds) stays as it was."""
    url = f"sqlite:///{tmp_path / 'old.sqlite'}"
    engine = make_engine(url)
    make_legacy(engine, "v1")
    with engine.connect() as conn:
        conn.connection.driver_connection.execute("PRAGMA foreign_keys=OFF")
        conn.connection.driver_connection.execute(
            f"INSERT INTO outbox (id, result_id, destination, state, attempts, next_attempt_at, created_at) "
            f"VALUES (2, 99, 'PACS', 'pending', 0, '{T0}', '{T0}')")
    engine.dispose()
    with pytest.raises(RuntimeError, match="without their parent"):
        open_store(url)
    raw = create_engine(url)
    with raw.connect() as conn:
        assert "alembic_version" not in inspect(conn).get_table_names()
        assert conn.execute(text("SELECT value FROM hexnode_meta WHERE key = 'schema_version'")).scalar() == "1"
        assert "queued_at" not in {c["name"] for c in inspect(conn).get_columns("outbox")}
    raw.dispose()


def test_db_cli_reports_then_upgrades(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.sqlite'}"
    engine = make_engine(url)
    make_legacy(engine, "v3")
    engine.dispose()
    config = tmp_path / "hexnode.toml"
    config.write_text(f'data_dir = "{tmp_path}"\n[database]\nurl = "{url}"\n')

    def db(action: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "hexnode.cli", "db", action, "--config", str(config)],
                              capture_output=True, text=True, timeout=120)

    before = db("current")
    assert before.returncode == 1 and "pending: legacy_v1_v4, baseline" in before.stdout, before
    up = db("upgrade")
    assert up.returncode == 0 and "applied: legacy_v1_v4, baseline" in up.stdout, up
    after = db("current")
    assert after.returncode == 0 and f"database at {migrate.head()}" in after.stdout, after
    store = open_store(url, create=False)
    try:
        check_upgraded(store, "v3")
    finally:
        store.dispose()
