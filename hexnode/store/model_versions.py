"""Which model version the workers use: the bundled one until `hexnode models activate VERSION`.

Versions are folders with a manifest: the bundled `[models] dir` and every version
`hexnode recalibrate` or `hexnode train --site` wrote under `<data_dir>/models/<VERSION>/`. The
active one is a row in `hexnode_meta` (key `active_model`: version and folder); every activation
and rollback is an `events` row (entity "model", to_state "activated" or "rolled_back", detail
"old -> new (folder) by USER", the OS user who ran it, "; forced: ..." when `--force` overrode a
refusal; `hexnode train --site` adds a "candidate" row for each version it writes). A worker
checks the row between jobs and loads the new version before its next job;
jobs already running finish on the version they started with, and each report names the version
that made it.

A site fine-tuned candidate (`provenance.kind` "site-finetune") is activated only after
`hexnode models compare` measured it against the version active now (`compare.json` in its
folder) and found it not worse on the site's held-out cases; `--force` overrides, and says so in
the audit trail. `hexnode models rollback [VERSION]` returns to the version active before (or to
any version that was active once) without that check: the way back must always be open.
"""

from __future__ import annotations

import getpass
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select

from hexnode.config import Config
from hexnode.store.db import Event, Meta, Store

log = logging.getLogger(__name__)

ACTIVE_KEY = "active_model"
#: the comparison `hexnode models compare` records in a candidate's folder
COMPARISON = "compare.json"
SITE_FINETUNE = "site-finetune"


class ActivationRefused(RuntimeError):
    """A candidate that was not compared with the active version, or measured worse than it."""


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


def find(cfg: Config, version: str) -> Version:
    match = [v for v in available(cfg) if v.version == version]
    if not match:
        known = ", ".join(v.version for v in available(cfg)) or "none"
        raise ValueError(f"no model version {version!r} (known: {known})")
    return match[-1]


def bundled_version(cfg: Config) -> str:
    return next((v.version for v in available(cfg) if v.path == cfg.models_path), "?")


def active_version(store: Store, cfg: Config) -> str:
    current = active(store)
    return current[0] if current else bundled_version(cfg)


def os_user() -> str:
    """Who ran the command, for the audit trail (the OS account, not a claim typed on the command line)."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry for the uid (a container's arbitrary user)
        return f"uid {os.getuid()}"


def comparison_gate(store: Store, cfg: Config, chosen: Version) -> str | None:
    """Why `chosen` may not be activated now, or None. Only site fine-tuned candidates are gated:
    a recalibration or a version that was active before is not a new segmentation."""
    manifest = json.loads((chosen.path / "manifest.json").read_text())
    if manifest.get("provenance", {}).get("kind") != SITE_FINETUNE:
        return None
    current = active_version(store, cfg)
    path = chosen.path / COMPARISON
    if not path.is_file():
        return f"{chosen.version} was never compared with the active version {current}: run hexnode models compare {chosen.version}"
    verdict: dict[str, Any] = json.loads(path.read_text())
    if verdict.get("against") != current:
        return (f"{chosen.version} was compared with {verdict.get('against')}, not with the active version {current}: "
                f"run hexnode models compare {chosen.version}")
    if verdict.get("worse"):
        return f"{chosen.version} is worse than {current} on the site's held-out cases: " + "; ".join(verdict.get("reasons", []))
    return None


def activate(store: Store, cfg: Config, version: str, *, force: bool = False, user: str | None = None) -> Version:
    """Make `version` the workers' model set (its files are verified first). A site fine-tuned
    candidate must have been compared with the active version and not found worse
    (`ActivationRefused`), unless `force`: then the refusal is written into the audit row."""
    from hexnode.models.registry import load_manifest

    chosen = find(cfg, version)
    load_manifest(chosen.path, verify=True)  # a tampered or partly copied version is refused here
    refusal = comparison_gate(store, cfg, chosen)
    if refusal is not None and not force:
        raise ActivationRefused(refusal + " (--force activates it anyway)")
    note = f"; forced: {refusal}" if refusal is not None else ""
    _switch(store, cfg, chosen, "activated", user or os_user(), note)
    return chosen


def _switches(store: Store) -> list[tuple[str, str, str]]:
    """(to_state, old version, new version) of every activation and rollback, oldest first."""
    with store.transaction() as s:
        rows = s.execute(select(Event).where(Event.entity == "model").order_by(Event.id)).scalars().all()
        details = [(r.to_state, r.detail or "") for r in rows]
    out = []
    for state, detail in details:
        if state in ("activated", "rolled_back") and " -> " in detail:
            old, new = detail.split(" -> ", 1)
            out.append((state, old.removeprefix("bundled "), new.split(" ", 1)[0]))
    return out


def history(store: Store, cfg: Config) -> list[str]:
    """The versions active one after the other, the current one last: an activation pushes, a
    rollback returns to its earlier entry (what came after it is undone)."""
    stack: list[str] = []
    for state, old, new in _switches(store):
        if not stack:
            stack.append(old)
        if state == "rolled_back" and new in stack:
            del stack[stack.index(new) + 1:]
        else:
            stack.append(new)
    return stack or [active_version(store, cfg)]


def rollback(store: Store, cfg: Config, version: str | None = None, *, user: str | None = None) -> Version:
    """Return to `version` (any version that was active once), or to the version active before this one."""
    from hexnode.models.registry import load_manifest

    stack = history(store, cfg)
    ever = {v for _, old, new in _switches(store) for v in (old, new)} | set(stack)
    if version is None:
        if len(stack) < 2:
            raise ValueError(f"nothing to roll back to: {stack[-1]} is the only version active so far")
        version = stack[-2]
    elif version == stack[-1]:
        raise ValueError(f"{version} is the active version")
    elif version not in ever:
        raise ValueError(f"{version} was never active (active so far: {', '.join(sorted(ever))}); "
                         f"hexnode models activate {version} makes it active")
    chosen = find(cfg, version)
    load_manifest(chosen.path, verify=True)
    _switch(store, cfg, chosen, "rolled_back", user or os_user(), "")
    return chosen


def _switch(store: Store, cfg: Config, chosen: Version, how: str, user: str, note: str) -> None:
    old = active(store)
    old_version = old[0] if old else "bundled " + bundled_version(cfg)
    with store.transaction() as s:
        row = s.get(Meta, ACTIVE_KEY)
        value = json.dumps({"version": chosen.version, "path": str(chosen.path)})
        if row is None:
            s.add(Meta(key=ACTIVE_KEY, value=value))
        else:
            row.value = value
        s.add(Event(entity="model", entity_id=0, from_state="active", to_state=how,
                    detail=f"{old_version} -> {chosen.version} ({chosen.path}) by {user}{note}"))
    log.info("model version %s %s (was %s) by %s%s", chosen.version, how.replace("_", " "), old_version, user, note)
