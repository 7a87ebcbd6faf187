"""Persistent state of the node: `db` (tables, engine, `open_store`) and `queue` (state machines,
job claim/lease/heartbeat/reclaim, results + outbox rows). See each module's docstring for the API."""
