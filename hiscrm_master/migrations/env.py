"""Alembic's entry point: migrations run on the connection ``database.migrate`` hands
over (inside its transaction and lock), never on a URL of their own."""

from __future__ import annotations

from alembic import context

from hiscrm_master.schema import metadata

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
