"""Stores for the tests: an SQLite store copied from an empty one, a PostgreSQL database of its
own, and the config of an open server over either."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import create_engine, text
from sqlalchemy.exc import SQLAlchemyError

from testbed.postgres import ADMIN_URL, create_database, drop_database


@contextmanager
def postgres_database() -> Iterator[str]:
    """A PostgreSQL database of its own, dropped when done."""
    try:
        url = create_database("facade_test")
    except SQLAlchemyError as exc:
        raise RuntimeError(f"PostgreSQL at {ADMIN_URL} is needed by the tests: {exc}") from exc
    try:
        yield url
    finally:
        drop_database(url)


def reset_postgres(url: str) -> None:
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("DROP SCHEMA public CASCADE"))
        conn.execute(text("CREATE SCHEMA public"))
    engine.dispose()


def new_sqlite_store(tmp_path: Path, template: Path) -> str:
    """The URL of a new empty SQLite store in `tmp_path`, copied from `template`."""
    path = tmp_path / "facade.db"
    shutil.copyfile(template, path)
    return f"sqlite:///{path}"


def open_config_data(store_url: str, sources=None, **server) -> dict:
    """The config of an open server (no token) with these sources and server keys."""
    return {
        "store": store_url,
        "server": {"base_url": "http://testserver/fhir", **server},
        "security": {"open": True},
        "sources": sources or [],
    }
