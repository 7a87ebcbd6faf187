"""Alembic migration scripts of the node's database (env.py, versions/); run by hexnode.store.migrate."""
