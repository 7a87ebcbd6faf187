"""Alembic environment: migrate the connection hexnode hands over, or (developers' `alembic` CLI) a URL.

hexnode.store.migrate runs this with ``config.attributes["connection"]`` already inside the one
transaction that holds the migration lock, so the whole upgrade commits or rolls back as one.
From the command line (alembic.ini at the repository root) the URL is ``sqlalchemy.url`` or
``$HEXNODE_DATABASE_URL``. Offline (``--sql``) mode is not supported: the legacy revision reads
the database to decide what to do.
"""

from __future__ import annotations

import os

from alembic import context
from sqlalchemy.engine import Connection

from hexnode.store.db import Base, make_engine

config = context.config


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        compare_type=True,
        # SQLite cannot ALTER most things: autogenerate writes batch (copy-and-rename) operations
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    raise SystemExit("hexnode's migrations run against a database (no --sql offline mode)")

given = config.attributes.get("connection")
if given is not None:
    _run(given)
else:
    if config.config_file_name:  # the alembic CLI: its ini's logging (hexnode's processes keep theirs)
        from logging.config import fileConfig

        fileConfig(config.config_file_name)
    url = os.environ.get("HEXNODE_DATABASE_URL") or config.get_main_option("sqlalchemy.url")
    if not url:
        raise SystemExit("set sqlalchemy.url in alembic.ini or $HEXNODE_DATABASE_URL")
    engine = make_engine(url)
    with engine.begin() as conn:  # one transaction, as hexnode.store.migrate runs it
        _run(conn)
    engine.dispose()
