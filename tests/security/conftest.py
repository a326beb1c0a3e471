"""Fixtures for the security tests: a real authorization server process, and facades that
check its tokens, over a store synced from real DICOM files (pydicom's test data)."""

from __future__ import annotations

import shutil

import pytest
from pydicom.data import get_testdata_file

from app.store.repository import Store
from app.sync import sync_source
from app.web import create_app
from tests.support.access import install_accesses, load
from tests.support.smart_auth import AUDIENCE, SAMPLE_FILES, AuthServer, security_config


@pytest.fixture(scope="session")
def auth_server(tmp_path_factory):
    server = AuthServer(tmp_path_factory.mktemp("auth-server"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def archive(tmp_path_factory):
    folder = tmp_path_factory.mktemp("archive")
    for name in SAMPLE_FILES:
        shutil.copyfile(get_testdata_file(name), folder / name)
    return folder


@pytest.fixture
def make_app(write_config, sqlite_url, archive, auth_server):
    """A facade over the synced sample archive, checking the test server's tokens."""

    def make(**security):
        config = write_config(
            {
                "store": sqlite_url,
                "server": {"base_url": AUDIENCE},
                "security": security_config(auth_server, **security),
                "sources": [{"name": "sample", "type": "folder", "path": str(archive), "timezone": "UTC"}],
            }
        )
        store = Store.from_config(config)
        sync_source(store, config.sources[0])
        return create_app(config, store)

    return make


@pytest.fixture
def app(make_app):
    return make_app()


@pytest.fixture
def patients(app, auth_server):
    """The Patient ids of the synced studies, read with a system-level token."""
    token = auth_server.sign({"scope": "system/*.rs"})
    bundle = app.test_client().get("/fhir/Patient", headers={"Authorization": f"Bearer {token}"}).get_json()
    return sorted(entry["resource"]["id"] for entry in bundle["entry"])


@pytest.fixture
def people_app(store_url, open_config):
    """An app over the data set above; `app.accesses` maps X-Test-Access names to Accesses."""
    config = open_config(store_url, default_count=2, max_count=50)
    store = Store.from_config(config)
    load(store)
    app = create_app(config, store)
    app.accesses = {}
    install_accesses(app, app.accesses)
    yield app
    store.close()
