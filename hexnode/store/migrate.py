"""The database schema's version and upgrade: Alembic, run from open_store and ``hexnode db``.

The revisions live in hexnode/store/migrations/versions (package data: no alembic.ini is needed
at run time). ``legacy_v1_v4`` brings a database made by hexnode's own migrations
(``hexnode_meta.schema_version`` 1..4) to the schema of ``baseline``; ``baseline`` creates
whatever tables are missing (all of them in an empty database); later revisions follow.

API
---
``upgrade(store) -> str``   bring the database to the head revision; returns it.
``current(store) -> str | None``   the database's revision (None: not under Alembic yet).
``head() -> str``   the newest revision this hexnode knows.
``pending(store) -> list[str]``   revisions an upgrade would apply, oldest first.
``history() -> list[str]``   every revision with its title, oldest first.

Several processes may start together: the upgrade runs in one transaction that first takes
PostgreSQL's advisory lock 4242001 (SQLite: ``BEGIN IMMEDIATE``, the write lock), so the second
process waits, then finds the database at head and does nothing. A database already at head is
recognised with one query and no lock. On SQLite, foreign keys are off for the length of that
transaction (a batch migration copies a referenced table; SQLite's own procedure for schema
changes) and ``PRAGMA foreign_key_check`` must find nothing before it commits.
"""

from __future__ import annotations

import logging
from functools import lru_cache
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection

from hexnode.store.db import PG_SCHEMA_LOCK, Store

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
VERSION_TABLE = "alembic_version"


def _config(connection: Connection | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


@lru_cache(maxsize=1)
def _scripts() -> ScriptDirectory:
    return ScriptDirectory.from_config(_config())


def head() -> str:
    rev = _scripts().get_current_head()
    assert rev is not None
    return rev


def _current(conn: Connection) -> str | None:
    if not inspect(conn).has_table(VERSION_TABLE):
        return None
    return conn.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).scalar()


def current(store: Store) -> str | None:
    with store.engine.connect() as conn:
        return _current(conn)


def pending(store: Store) -> list[str]:
    at = current(store)
    revs = [r.revision for r in _scripts().iterate_revisions(head(), at)]
    return list(reversed(revs))


def history() -> list[str]:
    """Every revision, oldest first, as "id: first line of its docstring"."""
    revs = list(_scripts().walk_revisions())
    return [f"{r.revision}: {(r.doc or '').strip().splitlines()[0] if r.doc else ''}" for r in reversed(revs)]


def upgrade(store: Store) -> str:
    if current(store) == head():
        return head()
    applied = False
    engine = store.engine
    sqlite = engine.dialect.name == "sqlite"
    with engine.connect() as conn:
        if sqlite:
            # outside any transaction (the pragma is a no-op inside one); pysqlite autocommits here
            conn.connection.driver_connection.execute("PRAGMA foreign_keys=OFF")  # type: ignore[union-attr]
        try:
            with conn.begin():
                if engine.dialect.name == "postgresql":
                    conn.execute(text(f"SELECT pg_advisory_xact_lock({PG_SCHEMA_LOCK})"))
                before = _current(conn)  # again, under the lock: another process may have done it
                if before != head():
                    command.upgrade(_config(conn), "head")
                    applied = True
                if sqlite:
                    broken = conn.exec_driver_sql("PRAGMA foreign_key_check").all()
                    if broken:
                        raise RuntimeError(f"migration left rows without their parent: {broken[:5]}")
        finally:
            if sqlite:
                conn.connection.driver_connection.execute("PRAGMA foreign_keys=ON")  # type: ignore[union-attr]
    # one line for what Alembic logs in six (its own INFO lines are kept quiet: hexnode.runtime)
    if applied:
        log.info("database schema at %s (was %s)", head(), before or "empty, or made before Alembic")
    return head()
