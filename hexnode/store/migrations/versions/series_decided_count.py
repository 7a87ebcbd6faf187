"""series.decided_count: receive only counts; route re-opens a series decided on fewer instances.

Before, the receiver re-opened a series itself when an instance arrived after the series had left
"received". Now it only counts, and route compares the count with the one the decision was made
on. Series already decided get their current count, so an upgrade re-opens nothing.

Revision ID: series_decided_count
Revises: baseline
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "series_decided_count"
down_revision = "baseline"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("series") as batch:
        batch.add_column(sa.Column("decided_count", sa.Integer(), nullable=True))
    op.execute("UPDATE series SET decided_count = instance_count WHERE state <> 'received'")


def downgrade() -> None:
    with op.batch_alter_table("series") as batch:
        batch.drop_column("decided_count")
