"""Alembic environment: runs on the connection ``tasks_backend.db`` hands over (async engine underneath)."""

from __future__ import annotations

from alembic import context

from tasks_backend.db import VERSION_TABLE
from tasks_backend.models import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations with `python -m tasks_backend migrate` (tasks_backend.db.migrate)")

context.configure(connection=connection, target_metadata=metadata, version_table=VERSION_TABLE)
with context.begin_transaction():
    context.run_migrations()
