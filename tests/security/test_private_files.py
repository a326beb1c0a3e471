"""An SQLite store holds every patient's data and the paging secret: its file, and the
directory made for it, are created for their owner only (0600 / 0700), as the audit spool is,
whatever the umask; its write-ahead log and shared-memory files follow the file's mode
(SQLite gives them its permissions). Files and directories that exist already are left as their
owner set them."""

from __future__ import annotations

import os
import stat

import pytest

from app.store.repository import Store
from app.web import create_app
from tests.support.access import load
from tests.support.stores import open_config_data


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def permissive_umask():
    """The umask of many a shell and service manager: new files readable by everyone."""
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_a_new_sqlite_store_and_its_directory_are_private(tmp_path, permissive_umask, write_config):
    parent_mode = _mode(tmp_path)
    folder = tmp_path / "data" / "facade"
    database = folder / "store.db"
    config = write_config(open_config_data(f"sqlite:///{database}"))
    store = Store.from_config(config)
    load(store)  # writes: the write-ahead log and shared memory are there now
    app = create_app(config, store)
    assert app.test_client().get("/fhir/Patient/alice").status_code == 200
    files = {path.name: _mode(path) for path in folder.iterdir() if path.is_file()}
    store.close()
    assert {"store.db", "store.db-wal", "store.db-shm"} <= set(files)
    assert files == dict.fromkeys(files, 0o600), files
    assert _mode(folder) == 0o700
    assert _mode(folder / "store.db.audit-spool") == 0o700
    assert _mode(tmp_path) == parent_mode  # what was there is not changed


def test_an_existing_store_file_and_directory_keep_their_mode(tmp_path, permissive_umask, write_config):
    """A store an operator made (or shares with a group on purpose) is not re-permissioned."""
    folder = tmp_path / "shared"
    folder.mkdir(mode=0o750)
    os.chmod(folder, 0o750)
    database = folder / "store.db"
    database.touch()
    os.chmod(database, 0o640)
    store = Store.from_config(write_config(open_config_data(f"sqlite:///{database}")))
    store.close()
    assert (_mode(folder), _mode(database)) == (0o750, 0o640)
