"""series.uid_hash, studies.uid_hash, series.accession_number: what an admin looks a series up by.

Logs, `hexnode status` and notifications name a series (and a study) by a 10-character hash of
its UID; these columns hold it, so `hexnode series HASH` (or SQL) finds the row. The accession
number comes from the indexed series header. Existing rows are filled in here.

Revision ID: series_lookup
Revises: series_header
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "series_lookup"
down_revision = "series_header"
branch_labels = None
depends_on = None


def _hash(uid: str) -> str:  # hexnode.store.spool.uid_hash as of this revision
    return hashlib.sha256(uid.encode("utf-8", "surrogateescape")).hexdigest()[:10]


def _accession(header: Any) -> str | None:
    if isinstance(header, str):
        try:
            header = json.loads(header)
        except ValueError:
            return None
    try:
        value = str(header["00080050"]["Value"][0]).strip() if header else ""
    except (KeyError, IndexError, TypeError):
        value = ""
    return value[:64] or None


def upgrade() -> None:
    with op.batch_alter_table("series") as batch:
        batch.add_column(sa.Column("uid_hash", sa.String(length=10), nullable=True))
        batch.add_column(sa.Column("accession_number", sa.String(length=64), nullable=True))
        batch.create_index("ix_series_uid_hash", ["uid_hash"])
        batch.create_index("ix_series_accession_number", ["accession_number"])
    with op.batch_alter_table("studies") as batch:
        batch.add_column(sa.Column("uid_hash", sa.String(length=10), nullable=True))
        batch.create_index("ix_studies_uid_hash", ["uid_hash"])
    conn = op.get_bind()
    series = sa.table("series", sa.column("id", sa.Integer), sa.column("series_uid", sa.Text),
                      sa.column("header", sa.JSON), sa.column("uid_hash", sa.String),
                      sa.column("accession_number", sa.String))
    rows = conn.execute(sa.select(series.c.id, series.c.series_uid, series.c.header)).all()
    for row_id, uid, header in rows:
        conn.execute(series.update().where(series.c.id == row_id)
                     .values(uid_hash=_hash(uid), accession_number=_accession(header)))
    studies = sa.table("studies", sa.column("id", sa.Integer), sa.column("study_uid", sa.Text),
                       sa.column("uid_hash", sa.String))
    for row_id, uid in conn.execute(sa.select(studies.c.id, studies.c.study_uid)).all():
        conn.execute(studies.update().where(studies.c.id == row_id).values(uid_hash=_hash(uid)))


def downgrade() -> None:
    with op.batch_alter_table("studies") as batch:
        batch.drop_index("ix_studies_uid_hash")
        batch.drop_column("uid_hash")
    with op.batch_alter_table("series") as batch:
        batch.drop_index("ix_series_accession_number")
        batch.drop_index("ix_series_uid_hash")
        batch.drop_column("accession_number")
        batch.drop_column("uid_hash")
