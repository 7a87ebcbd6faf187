"""Alembic revisions, oldest first: legacy_v1_v4 (hexnode's own schema versions), baseline, then later ones."""
