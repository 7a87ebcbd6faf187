"""Baseline: the whole schema as hexnode 0.1 defines it (Base.metadata on 2026-12, schema version 4).

An empty database gets every table here. A database made by hexnode's own migrations (see
legacy_v1_v4) gets only the tables it lacks: notifications, scans and outcomes were added to
those databases by ``create_all`` at start-up, without a version of their own, so a database made
before them has none. A table that exists is left alone (legacy_v1_v4 has already brought its
columns to this schema); tests/store/test_migrations.py checks that either path ends with no
difference from Base.metadata.

Frozen: never edit this file to change the schema. A change is a new revision after this one
(``alembic revision --autogenerate -m ...``, see docs/operations.md).

Revision ID: baseline
Revises: legacy_v1_v4
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "baseline"
down_revision = "legacy_v1_v4"
branch_labels = None
depends_on = None

TABLES = ("events", "hexnode_meta", "studies", "series", "instances", "jobs", "notifications", "scans",
          "outcomes", "results", "outbox")


def upgrade() -> None:
    existing = set(sa.inspect(op.get_bind()).get_table_names())
    if "events" not in existing:
        op.create_table("events",
            sa.Column("id", sa.Integer(), nullable=False),
            sa.Column("entity", sa.String(length=16), nullable=False),
            sa.Column("entity_id", sa.Integer(), nullable=False),
            sa.Column("from_state", sa.String(length=16), nullable=True),
            sa.Column("to_state", sa.String(length=16), nullable=False),
            sa.Column("detail", sa.Text(), nullable=True),
            sa.Column("at", sa.DateTime(), nullable=False),
            sa.PrimaryKeyConstraint("id")
        )
        op.create_index("ix_events_at", "events", ["at"], unique=False)
        op.create_index("ix_events_entity", "events", ["entity", "entity_id"], unique=False)
    if "hexnode_meta" not in existing:
        op.create_table("hexnode_meta",
            sa.Column("key", sa.String(length=64), nullable=False),
            sa.Column("value", sa.Text(), nullable=False),
            sa.PrimaryKeyConstraint("key")
        )
    if "studies" not in existing:
        op.create_table("studies",
            sa.Column("id", sa.Integer(), nullable=False),
            sa.Column("study_uid", sa.Text(), nullable=False),
            sa.Column("created_at", sa.DateTime(), nullable=False),
            sa.Column("answer_kind", sa.String(length=16), nullable=True),
            sa.Column("answer_sr_uid", sa.Text(), nullable=True),
            sa.Column("answer_sr_series_uid", sa.Text(), nullable=True),
            sa.Column("report_revision", sa.Integer(), nullable=False),
            sa.PrimaryKeyConstraint("id"),
            sa.UniqueConstraint("study_uid")
        )
    if "series" not in existing:
        op.create_table("series",
            sa.Column("id", sa.Integer(), nullable=False),
            sa.Column("series_uid", sa.Text(), nullable=False),
            sa.Column("study_id", sa.Integer(), nullable=False),
            sa.Column("calling_ae", sa.String(length=16), nullable=False),
            sa.Column("modality", sa.String(length=16), nullable=True),
            sa.Column("sop_class_uid", sa.Text(), nullable=True),
            sa.Column("series_number", sa.Integer(), nullable=True),
            sa.Column("state", sa.String(length=16), nullable=False),
            sa.Column("reason", sa.Text(), nullable=True),
            sa.Column("revision", sa.Integer(), nullable=False),
            sa.Column("selected", sa.Boolean(), nullable=True),
            sa.Column("instance_count", sa.Integer(), nullable=False),
            sa.Column("first_instance_at", sa.DateTime(), nullable=False),
            sa.Column("last_instance_at", sa.DateTime(), nullable=False),
            sa.Column("state_at", sa.DateTime(), nullable=False),
            sa.Column("aborted_at", sa.DateTime(), nullable=True),
            sa.Column("aborted_note", sa.Text(), nullable=True),
            sa.ForeignKeyConstraint(["study_id"], ["studies.id"], ),
            sa.PrimaryKeyConstraint("id"),
            sa.UniqueConstraint("series_uid")
        )
        op.create_index("ix_series_last_instance_at", "series", ["last_instance_at"], unique=False)
        op.create_index("ix_series_state", "series", ["state"], unique=False)
        op.create_index("ix_series_study_id", "series", ["study_id"], unique=False)
    if "instances" not in existing:
        op.create_table("instances",
            sa.Column("id", sa.Integer(), nullable=False),
            sa.Column("sop_instance_uid", sa.Text(), nullable=False),
            sa.Column("series_id", sa.Integer(), nullable=False),
            sa.Column("sop_class_uid", sa.Text(), nullable=False),
            sa.Column("transfer_syntax", sa.Text(), nullable=False),
            sa.Column("path", sa.Text(), nullable=False),
            sa.Column("size_bytes", sa.Integer(), nullable=False),
            sa.Column("calling_ae", sa.String(length=16), nullable=False),
            sa.Column("instance_number", sa.Integer(), nullable=True),
            sa.Column("position", sa.JSON(), nullable=True),
            sa.Column("orientation", sa.JSON(), nullable=True),
            sa.Column("rows", sa.Integer(), nullable=True),
            sa.Column("columns", sa.Integer(), nullable=True),
            sa.Column("number_of_frames", sa.Integer(), nullable=True),
            sa.Column("slice_thickness", sa.Float(), nullable=True),
            sa.Column("images_in_acquisition", sa.Integer(), nullable=True),
            sa.Column("received_at", sa.DateTime(), nullable=False),
            sa.ForeignKeyConstraint(["series_id"], ["series.id"], ),
            sa.PrimaryKeyConstraint("id"),
            sa.UniqueConstraint("sop_instance_uid")
        )
        op.create_index("ix_instances_series_id", "instances", ["series_id"], unique=False)
    if "jobs" not in existing:
        op.create_table("jobs",
            sa.Column("id", sa.Integer(), nullable=False),
            sa.Column("series_id", sa.Integer(), nullable=False),
            sa.Column("revision", sa.Integer(), nullable=False),
            sa.Column("study_revision", sa.Integer(), nullable=True),
            sa.Column("state", sa.String(length=16), nullable=False),
            sa.Column("attempts", sa.Integer(), nullable=False),
            sa.Column("lease_owner", sa.String(length=128), nullable=True),
            sa.Column("lease_until", sa.DateTime(), nullable=True),
            sa.Column("error", sa.Text(), nullable=True),
            sa.Column("timings", sa.JSON(), nullable=True),
            sa.Column("created_at", sa.DateTime(), nullable=False),
            sa.Column("started_at", sa.DateTime(), nullable=True),
            sa.Column("finished_at", sa.DateTime(), nullable=True),
            sa.ForeignKeyConstraint(["series_id"], ["series.id"], ),
            sa.PrimaryKeyConstraint("id"),
            sa.UniqueConstraint("series_id", "revision")
        )
        op.create_index("ix_jobs_series_id", "jobs", ["series_id"], unique=False)
        op.create_index("ix_jobs_state_id", "jobs", ["state", "id"], unique=False)
    if "notifications" not in existing:
        op.create_table("notifications",
            sa.Column("id", sa.Integer(), nullable=False),
            sa.Column("key", sa.Text(), nullable=False),
            sa.Column("target", sa.String(length=64), nullable=False),
            sa.Column("kind", sa.String(length=16), nullable=False),
            sa.Column("trigger", sa.String(length=32), nullable=False),
            sa.Column("series_id", sa.Integer(), nullable=True),
            sa.Column("study_id", sa.Integer(), nullable=True),
            sa.Column("revision", sa.Integer(), nullable=False),
            sa.Column("correction", sa.Boolean(), nullable=False),
            sa.Column("payload", sa.JSON(), nullable=False),
            sa.Column("state", sa.String(length=16), nullable=False),
            sa.Column("attempts", sa.Integer(), nullable=False),
            sa.Column("next_attempt_at", sa.DateTime(), nullable=False),
            sa.Column("lease_owner", sa.String(length=128), nullable=True),
            sa.Column("lease_until", sa.DateTime(), nullable=True),
            sa.Column("created_at", sa.DateTime(), nullable=False),
            sa.Column("queued_at", sa.DateTime(), nullable=False),
            sa.Column("last_error", sa.Text(), nullable=True),
            sa.Column("delivered_at", sa.DateTime(), nullable=True),
            sa.ForeignKeyConstraint(["series_id"], ["series.id"], ),
            sa.ForeignKeyConstraint(["study_id"], ["studies.id"], ),
            sa.PrimaryKeyConstraint("id"),
            sa.UniqueConstraint("key")
        )
        op.create_index("ix_notifications_series_id", "notifications", ["series_id"], unique=False)
        op.create_index("ix_notifications_state_due", "notifications", ["state", "next_attempt_at"], unique=False)
        op.create_index("ix_notifications_study", "notifications", ["study_id", "trigger", "target"], unique=False)
    if "scans" not in existing:
        op.create_table("scans",
            sa.Column("id", sa.Integer(), nullable=False),
            sa.Column("patient_key", sa.String(length=64), nullable=False),
            sa.Column("series_id", sa.Integer(), nullable=False),
            sa.Column("revision", sa.Integer(), nullable=False),
            sa.Column("acquired_at", sa.DateTime(), nullable=False),
            sa.Column("role", sa.String(length=16), nullable=False),
            sa.Column("baseline_id", sa.Integer(), nullable=True),
            sa.Column("analysed", sa.Boolean(), nullable=False),
            sa.Column("reason", sa.Text(), nullable=True),
            sa.Column("hemorrhage", sa.Boolean(), nullable=False),
            sa.Column("volume_ml", sa.Float(), nullable=True),
            sa.Column("probability", sa.Float(), nullable=True),
            sa.Column("threshold", sa.Float(), nullable=True),
            sa.Column("model_version", sa.Text(), nullable=False),
            sa.Column("study_uid", sa.Text(), nullable=False),
            sa.Column("series_uid", sa.Text(), nullable=False),
            sa.Column("seg_path", sa.Text(), nullable=True),
            sa.Column("key_path", sa.Text(), nullable=True),
            sa.Column("created_at", sa.DateTime(), nullable=False),
            sa.ForeignKeyConstraint(["baseline_id"], ["scans.id"], ),
            sa.ForeignKeyConstraint(["series_id"], ["series.id"], ),
            sa.PrimaryKeyConstraint("id"),
            sa.UniqueConstraint("series_id")
        )
        op.create_index("ix_scans_baseline_id", "scans", ["baseline_id"], unique=False)
        op.create_index("ix_scans_patient_role", "scans", ["patient_key", "role"], unique=False)
    if "outcomes" not in existing:
        op.create_table("outcomes",
            sa.Column("id", sa.Integer(), nullable=False),
            sa.Column("baseline_id", sa.Integer(), nullable=False),
            sa.Column("followup_id", sa.Integer(), nullable=False),
            sa.Column("hours", sa.Float(), nullable=False),
            sa.Column("baseline_ml", sa.Float(), nullable=False),
            sa.Column("followup_ml", sa.Float(), nullable=False),
            sa.Column("growth_ml", sa.Float(), nullable=False),
            sa.Column("growth_pct", sa.Float(), nullable=True),
            sa.Column("category", sa.String(length=16), nullable=False),
            sa.Column("expansion", sa.Boolean(), nullable=False),
            sa.Column("definition", sa.String(length=32), nullable=False),
            sa.Column("model_version", sa.Text(), nullable=False),
            sa.Column("probability", sa.Float(), nullable=False),
            sa.Column("threshold", sa.Float(), nullable=False),
            sa.Column("baseline_at", sa.DateTime(), nullable=False),
            sa.Column("created_at", sa.DateTime(), nullable=False),
            sa.ForeignKeyConstraint(["baseline_id"], ["scans.id"], ),
            sa.ForeignKeyConstraint(["followup_id"], ["scans.id"], ),
            sa.PrimaryKeyConstraint("id"),
            sa.UniqueConstraint("followup_id")
        )
        op.create_index("ix_outcomes_baseline_id", "outcomes", ["baseline_id"], unique=False)
    if "results" not in existing:
        op.create_table("results",
            sa.Column("id", sa.Integer(), nullable=False),
            sa.Column("job_id", sa.Integer(), nullable=False),
            sa.Column("series_id", sa.Integer(), nullable=False),
            sa.Column("kind", sa.String(length=8), nullable=False),
            sa.Column("sop_instance_uid", sa.Text(), nullable=False),
            sa.Column("sop_class_uid", sa.Text(), nullable=False),
            sa.Column("path", sa.Text(), nullable=False),
            sa.Column("created_at", sa.DateTime(), nullable=False),
            sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], ),
            sa.ForeignKeyConstraint(["series_id"], ["series.id"], ),
            sa.PrimaryKeyConstraint("id"),
            sa.UniqueConstraint("sop_instance_uid")
        )
        op.create_index("ix_results_job_id", "results", ["job_id"], unique=False)
        op.create_index("ix_results_series_id", "results", ["series_id"], unique=False)
    if "outbox" not in existing:
        op.create_table("outbox",
            sa.Column("id", sa.Integer(), nullable=False),
            sa.Column("result_id", sa.Integer(), nullable=False),
            sa.Column("destination", sa.String(length=64), nullable=False),
            sa.Column("state", sa.String(length=16), nullable=False),
            sa.Column("attempts", sa.Integer(), nullable=False),
            sa.Column("next_attempt_at", sa.DateTime(), nullable=False),
            sa.Column("lease_owner", sa.String(length=128), nullable=True),
            sa.Column("lease_until", sa.DateTime(), nullable=True),
            sa.Column("created_at", sa.DateTime(), nullable=False),
            sa.Column("queued_at", sa.DateTime(), nullable=True),
            sa.Column("last_error", sa.Text(), nullable=True),
            sa.Column("delivered_at", sa.DateTime(), nullable=True),
            sa.ForeignKeyConstraint(["result_id"], ["results.id"], ),
            sa.PrimaryKeyConstraint("id"),
            sa.UniqueConstraint("result_id", "destination")
        )
        op.create_index("ix_outbox_result_id", "outbox", ["result_id"], unique=False)
        op.create_index("ix_outbox_state_due", "outbox", ["state", "next_attempt_at"], unique=False)


def downgrade() -> None:
    for name in reversed(TABLES):  # referencing tables first
        op.drop_table(name)
