"""Shared fixtures: real stores (SQLite file, PostgreSQL database) and configs written as a user
would; and the markers that say what each test needs from the machine.

A test that needs a service is marked with it (`postgres`, `orthanc`, `rabbitmq`, `dcmtk`, `npm`, `server`,
`auth_server`, `network`, `netns`) and with `slow`: by a fixture it uses (FIXTURE_NEEDS, and a PostgreSQL
`store_url`), or by its module's or its own marker. `pytest -m "not slow"` is the fast tier:
no service, seconds.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest
import yaml

from app.config import load_config
from app.store.audit_log import close_all as close_audit_logs
from app.store.repository import Store
from tests.support.stores import new_sqlite_store, open_config_data, postgres_database, reset_postgres

#: the run's log check (no patient data in any log line) is a plugin of its own
pytest_plugins = ["tests.support.log_privacy"]

#: what a test may need beyond Python and the files of the repository
SERVICES = ("postgres", "orthanc", "rabbitmq", "dcmtk", "npm", "server", "auth_server", "network", "netns")
#: fixtures that bring a need along
FIXTURE_NEEDS = {
    "postgres_url": "postgres",
    "orthanc": "orthanc",
    "broker": "rabbitmq",
    "auth_server": "auth_server",
    "official_search_parameters": "npm",
}


def pytest_collection_modifyitems(config, items) -> None:
    for item in items:
        needs = {name for name in SERVICES if item.get_closest_marker(name)}
        needs |= {mark for fixture, mark in FIXTURE_NEEDS.items() if fixture in item.fixturenames}
        callspec = getattr(item, "callspec", None)
        if callspec is not None and any(isinstance(v, str) and v == "postgresql" for v in callspec.params.values()):
            needs.add("postgres")
        for name in sorted(needs):
            item.add_marker(name)
        if needs:
            item.add_marker("slow")


@pytest.fixture(autouse=True)
def _audit_drained():
    """Each test's audit events are stored by its end, never later into the next test's store."""
    yield
    close_audit_logs()


@pytest.fixture(scope="session")
def postgres_url():
    """A fresh PostgreSQL database for this test session, dropped at the end."""
    with postgres_database() as url:
        yield url


@pytest.fixture
def broker():
    """The URL of the machine's RabbitMQ (testbed/rabbitmq.py), or a failure saying it is not up;
    held shared while the test runs, so that no other test restarts it meanwhile."""
    from testbed.rabbitmq import BROKER_LOCK, require_broker

    with BROKER_LOCK.shared():
        yield require_broker()


@pytest.fixture(scope="session")
def _empty_sqlite_store(tmp_path_factory) -> Path:
    """An SQLite store with the schema and nothing else, made once: each test's store starts as a
    copy of it (creating the tables costs more than most tests that use them)."""
    path = tmp_path_factory.mktemp("template") / "facade.db"
    Store(f"sqlite:///{path}").close()
    with sqlite3.connect(path) as conn:  # everything in the main file, nothing in its WAL
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return path


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request, tmp_path, _empty_sqlite_store):
    """An empty store URL, once for SQLite and once for PostgreSQL."""
    if request.param == "sqlite":
        return new_sqlite_store(tmp_path, _empty_sqlite_store)
    url = request.getfixturevalue("postgres_url")
    reset_postgres(url)
    return url


@pytest.fixture
def sqlite_url(tmp_path, _empty_sqlite_store):
    return new_sqlite_store(tmp_path, _empty_sqlite_store)


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
        return write_config(open_config_data(store_url, sources, **server))

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
