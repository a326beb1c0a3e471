"""Alembic's environment: migrations run on the connection `app.store.schema` hands over, in its
transaction (on PostgreSQL DDL is transactional: a migration that fails leaves nothing behind)."""

from __future__ import annotations

from alembic import context
from sqlmodel import SQLModel

from app.store import tables  # noqa: F401 - registers every table with SQLModel.metadata

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=SQLModel.metadata,
    # SQLite alters a table by copying it (Alembic "batch" operations)
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
