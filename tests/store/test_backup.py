"""docs/operations.md "Backup, upgrade, roll back, restore", step by step, on a node that analysed a
series: with the database at the previous release's schema, back up (tar of the data folder and
the settings; pg_dump for PostgreSQL), upgrade (`hexnode db upgrade`), lose everything, restore
(tar; psql), and find the series, its events and its result files again with `hexnode series`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from node_helpers import Node
from plumbing_helpers import PG_URL, pg_available
from series_helpers import write_series
from sqlalchemy import create_engine, func, select, text

from hexnode.store.db import Event, Instance, Result, Series, make_engine
from hexnode.store.spool import uid_hash

PREVIOUS_HEAD = "series_header"  # the schema of hexnode 0.1.0


def since_previous() -> list[str]:
    """The revisions an upgrade from 0.1.0 applies, oldest first."""
    from hexnode.store import migrate

    ids = [line.split(":", 1)[0] for line in migrate.history()]
    return ids[ids.index(PREVIOUS_HEAD) + 1:]


def hexnode(*args: str, config: Path) -> subprocess.CompletedProcess[str]:
    """The command line in this process (its own code path, without a Python start-up each time)."""
    import contextlib
    import io

    from hexnode.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main([*args, "--config", str(config)])
    return subprocess.CompletedProcess(["hexnode", *args], rc, out.getvalue(), err.getvalue())


def hexnode_process(*args: str, config: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEXNODE_")}
    return subprocess.run([sys.executable, "-m", "hexnode.cli", *args, "--config", str(config)],
                          capture_output=True, text=True, timeout=180, env=env, cwd=config.parent)


def downgrade(url: str, revision: str) -> None:
    """The database as the previous release left it (its schema head): what an upgrade starts from."""
    from alembic import command

    from hexnode.store import migrate

    engine = make_engine(url)
    with engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            conn.connection.driver_connection.execute("PRAGMA foreign_keys=OFF")  # type: ignore[union-attr]
        with conn.begin():
            command.downgrade(migrate._config(conn), revision)
    engine.dispose()


def counts(url: str) -> dict[str, int]:
    engine = make_engine(url)
    with engine.connect() as conn:
        out = {t.__tablename__: int(conn.execute(select(func.count()).select_from(t)).scalar_one())
               for t in (Series, Instance, Result, Event)}
    engine.dispose()
    return out


@pytest.fixture
def database(request: pytest.FixtureRequest) -> Iterator[str]:
    """'' (SQLite in the data folder) or a fresh PostgreSQL database, dropped afterwards."""
    if request.param == "sqlite":
        yield ""
        return
    if not pg_available():
        pytest.skip("PostgreSQL not reachable at " + PG_URL)
    name = f"hexnode_backup_{uuid.uuid4().hex[:8]}"
    admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield PG_URL.rsplit("/", 1)[0] + "/" + name
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.mark.parametrize("database", ["sqlite", "postgresql"], indirect=True)
def test_backup_upgrade_lose_restore_and_find_the_series(tmp_path: Path, database: str) -> None:
    node = Node(tmp_path, extra_toml=f'[database]\nurl = "{database}"\n' if database else "")
    url, data = node.cfg.database_url, Path(node.cfg.data_dir)
    libpq = url.replace("+psycopg", "")
    try:
        paths = write_series(tmp_path / "in", n=12, AccessionNumber="ACC-RESTORE-7")
        outcome = node.process(paths)
    finally:
        node.stop()
    assert outcome.state == "reported" and outcome.kinds == ["SC", "SEG", "SR"], outcome
    series_uid = str(__import__("pydicom").dcmread(paths[0], stop_before_pixels=True).SeriesInstanceUID)
    study_uid = str(__import__("pydicom").dcmread(paths[0], stop_before_pixels=True).StudyInstanceUID)
    name = uid_hash(series_uid)

    # the database as 0.1.0 left it: the hash and accession columns are what the upgrade adds
    downgrade(url, PREVIOUS_HEAD)
    before = counts(url)
    assert before["series"] == 1 and before["results"] == 3

    # back up: hexnode stopped; the data folder (database + spool) and the settings together
    backup = tmp_path / "backup"
    backup.mkdir()
    # (--version reads the settings as every command finds them: here ./hexnode.toml)
    v = subprocess.run([sys.executable, "-m", "hexnode.cli", "--version"], capture_output=True, text=True,
                       cwd=tmp_path, timeout=120, env={k: x for k, x in os.environ.items() if not k.startswith("HEXNODE_")})
    assert v.returncode == 0 and v.stdout.startswith("hexnode ") and "(active: the bundled version" in v.stdout, v.stdout
    (backup / "version.txt").write_text(v.stdout)
    subprocess.run(["tar", "-C", str(data), "-cpzf", str(backup / "data.tgz"), "."], check=True)
    subprocess.run(["tar", "-C", str(tmp_path), "-cpzf", str(backup / "config.tgz"), "hexnode.toml"], check=True)
    if database:
        subprocess.run(["pg_dump", "--clean", "--if-exists", "--no-owner", "-d", libpq, "-f",
                        str(backup / "database.sql")], check=True, capture_output=True)

    # upgrade, by hand, reading what it does
    current = hexnode("db", "current", config=node.config)
    new = since_previous()
    assert current.returncode == 1 and f"pending: {new[0]}" in current.stdout, current.stdout + current.stderr
    up = hexnode_process("db", "upgrade", config=node.config)
    assert up.returncode == 0, up.stderr
    assert up.stdout.strip() == f"database at {new[-1]} (was {PREVIOUS_HEAD}; applied: {', '.join(new)})"
    found = hexnode("series", name, config=node.config)
    assert found.returncode == 0 and f"series {name} (found by series hash)" in found.stdout, found.stderr

    # everything lost: the data folder and the database
    shutil.rmtree(data)
    (tmp_path / "hexnode.toml").unlink()
    if database:
        engine = create_engine(url)
        with engine.begin() as conn:
            conn.execute(text("DROP SCHEMA public CASCADE"))
            conn.execute(text("CREATE SCHEMA public"))
        engine.dispose()
    subprocess.run(["tar", "-C", str(tmp_path), "-xpzf", str(backup / "config.tgz")], check=True)
    lost = hexnode("status", config=node.config)
    assert lost.returncode == 2 and ("no database at" in lost.stderr or "has no hexnode tables" in lost.stderr)
    assert not (data / "hexnode.sqlite").exists()  # status looked, and created nothing

    # restore: the data folder (and the dump), as the backup had them: the previous schema
    data.mkdir()
    subprocess.run(["tar", "-C", str(data), "-xpzf", str(backup / "data.tgz")], check=True)
    if database:
        subprocess.run(["psql", "-v", "ON_ERROR_STOP=1", "-q", "-d", libpq, "-f", str(backup / "database.sql")],
                       check=True, capture_output=True)
    assert counts(url) == before
    restored = hexnode("db", "current", config=node.config)
    assert restored.returncode == 1 and f"database at {PREVIOUS_HEAD}" in restored.stdout

    # the series, by every name an admin may have, with its files back in the spool
    by_hash = hexnode("series", name, "--json", config=node.config)  # opens the database: upgraded on the way
    assert by_hash.returncode == 0, by_hash.stderr
    d = json.loads(by_hash.stdout)
    assert (d["series"], d["series_uid"], d["state"], d["accession_number"]) == (name, series_uid, "reported",
                                                                                "ACC-RESTORE-7")
    assert sorted(r["kind"] for r in d["results"]) == ["SC", "SEG", "SR"] and all(r["on_disk"] for r in d["results"])
    assert d["instances"]["count"] == 12 and d["jobs"][0]["state"] == "done"
    assert [(e["entity"], e["to"]) for e in d["events"]][:2] == [("series", "complete"), ("job", "queued")]
    for ident, how in ((series_uid, "Series Instance UID"), (study_uid, "Study Instance UID"),
                       (uid_hash(study_uid), "study hash"), ("ACC-RESTORE-7", "accession number")):
        r = hexnode("series", ident, config=node.config)
        assert r.returncode == 0 and f"series {name} (found by {how})" in r.stdout, (ident, r.stdout, r.stderr)
        assert "SECRET" not in r.stdout and "Test^Series" not in r.stdout and "SER-0001" not in r.stdout
    missing = hexnode("series", "0000000000", config=node.config)
    assert missing.returncode == 1 and "nothing matches '0000000000'" in missing.stderr
    assert counts(url) == before  # looking changes nothing but the schema
