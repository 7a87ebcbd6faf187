"""stage_beats: each running stage process's heartbeat (`hexnode health`, /metrics, the status page).

A process that is alive but wedged stops writing its row; its age is what health checks compare
with a limit. New table only: nothing to carry over.

Revision ID: stage_beats
Revises: series_header
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "stage_beats"
down_revision = "series_lookup"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "stage_beats",
        sa.Column("instance", sa.String(length=160), nullable=False),
        sa.Column("stage", sa.String(length=16), nullable=False),
        sa.Column("host", sa.String(length=128), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.DateTime(), nullable=False),
        sa.Column("beat_at", sa.DateTime(), nullable=False),
        sa.Column("busy_since", sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint("instance"),
    )
    op.create_index("ix_stage_beats_stage", "stage_beats", ["stage"])


def downgrade() -> None:
    op.drop_index("ix_stage_beats_stage", table_name="stage_beats")
    op.drop_table("stage_beats")
