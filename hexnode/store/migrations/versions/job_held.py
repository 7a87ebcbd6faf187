"""job_held: a job whose results wait for the study to settle (route analyses the best series so
far at once; its answer is held until no better series can still come).

Revision ID: job_held
Revises: stage_beats
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "job_held"
down_revision = "stage_beats"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # existing jobs were decided on a settled study: nothing of theirs waits
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("held", sa.Boolean(), nullable=False, server_default=sa.false()))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("held")
