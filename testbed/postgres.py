"""PostgreSQL databases of their own for a test or a benchmark, created and dropped on the
server the suite uses (`FACADE_TEST_POSTGRES`, else the machine's `test` database)."""

from __future__ import annotations

import os
import uuid

from sqlalchemy import create_engine, text

from testbed import services

ADMIN_URL = os.environ.get("FACADE_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def create_database(prefix: str, admin_url: str = ADMIN_URL) -> str:
    """The URL of a new empty database named `prefix` and a random suffix."""
    services.require("PostgreSQL")
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    finally:
        admin.dispose()
    return admin_url.rsplit("/", 1)[0] + f"/{name}"


def drop_database(url: str, admin_url: str = ADMIN_URL) -> None:
    """Drop the database at `url`, ending its sessions (PostgreSQL 13+: WITH (FORCE))."""
    name = url.rsplit("/", 1)[1]
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()
