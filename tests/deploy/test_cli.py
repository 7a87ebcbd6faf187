"""What an admin sees first: every command names its settings file and database; commands that only
read refuse to create a database where the settings point at none, and say where they looked;
`hexnode --version` names the package and model versions (hexnode/cli.py, hexnode/about.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from hexnode import __version__

REPO = Path(__file__).resolve().parents[2]


def run(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("HEXNODE_", "_HEXNODE_"))}
    return subprocess.run([sys.executable, "-m", "hexnode.cli", *args], capture_output=True, text=True, timeout=120,
                          cwd=cwd, env=clean | (env or {}))


@pytest.mark.parametrize("command", [["status"], ["status", "--json"], ["series", "0123456789"], ["outcomes"],
                                     ["models", "list"], ["db", "current"]])
def test_read_only_commands_never_create_a_database(tmp_path: Path, command: list[str]) -> None:
    r = run(*command, cwd=tmp_path)
    assert r.returncode == 2, r.stdout + r.stderr
    where = f"sqlite:///{tmp_path.resolve() / 'var' / 'hexnode.sqlite'}"
    first, second, *rest = r.stderr.splitlines()
    assert first == f"hexnode {command[0]}: config none (built-in defaults); database {where}"
    assert second == f"hexnode {command[0]}: no database at {where}."
    assert "--config FILE, else $HEXNODE_CONFIG, else ./hexnode.toml" in rest[0]
    assert "HEXNODE_DATABASE_URL" in rest[1] and "hexnode db upgrade" in rest[1]
    assert r.stdout == "" and not (tmp_path / "var").exists()


def test_an_empty_postgresql_database_is_not_a_node(tmp_path: Path) -> None:
    from plumbing_helpers import PG_URL, pg_available

    if not pg_available():
        pytest.skip("PostgreSQL not reachable")
    r = run("status", cwd=tmp_path, env={"HEXNODE_DATABASE_URL": PG_URL.replace("@", ":pw-never-shown@")
                                         + "?options=-csearch_path%3Dno_such_schema"})
    assert r.returncode == 2
    assert "has no hexnode tables" in r.stderr or "cannot open the database" in r.stderr, r.stderr
    assert "pw-never-shown" not in r.stderr and "+ HEXNODE_DATABASE_URL" in r.stderr.splitlines()[0]


def test_status_names_the_settings_and_database_it_read(tmp_path: Path) -> None:
    (tmp_path / "hexnode.toml").write_text(f'data_dir = "{tmp_path / "data"}"\n')
    made = run("db", "upgrade", cwd=tmp_path)  # a new node's database: made on purpose
    assert made.returncode == 0 and made.stdout.startswith("database at "), made.stderr
    r = run("status", cwd=tmp_path / "data", env={"HEXNODE_CONFIG": str(tmp_path / "hexnode.toml")})
    assert r.returncode == 0 and r.stdout.startswith("overall:") and "\nseries:      none\n" in r.stdout
    assert r.stderr.splitlines() == [f"hexnode status: config {tmp_path / 'hexnode.toml'}; "
                                     f"database sqlite:///{tmp_path / 'data' / 'hexnode.sqlite'}"]
    history = run("db", "history", cwd=tmp_path / "data")  # the revisions this version ships: no database needed
    from hexnode.store import migrate

    assert history.returncode == 0 and history.stdout.splitlines()[-1].startswith(f"{migrate.head()}:")
    assert not (tmp_path / "data" / "var").exists()


def test_version_names_package_and_models(tmp_path: Path) -> None:
    r = run("--version", cwd=tmp_path)
    assert r.returncode == 0
    lines = r.stdout.splitlines()
    assert lines[0] == f"hexnode {__version__}"
    assert lines[1].startswith("models: hexnode-he ") and "active version unknown: no database at" in lines[1]
    assert not (tmp_path / "var").exists()
