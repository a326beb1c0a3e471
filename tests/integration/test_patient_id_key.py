"""The deployment's Patient id key (app/store/patient_ids.py): generated once and shared by every
process of a store, or given as `identity.secret`; a process with another key is refused before it
maps anything; the secret is never written in the config file."""

from __future__ import annotations

import shutil

import pytest
from click.testing import CliRunner
from pydicom.data import get_testdata_file

from app.cli import main as cli
from app.config import ConfigError
from app.identity.keys import legacy_patient_id, patient_id
from app.store.patient_ids import KeyMismatch
from app.store.repository import Store
from app.sync import sync_source
from tests.support.full_store import folder_source_config


def test_every_process_of_a_store_uses_the_one_key_it_generated(sqlite_url):
    first, second = Store(sqlite_url), Store(sqlite_url)
    try:
        key = first.patient_id_key()
        assert len(key) >= 32
        assert second.patient_id_key() == key  # another process (node, worker) opening the store
    finally:
        first.close()
        second.close()
    other = Store(sqlite_url.replace("facade.db", "other.db"))
    try:
        assert other.patient_id_key() != key  # another deployment, another key
    finally:
        other.close()


def test_a_synced_patient_has_the_keyed_id(sqlite_url, tmp_path, write_config):
    archive = tmp_path / "archive"
    archive.mkdir()
    shutil.copyfile(get_testdata_file("CT_small.dcm"), archive / "ct.dcm")
    config = write_config(folder_source_config(sqlite_url, archive))
    store = Store.from_config(config)
    try:
        sync_source(store, config.sources[0])
        with store.engine.connect() as conn:
            ids = [r[0] for r in conn.exec_driver_sql("SELECT id FROM resource WHERE rtype = 'Patient'")]
        system = config.sources[0].patient_id_system
        assert ids == [patient_id(system, "1CT1", store.patient_id_key())]
        assert ids != [legacy_patient_id(system, "1CT1")]
    finally:
        store.close()


def test_a_config_key_that_is_not_the_stores_is_refused(sqlite_url, tmp_path, write_config, monkeypatch):
    data = folder_source_config(sqlite_url, tmp_path / "archive")
    (tmp_path / "archive").mkdir()
    data["identity"] = {"secret": "${PATIENT_ID_SECRET}"}
    monkeypatch.setenv("PATIENT_ID_SECRET", "the-first-secret-of-this-store")
    config = write_config(data)
    assert CliRunner().invoke(cli, ["sync", "--config", str(config.path)]).exit_code == 0
    monkeypatch.setenv("PATIENT_ID_SECRET", "another-secret-than-the-first")
    result = CliRunner().invoke(cli, ["sync", "--config", str(config.path)])
    assert result.exit_code == 2
    assert "identity.secret" in result.output and "another-secret" not in result.output
    store = Store(sqlite_url)
    try:
        with pytest.raises(KeyMismatch):  # nor may a process without the secret make its own key
            store.patient_id_key(None)
    finally:
        store.close()


def test_the_secret_is_never_written_in_the_file(sqlite_url, tmp_path, write_config):
    data = folder_source_config(sqlite_url, tmp_path / "archive")
    data["identity"] = {"secret": "a-literal-secret-in-the-file"}
    with pytest.raises(ConfigError) as refused:
        write_config(data)
    assert "identity.secret" in str(refused.value)
