"""corrections: DICOM SEGs a reader sent back for an analysed series (reference masks, their
comparison with hexnode's own mask, or why they were kept aside). New table only.

Revision ID: corrections
Revises: job_held
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "corrections"
down_revision = "job_held"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "corrections",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("sop_instance_uid", sa.Text(), nullable=False),
        sa.Column("sop_class_uid", sa.Text(), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("calling_ae", sa.String(length=16), nullable=False),
        sa.Column("peer", sa.String(length=64), nullable=False),
        sa.Column("received_at", sa.DateTime(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("checked_at", sa.DateTime(), nullable=True),
        sa.Column("source_series_uid", sa.Text(), nullable=True),
        sa.Column("series_id", sa.Integer(), nullable=True),
        sa.Column("segment_number", sa.Integer(), nullable=True),
        sa.Column("segment_label", sa.String(length=64), nullable=True),
        sa.Column("result_id", sa.Integer(), nullable=True),
        sa.Column("model_version", sa.Text(), nullable=True),
        sa.Column("frames", sa.Integer(), nullable=True),
        sa.Column("dice", sa.Float(), nullable=True),
        sa.Column("hexnode_ml", sa.Float(), nullable=True),
        sa.Column("reference_ml", sa.Float(), nullable=True),
        sa.Column("volume_change_ml", sa.Float(), nullable=True),
        sa.Column("mask_path", sa.Text(), nullable=True),
        sa.Column("superseded_by", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(["series_id"], ["series.id"]),
        sa.ForeignKeyConstraint(["result_id"], ["results.id"]),
        sa.ForeignKeyConstraint(["superseded_by"], ["corrections.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("sop_instance_uid"),
    )
    op.create_index("ix_corrections_state", "corrections", ["state"])
    op.create_index("ix_corrections_series_id", "corrections", ["series_id"])


def downgrade() -> None:
    op.drop_index("ix_corrections_series_id", table_name="corrections")
    op.drop_index("ix_corrections_state", table_name="corrections")
    op.drop_table("corrections")
