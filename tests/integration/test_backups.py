"""Backups and restore (`imaging-facade db backup | restore`), on SQLite and PostgreSQL: a store full
of data is backed up while it serves, restored into a new store, and the new store keeps every row
and answers every request as the old one did; a restore never writes over a store that holds data."""

from __future__ import annotations

import stat
import threading

import pytest
from click.testing import CliRunner
from sqlalchemy import text

from app.cli import main as cli
from app.store.audit_log import close_all as close_audit_logs
from app.store.repository import Store
from app.web import create_app
from tests.support.full_store import KEPT, connected, fill, folder_source_config, snapshot
from tests.support.people import person, stored, study
from tests.support.stores import postgres_database, reset_postgres

pytestmark = pytest.mark.slow

#: what an EHR and an operator read: searches, reads, history, identity, the audit trail
REQUESTS = (
    "/fhir/AuditEvent?_count=100",  # first: the reads below add their own events
    "/fhir/ImagingStudy?_count=100",
    "/fhir/Patient?_count=100",
    "/fhir/Patient?name=miller",
    "/fhir/Endpoint",
    "/fhir/ImagingStudy?modality=CT",
)


def run(*args: str):
    return CliRunner().invoke(cli, list(args))


@pytest.fixture(params=["sqlite", "postgresql"])
def two_stores(request, tmp_path):
    """The URL of a store to fill and of a new, empty one to restore into, of the same engine."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'facade.db'}", f"sqlite:///{tmp_path / 'restored' / 'facade.db'}"
        return
    url = request.getfixturevalue("postgres_url")
    reset_postgres(url)
    with postgres_database() as other:
        yield url, other
        close_audit_logs()  # the restored store's events, before its database goes


def answers(config) -> dict[str, object]:
    """Each request's status and the resources it answered (a Bundle's own id and time differ
    from one answer to the next, its entries may not)."""
    store = Store.from_config(config)
    try:
        client = create_app(config, store).test_client()
        found: dict[str, object] = {}
        for url in REQUESTS:
            response = client.get(url)
            body = response.get_json()
            entries = sorted((e["fullUrl"], e["resource"]) for e in body.get("entry", [])) if body else None
            found[url] = (response.status_code, body.get("total") if body else None, entries)
        for kind, ident in resource_ids(config.store):
            response = client.get(f"/fhir/{kind}/{ident}/_history")
            found[f"{kind}/{ident}/_history"] = (response.status_code, response.get_json().get("total"))
        return found
    finally:
        store.close()


def resource_ids(url: str) -> list[tuple[str, str]]:
    with connected(url) as conn:
        return sorted((t, i) for t, i in conn.execute(text("SELECT rtype, id FROM resource")) if t != "AuditEvent")


def test_a_restored_backup_keeps_every_row_and_serves_the_same_answers(two_stores, tmp_path, write_config):
    original_url, restored_url = two_stores
    original = write_config(folder_source_config(original_url, tmp_path / "archive"), name="original.yaml")
    assert run("db", "upgrade", "--config", str(original.path)).exit_code == 0
    fill(original, tmp_path / "archive")
    expected = snapshot(original_url)
    assert all(expected[table] for table in KEPT), "the filling leaves a row in every kept table"

    backup = tmp_path / "backups" / "facade.backup"
    done = run("db", "backup", "--config", str(original.path), "--to", str(backup))
    assert done.exit_code == 0, done.output
    assert stat.S_IMODE(backup.stat().st_mode) == 0o600, "a backup holds patient data"

    restored = write_config(folder_source_config(restored_url, tmp_path / "archive"), name="restored.yaml")
    done = run("db", "restore", "--config", str(restored.path), "--from", str(backup))
    assert done.exit_code == 0, done.output
    assert "the newest this release knows" in done.output

    assert snapshot(restored_url) == expected
    assert run("db", "current", "--config", str(restored.path)).exit_code == 0
    assert answers(restored) == answers(original)


def test_a_restore_never_writes_over_a_store_that_holds_data(two_stores, tmp_path, write_config):
    original_url, other_url = two_stores
    config = write_config(folder_source_config(original_url, tmp_path / "archive"), name="original.yaml")
    fill(config, tmp_path / "archive")
    backup = tmp_path / "facade.backup"
    assert run("db", "backup", "--config", str(config.path), "--to", str(backup)).exit_code == 0
    before = snapshot(original_url)

    done = run("db", "restore", "--config", str(config.path), "--from", str(backup))
    assert done.exit_code == 2
    assert "is not empty" in done.output
    assert snapshot(original_url) == before

    again = run("db", "backup", "--config", str(config.path), "--to", str(backup))
    assert again.exit_code == 2
    assert "never overwrites" in again.output

    not_a_backup = tmp_path / "notes.txt"
    not_a_backup.write_text("not a backup\n")
    other = write_config(folder_source_config(other_url, tmp_path / "archive"), name="other.yaml")
    done = run("db", "restore", "--config", str(other.path), "--from", str(not_a_backup))
    assert done.exit_code == 2
    assert str(not_a_backup) in done.output
    assert "Traceback" not in done.output


def test_an_sqlite_backup_taken_while_studies_are_written_is_one_consistent_store(tmp_path, write_config):
    """The online backup copies the store as it was at one commit, while another connection writes."""
    url = f"sqlite:///{tmp_path / 'facade.db'}"
    config = write_config(folder_source_config(url, tmp_path / "archive"))
    assert run("db", "upgrade", "--config", str(config.path)).exit_code == 0
    store = Store.from_config(config)
    written = 300
    started = threading.Event()

    def write() -> None:
        for n in range(written):
            patient = person("urn:oid:1.2.9", str(n), "Doe", "Jane", "1980-01-01", "female")
            store.studies.put(study(f"1.9.{n}", patient), stored(patient), "a")
            started.set()

    writer = threading.Thread(target=write)
    writer.start()
    started.wait(30)
    backup = tmp_path / "during.backup"
    try:
        done = run("db", "backup", "--config", str(config.path), "--to", str(backup))
    finally:
        writer.join()
        store.close()
    assert done.exit_code == 0, done.output

    restored_url = f"sqlite:///{tmp_path / 'restored.db'}"
    restored = write_config(folder_source_config(restored_url, tmp_path / "archive"), name="restored.yaml")
    assert run("db", "restore", "--config", str(restored.path), "--from", str(backup)).exit_code == 0
    kinds = [kind for kind, _ in resource_ids(restored_url)]
    studies, patients = kinds.count("ImagingStudy"), kinds.count("Patient")
    assert 1 <= studies <= written
    assert patients == studies, "each study came with its patient: the copy is of one commit, never half of one"
    assert answers(restored)["/fhir/ImagingStudy?_count=100"][1] == studies
