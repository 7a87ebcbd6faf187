"""Write the DDL that an earlier hexnode's ``create_all`` issued, for the legacy-upgrade tests.

    python tests/legacy_schema/dump.py   # from the repository root, with git history

For each hexnode schema version (1..4) it takes hexnode/store/db.py from the first commit that
shipped that version, imports it, and writes vN.sqlite.sql and vN.postgresql.sql: its tables and
indexes in create order, then the hexnode_meta row its init_db() wrote. Generated once and
committed: the old modules are not importable from the package any more.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.schema import CreateIndex, CreateTable

# the first commit of each schema version (git log -S"SCHEMA_VERSION = N" -- hexnode/store/db.py)
COMMITS = {1: "93c8e3e", 2: "b303ab4", 3: "be1d6eb", 4: "d6ceef4"}
HERE = Path(__file__).resolve().parent


def main() -> int:
    for version, commit in COMMITS.items():
        source = subprocess.run(["git", "show", f"{commit}:hexnode/store/db.py"], check=True,
                                capture_output=True, text=True).stdout
        path = HERE / f"_db_v{version}.py"
        path.write_text(source)
        try:
            spec = importlib.util.spec_from_file_location(f"legacy_db_v{version}", path)
            assert spec and spec.loader
            module = importlib.util.module_from_spec(spec)
            sys.modules[spec.name] = module
            spec.loader.exec_module(module)
        finally:
            path.unlink()
        assert module.SCHEMA_VERSION == version
        for name, dialect in (("sqlite", sqlite.dialect()), ("postgresql", postgresql.dialect())):
            lines = [f"-- hexnode schema version {version}: create_all of hexnode/store/db.py at {commit}"]
            for table in module.Base.metadata.sorted_tables:
                lines.append(str(CreateTable(table).compile(dialect=dialect)).strip() + ";")
                for index in sorted(table.indexes, key=lambda i: i.name or ""):
                    lines.append(str(CreateIndex(index).compile(dialect=dialect)).strip() + ";")
            lines.append(f"INSERT INTO hexnode_meta (key, value) VALUES ('schema_version', '{version}');")
            (HERE / f"v{version}.{name}.sql").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
