"""`hexnode --version`: this installation's package version and the model version its workers use.

The model version is the one a worker loads: the version activated in the node's database
(`hexnode models activate`), else the bundled `[models] dir`. The settings are found as every
command finds them ($HEXNODE_CONFIG, else ./hexnode.toml, else the defaults); the database is
read as it is: never created, never upgraded (it is the first step of a backup before an upgrade).
"""

from __future__ import annotations

import json
from pathlib import Path

from hexnode import __version__


def _manifest_version(folder: Path) -> str:
    try:
        data = json.loads((folder / "manifest.json").read_text())
        return f"{data.get('name', '?')} {data.get('version', '?')}"
    except (OSError, ValueError):
        return f"none (no readable manifest.json in {folder})"


def version_text() -> str:
    lines = [f"hexnode {__version__}"]
    from hexnode.config import ConfigError, DatabaseMissing, describe, load_config

    try:
        cfg = load_config()
    except ConfigError as exc:
        bundled = Path(__file__).resolve().parent.parent / "models"
        return "\n".join([*lines, f"models: {_manifest_version(bundled)} (bundled); "
                                  f"active version unknown: configuration error: {exc}"])
    bundled_text = _manifest_version(cfg.models_path)
    try:
        from hexnode.store.db import check_exists, open_store
        from hexnode.store.model_versions import active

        check_exists(cfg.database_url)
        store = open_store(cfg.database_url, create=False)  # read as it is: --version never upgrades
        try:
            current = active(store)
        finally:
            store.dispose()
    except DatabaseMissing as exc:
        lines.append(f"models: {bundled_text} (bundled, {cfg.models_path}); active version unknown: {exc} "
                     f"(settings: {describe(cfg, database=False).split('; ')[0].removeprefix('config ')}; set HEXNODE_CONFIG "
                     "or run in the folder of the node's hexnode.toml)")
        return "\n".join(lines)
    if current is None:
        lines.append(f"models: {bundled_text} (active: the bundled version, {cfg.models_path})")
    else:
        lines.append(f"models: {current[0]} (active: activated in the database, {current[1]}); bundled {bundled_text}")
    lines.append(describe(cfg))
    return "\n".join(lines)
