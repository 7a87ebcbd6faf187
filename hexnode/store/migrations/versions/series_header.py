"""series.header and instances.image_type: what route selects on, indexed once by receive.

Route read one spooled header per series to select it; now receive indexes the series-level
header (DICOM JSON, no Patient module) and each instance's Image Type. Rows indexed before this
revision keep None, and route reads their header from the spool as before.

Revision ID: series_header
Revises: series_decided_count
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "series_header"
down_revision = "series_decided_count"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("series") as batch:
        batch.add_column(sa.Column("header", sa.JSON(), nullable=True))
    with op.batch_alter_table("instances") as batch:
        batch.add_column(sa.Column("image_type", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("instances") as batch:
        batch.drop_column("image_type")
    with op.batch_alter_table("series") as batch:
        batch.drop_column("header")
