"""`hexnode db current | upgrade | history`: the database's schema revision, and the upgrade to head.

Every process (serve, worker, send …) upgrades the database when it opens it; ``hexnode db upgrade``
does the same once, by hand, so that an operator can upgrade before starting the new version (and
see what it did). ``current`` changes nothing: it prints the revision the database is at and the
revisions an upgrade would apply.
"""

from __future__ import annotations

import argparse

from hexnode.config import load_config
from hexnode.store import migrate
from hexnode.store.db import check_exists, open_store


def run_db(args: argparse.Namespace) -> int:
    if args.action == "history":  # the revisions this version ships: no database needed
        for rev in migrate.history():
            print(rev)
        return 0
    cfg = load_config(getattr(args, "config", None))
    if args.action != "upgrade":  # `current` reads: no empty database left where the settings point wrongly
        check_exists(cfg.database_url)
    store = open_store(cfg.database_url, create=False)  # upgrade creates one: a new node's first step
    try:
        if args.action == "upgrade":
            before = migrate.current(store)
            todo = migrate.pending(store)
            after = migrate.upgrade(store)
            print(f"database at {after}" + (f" (was {before or 'not under Alembic'}; applied: {', '.join(todo)})"
                                            if todo else " (nothing to do)"))
            return 0
        at = migrate.current(store)
        todo = migrate.pending(store)
        print(f"database at {at or 'no revision (empty, or made before Alembic)'}; head {migrate.head()}")
        if todo:
            print(f"pending: {', '.join(todo)} (hexnode db upgrade, or any hexnode process on start)")
        return 0 if not todo else 1
    finally:
        store.dispose()

