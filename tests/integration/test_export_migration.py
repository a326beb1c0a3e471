"""Revision 0003 (Bulk Data export jobs) on a store full of data at revision 0002, on SQLite and
PostgreSQL: refused until `db upgrade`, which adds the `export_job` table and keeps every row;
the upgraded store then runs an export. (The migrations making exactly the models' schema is
tests/integration/test_schema_migrations.py.)"""

from __future__ import annotations

import pytest
from click.testing import CliRunner
from sqlalchemy import inspect, text

from app.cli import main as cli
from app.store import schema
from app.store.repository import Store
from app.web import create_app
from tests.support.bulk import download, kickoff, stored, wait, worker
from tests.support.full_store import KEPT, connected, fill, folder_source_config, set_version, snapshot


@pytest.mark.slow
def test_revision_0003_adds_export_jobs_and_keeps_every_row(empty_url, tmp_path, write_config):
    config = write_config(folder_source_config(empty_url, tmp_path / "archive"))
    path = str(config.path)
    fill(config, tmp_path / "archive")
    with connected(empty_url, write=True) as conn:  # as revision 0002 left it
        conn.execute(text("DROP TABLE export_job"))
    set_version(empty_url, "0002")
    before = snapshot(empty_url)
    assert all(before[table] for table in KEPT)

    refused = CliRunner().invoke(cli, ["sync", "--config", path])
    assert refused.exit_code == 2 and "revision 0002, behind this release's" in refused.output
    upgraded = CliRunner().invoke(cli, ["db", "upgrade", "--config", path])
    assert upgraded.exit_code == 0, upgraded.output
    with connected(empty_url) as conn:
        assert schema.version_of(conn).revision == schema.head()
        found = inspect(conn)
        assert {c["name"] for c in found.get_columns("export_job")} >= {"id", "owner", "status", "lease_until"}
        indexes = {i["name"]: tuple(i["column_names"]) for i in found.get_indexes("export_job")}
    assert indexes == {"ix_export_status": ("status", "lease_until"), "ix_export_owner": ("owner", "status")}
    after = snapshot(empty_url)
    assert after.pop("export_job") == []
    assert after == before
    again = CliRunner().invoke(cli, ["db", "upgrade", "--config", path])
    assert again.exit_code == 0 and "up to date" in again.output

    store = Store.from_config(config)
    app = create_app(config, store)
    try:
        client = app.test_client()
        manifest = wait(client, kickoff(client, "/fhir/$export?_type=ImagingStudy")).get_json()
        exported = download(client, manifest)["ImagingStudy"]
        assert {r["id"] for r in exported} == set(stored(store, "ImagingStudy"))
    finally:
        worker(app).stop()
        store.close()
