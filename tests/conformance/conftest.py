"""The conformance tests' app: the data set of tests/support/search_data.py, on SQLite and PostgreSQL.

The tests only read it, so each module shares one app per database (a store per test would
cost more than the tests themselves); a module whose tests write builds its own.
"""

from __future__ import annotations

import contextlib

import pytest
import yaml

from app.config import load_config
from app.store.repository import Store
from app.web import create_app
from tests.support import search_data
from tests.support.stores import new_sqlite_store, open_config_data, postgres_database


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def client(request, tmp_path_factory, _empty_sqlite_store):
    folder = tmp_path_factory.mktemp("conformance")
    with contextlib.ExitStack() as stack:
        if request.param == "sqlite":
            url = new_sqlite_store(folder, _empty_sqlite_store)
        else:
            url = stack.enter_context(postgres_database())
        path = folder / "config.yaml"
        path.write_text(yaml.safe_dump(open_config_data(url, default_count=2, max_count=50), sort_keys=False))
        config = load_config(path)
        store = Store.from_config(config)
        stack.callback(store.close)
        search_data.load(store)
        yield create_app(config, store).test_client()
