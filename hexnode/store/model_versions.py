"""Which model version the workers use: the bundled one until `hexnode models activate VERSION`.

Versions are folders with a manifest: the bundled `[models] dir` and every version
`hexnode recalibrate` wrote under `<data_dir>/models/<VERSION>/`. The active one is a row in
`hexnode_meta` (key `active_model`: version and folder); every activation is an `events` row
(entity "model", to_state "activated", detail "old -> new (folder)"). A worker checks the row
between jobs and loads the new version before its next job; jobs already running finish on the
version they started with, and each report names the version that made it.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

from hexnode.config import Config
from hexnode.store.db import Event, Meta, Store

log = logging.getLogger(__name__)

ACTIVE_KEY = "active_model"


@dataclass(frozen=True)
class Version:
    version: str
    path: Path
    provenance: str


def available(cfg: Config) -> list[Version]:
    """The bundled version and every recalibrated one (manifests only; sha256 checked on activation)."""
    out: list[Version] = []
    dirs = [cfg.models_path]
    if cfg.model_versions_path.is_dir():
        dirs += sorted(p for p in cfg.model_versions_path.iterdir() if (p / "manifest.json").is_file())
    for d in dirs:
        try:
            data = json.loads((d / "manifest.json").read_text())
        except (OSError, json.JSONDecodeError):
            continue
        prov = str(data.get("provenance", {}).get("text", "bundled" if d == cfg.models_path else ""))
        out.append(Version(str(data.get("version", "")), d, prov))
    return out


def active(store: Store) -> tuple[str, Path] | None:
    with store.transaction() as s:
        row = s.get(Meta, ACTIVE_KEY)
        value = row.value if row else None
    if not value:
        return None
    d = json.loads(value)
    return str(d["version"]), Path(d["path"])


def active_dir(store: Store, cfg: Config) -> Path:
    """The folder the workers load: the activated version's, else `[models] dir`."""
    current = active(store)
    return current[1] if current else cfg.models_path


def activate(store: Store, cfg: Config, version: str) -> Version:
    """Make `version` the workers' model set (its files are verified first)."""
    from hexnode.models.registry import load_manifest

    match = [v for v in available(cfg) if v.version == version]
    if not match:
        known = ", ".join(v.version for v in available(cfg)) or "none"
        raise ValueError(f"no model version {version!r} (known: {known})")
    chosen = match[-1]
    load_manifest(chosen.path, verify=True)  # a tampered or partly copied version is refused here
    old = active(store)
    old_version = old[0] if old else "bundled " + next((v.version for v in available(cfg) if v.path == cfg.models_path), "?")
    with store.transaction() as s:
        row = s.get(Meta, ACTIVE_KEY)
        value = json.dumps({"version": chosen.version, "path": str(chosen.path)})
        if row is None:
            s.add(Meta(key=ACTIVE_KEY, value=value))
        else:
            row.value = value
        s.add(Event(entity="model", entity_id=0, from_state="active", to_state="activated",
                    detail=f"{old_version} -> {chosen.version} ({chosen.path})"))
    log.info("model version %s activated (was %s)", chosen.version, old_version)
    return chosen


def run_models(args: argparse.Namespace) -> int:
    """`hexnode models list | activate VERSION`."""
    from hexnode.config import load_config
    from hexnode.store.db import open_existing

    cfg = load_config(getattr(args, "config", None))
    store = open_existing(cfg.database_url)  # the node's own database, never a new one
    try:
        current = active(store)
        if args.action == "activate":
            if not args.version:
                print("hexnode models activate: VERSION is required", file=sys.stderr)
                return 2
            try:
                v = activate(store, cfg, args.version)
            except Exception as exc:
                print(f"hexnode models activate: {exc}", file=sys.stderr)
                return 1
            print(f"activated {v.version} ({v.path}); workers switch before their next job")
            return 0
        active_version = current[0] if current else None
        for v in available(cfg):
            mark = "*" if (v.version == active_version or (active_version is None and v.path == cfg.models_path)) else " "
            print(f"{mark} {v.version}  {v.path}  {v.provenance}")
        return 0
    finally:
        store.dispose()
