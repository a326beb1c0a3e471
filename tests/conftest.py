"""Shared fixtures: real stores (SQLite file, PostgreSQL database) and configs written as a user would."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest
import yaml
from log_privacy import pytest_configure, pytest_sessionfinish  # noqa: F401 - the run's log check
from sqlalchemy import create_engine, text

from app.config import load_config
from app.store.audit_log import close_all as close_audit_logs

POSTGRES_ADMIN = os.environ.get("FACADE_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


@pytest.fixture(autouse=True)
def _audit_drained():
    """Each test's audit events are stored by its end, never later into the next test's store."""
    yield
    close_audit_logs()


@pytest.fixture(scope="session")
def postgres_url():
    """A fresh PostgreSQL database for this test session, dropped at the end."""
    name = f"facade_test_{uuid.uuid4().hex[:10]}"
    admin = create_engine(POSTGRES_ADMIN, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:  # the suite must not silently skip the PostgreSQL half
        raise RuntimeError(f"PostgreSQL at {POSTGRES_ADMIN} is needed by the tests: {exc}") from exc
    url = POSTGRES_ADMIN.rsplit("/", 1)[0] + f"/{name}"
    yield url
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def _reset_postgres(url: str) -> None:
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("DROP SCHEMA public CASCADE"))
        conn.execute(text("CREATE SCHEMA public"))
    engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request, tmp_path):
    """An empty store URL, once for SQLite and once for PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'facade.db'}"
    url = request.getfixturevalue("postgres_url")
    _reset_postgres(url)
    return url


@pytest.fixture
def sqlite_url(tmp_path):
    return f"sqlite:///{tmp_path / 'facade.db'}"


@pytest.fixture
def write_config(tmp_path):
    """Write a config file the way a user would and load it through the real loader."""

    def write(data: dict, name: str = "config.yaml", environ=None):
        path = Path(tmp_path) / name
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        return load_config(path, environ=environ if environ is not None else os.environ)

    return write


@pytest.fixture
def open_config(write_config, sqlite_url):
    """A config for an open server on SQLite with no sources, for API tests."""

    def make(store_url: str = sqlite_url, sources=None, **server):
        return write_config(
            {
                "store": store_url,
                "server": {"base_url": "http://testserver/fhir", **server},
                "security": {"open": True},
                "sources": sources or [],
            }
        )

    return make


def assert_valid_r4(resource: dict) -> None:
    """Validate an emitted resource against the fhir.resources R4B model of its type."""
    from fhir.resources.R4B.endpoint import Endpoint
    from fhir.resources.R4B.imagingstudy import ImagingStudy
    from fhir.resources.R4B.patient import Patient

    models = {"ImagingStudy": ImagingStudy, "Patient": Patient, "Endpoint": Endpoint}
    models[resource["resourceType"]].model_validate(resource)


@pytest.fixture
def valid_r4():
    return assert_valid_r4
