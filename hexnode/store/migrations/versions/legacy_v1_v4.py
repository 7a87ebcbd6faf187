"""Legacy bridge: a database made by hexnode's own migrations (hexnode_meta.schema_version 1..4).

Before Alembic, hexnode kept ``schema_version`` in ``hexnode_meta`` and applied numbered steps at
start-up (after ``create_all``). This revision is those steps, ported unchanged, for a database
that still has that row; it then deletes the row, since ``alembic_version`` is the one record of
the schema from here on. On any other database (an empty one) it does nothing. The tables those
databases lack altogether (created by ``create_all`` in later hexnode versions) come from the
next revision, ``baseline``.

    v2  outbox.queued_at (the maximum age counts from it), back-filled from created_at
    v3  series.aborted_at, series.aborted_note (a sender that stopped part-way)
    v4  studies.answer_kind / answer_sr_uid / answer_sr_series_uid / report_revision,
        jobs.study_revision (the study is the unit of the answer)

What the old code lacked, so that an upgraded database and a new one are the same schema (the
test compares them with Base.metadata): ``studies.report_revision`` becomes NOT NULL, as declared
(the v4 step added it nullable and back-filled 0), and on SQLite the columns the old steps added
as TIMESTAMP are DATETIME, the name ``create_all`` gives them. SQLite alters a column only by
copying the table (a batch), which hexnode.store.migrate runs with foreign keys off and checked
before commit.

Revision ID: legacy_v1_v4
Revises: (none: the root)
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "legacy_v1_v4"
down_revision = None
branch_labels = None
depends_on = None


# What each old version added, as the old steps did (nullable), in Base.metadata's types: the
# old steps wrote TIMESTAMP, which SQLite keeps as a type name of its own (PostgreSQL's is the same).
STEPS: dict[int, list[tuple[str, str, sa.types.TypeEngine[Any]]]] = {
    2: [("outbox", "queued_at", sa.DateTime())],
    3: [("series", "aborted_at", sa.DateTime()), ("series", "aborted_note", sa.Text())],
    4: [("studies", "answer_kind", sa.String(16)), ("studies", "answer_sr_uid", sa.Text()),
        ("studies", "answer_sr_series_uid", sa.Text()), ("studies", "report_revision", sa.Integer()),
        ("jobs", "study_revision", sa.Integer())],
}
BACKFILL = {
    2: "UPDATE outbox SET queued_at = created_at WHERE queued_at IS NULL",
    4: "UPDATE studies SET report_revision = 0 WHERE report_revision IS NULL",
}
# Columns an old step may have left other than Base.metadata has them: (table, column) → the type
# and nullability they must end with.
FINAL: dict[tuple[str, str], tuple[sa.types.TypeEngine[Any], bool]] = {
    ("outbox", "queued_at"): (sa.DateTime(), True),
    ("series", "aborted_at"): (sa.DateTime(), True),
    ("studies", "report_revision"): (sa.Integer(), False),
}


def _columns(table: str) -> dict[str, dict[str, object]] | None:
    """The table's columns now (a fresh inspector: an earlier step may have added some)."""
    insp = sa.inspect(op.get_bind())
    if not insp.has_table(table):
        return None  # baseline creates it whole
    return {str(c["name"]): dict(c) for c in insp.get_columns(table)}


def _straighten(dialect: str) -> None:
    """Give the FINAL columns Base.metadata's nullability and (SQLite) type name."""
    for table in sorted({t for t, _ in FINAL}):
        have = _columns(table)
        if have is None:
            continue
        changes = []
        for (t, name), (type_, nullable) in FINAL.items():
            col = have.get(name) if t == table else None
            if col is None:
                continue
            wrong_type = dialect == "sqlite" and str(col["type"]) != type_.compile(dialect=op.get_bind().dialect)
            if wrong_type or bool(col["nullable"]) != nullable:
                changes.append((name, type_, nullable))
        if changes:
            # SQLite alters a column only by copying the table (batch); PostgreSQL alters in place
            with op.batch_alter_table(table) as batch:
                for name, type_, nullable in changes:
                    batch.alter_column(name, type_=type_, nullable=nullable)


def upgrade() -> None:
    bind = op.get_bind()
    if not sa.inspect(bind).has_table("hexnode_meta"):
        return  # an empty database
    value = bind.execute(sa.text("SELECT value FROM hexnode_meta WHERE key = 'schema_version'")).scalar()
    if value is None:
        return  # not made by the old migrations
    version = int(value)
    for step in range(version + 1, 5):
        for table, name, type_ in STEPS[step]:
            have = _columns(table)
            if have is not None and name not in have:
                op.add_column(table, sa.Column(name, type_, nullable=True))
        if step in BACKFILL and _columns(BACKFILL[step].split()[1]) is not None:
            op.execute(sa.text(BACKFILL[step]))
    _straighten(bind.dialect.name)
    op.execute(sa.text("DELETE FROM hexnode_meta WHERE key = 'schema_version'"))


def downgrade() -> None:
    pass  # back to "no hexnode tables" is baseline's downgrade; the old version row is not restored
