"""The operator's commands that are not stages: each runs, reports and exits.

status (`hexnode status`; its collect() also feeds the status page), outcomes, models (list,
activate, rollback), db (Alembic), purge (the retention timer's command) and conformance (the
generated conformance tables).
"""
