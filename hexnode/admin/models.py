"""`hexnode models list | activate VERSION [--force] | rollback [VERSION]`: the operator's command
over hexnode/store/model_versions.py (`hexnode models compare` is hexnode/train/compare.py)."""

from __future__ import annotations

import argparse
import sys

from hexnode.store.model_versions import ActivationRefused, activate, active, available, rollback

__all__ = ["run_models"]


def run_models(args: argparse.Namespace) -> int:
    """`hexnode models list | activate VERSION [--force] | rollback [VERSION]` (compare: train/compare.py)."""
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
                v = activate(store, cfg, args.version, force=bool(getattr(args, "force", False)))
            except ActivationRefused as exc:
                print(f"hexnode models activate: refused: {exc}", file=sys.stderr)
                return 3
            except Exception as exc:
                print(f"hexnode models activate: {exc}", file=sys.stderr)
                return 1
            print(f"activated {v.version} ({v.path}); workers switch before their next job")
            return 0
        if args.action == "rollback":
            try:
                v = rollback(store, cfg, args.version)
            except Exception as exc:
                print(f"hexnode models rollback: {exc}", file=sys.stderr)
                return 1
            print(f"rolled back to {v.version} ({v.path}); workers switch before their next job")
            return 0
        active_version = current[0] if current else None
        for v in available(cfg):
            mark = "*" if (v.version == active_version or (active_version is None and v.path == cfg.models_path)) else " "
            print(f"{mark} {v.version}  {v.path}  {v.provenance}")
        return 0
    finally:
        store.dispose()
