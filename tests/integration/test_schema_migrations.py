"""The store's schema version (Alembic), on SQLite and PostgreSQL: a new store is made at the newest
revision; a store made by the first release, or by an older revision, is refused by every command
until `imaging-facade db upgrade`, which keeps every row; a store made by a later release is refused
and left alone; the migrations make exactly the schema the models describe."""

from __future__ import annotations

import shutil
import threading

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from click.testing import CliRunner
from sqlalchemy import Column, MetaData, Text, create_engine, inspect, text
from sqlmodel import SQLModel

from app.cli import main as cli
from app.identity.keys import patient_id
from app.store import schema
from app.store.repository import Store
from app.store.schema import SchemaMismatch
from app.web import create_app
from tests.support.full_store import (
    KEPT,
    connected,
    fill,
    folder_source_config,
    forget_version,
    set_version,
    snapshot,
)
from tests.support.keys import TEST_KEY
from tests.support.stores import reset_postgres


@pytest.fixture
def config_file(tmp_path, empty_url, write_config):
    """A config over the empty store and a folder source; its path and the loaded config."""
    config = write_config(folder_source_config(empty_url, tmp_path / "archive"))
    return str(config.path), config


def run(*args: str):
    return CliRunner().invoke(cli, list(args))


def revision_of(url: str) -> str | None:
    with connected(url) as conn:
        return schema.version_of(conn).revision


def schema_of(url: str) -> dict:
    """Tables, columns (type, nullability, collation), keys and indexes; PostgreSQL's statistics."""
    with connected(url) as conn:
        found = inspect(conn)
        shape: dict = {}
        for table in sorted(set(found.get_table_names()) - {"alembic_version"}):
            shape[table] = (
                [(c["name"], str(c["type"]), c["nullable"]) for c in found.get_columns(table)],
                found.get_pk_constraint(table)["constrained_columns"],
                sorted((i["name"], tuple(i["column_names"]), i["unique"]) for i in found.get_indexes(table)),
            )
        if conn.dialect.name == "postgresql":
            shape["statistics"] = sorted(conn.execute(text("SELECT stxname, stxkind FROM pg_statistic_ext")))
        return shape


def test_a_new_store_is_made_at_the_newest_revision(config_file, empty_url):
    path, config = config_file
    Store.from_config(config).close()
    assert revision_of(empty_url) == schema.head()
    shown = run("db", "current", "--config", path)
    assert shown.exit_code == 0, shown.output
    assert f"revision {schema.head()} (the newest this release knows)" in shown.output


def test_the_migrations_make_the_schema_the_models_describe(empty_url, tmp_path):
    """A store made at once from the models (what a new store gets) and one made by running every
    migration are the same; and Alembic's comparison of the migrated one with the models is empty."""
    engine = create_engine(empty_url)
    schema.migrate(engine)
    migrated = schema_of(empty_url)
    with engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), SQLModel.metadata) == []
        # the comparison sees a model change that has no migration
        changed = MetaData()
        for table in SQLModel.metadata.tables.values():
            table.to_metadata(changed)
        changed.tables["setting"].append_column(Column("note", Text, nullable=True))
        assert [diff[0] for diff in compare_metadata(MigrationContext.configure(conn), changed)] == ["add_column"]
    engine.dispose()
    if empty_url.startswith("sqlite"):
        made_url = f"sqlite:///{tmp_path / 'made.db'}"
    else:
        reset_postgres(empty_url)
        made_url = empty_url
    Store(made_url).close()
    assert schema_of(made_url) == migrated
    assert revision_of(made_url) == schema.head()


@pytest.mark.slow
def test_a_first_release_store_full_of_data_is_refused_then_upgraded_intact(config_file, empty_url, tmp_path):
    path, config = config_file
    fill(config, tmp_path / "archive")
    forget_version(empty_url)  # as the first release left it: the same tables, no version
    before = snapshot(empty_url)
    assert all(before[table] for table in KEPT), [table for table in KEPT if not before[table]]

    with pytest.raises(SchemaMismatch, match="made by the first release"):
        Store.from_config(config)
    for command in (["sync"], ["serve"], ["quarantine", "list"], ["identity", "list"]):
        refused = run(*command, "--config", path)
        assert refused.exit_code == 2, (command, refused.output)
        assert "made by the first release (no schema version)" in refused.output
        assert f"run `imaging-facade db upgrade --config {path}` first" in refused.output
    current = run("db", "current", "--config", path)
    assert current.exit_code == 1 and "made by the first release" in current.output
    assert snapshot(empty_url) == before  # refusing touched nothing

    upgraded = run("db", "upgrade", "--config", path)
    assert upgraded.exit_code == 0, upgraded.output
    assert f"now revision {schema.head()}" in upgraded.output
    assert revision_of(empty_url) == schema.head()
    assert snapshot(empty_url) == before
    again = run("db", "upgrade", "--config", path)
    assert again.exit_code == 0 and "up to date" in again.output

    store = Store.from_config(config)
    client = create_app(config, store).test_client()
    studies = client.get("/fhir/ImagingStudy").get_json()
    assert studies["total"] == sum(1 for row in before["resource"] if row[0] == "ImagingStudy")
    linked = client.get(f"/fhir/Patient/{patient_id('urn:oid:1.2.1', '1001', TEST_KEY)}").get_json()
    other = f"Patient/{patient_id('urn:oid:1.2.2', 'A77', TEST_KEY)}"
    assert linked["link"] == [{"other": {"reference": other}, "type": "seealso"}]
    store.close()


def test_a_store_of_a_later_release_is_refused_and_left_alone(config_file, empty_url):
    path, config = config_file
    Store.from_config(config).close()
    set_version(empty_url, "9f8e7d6c5b4a")  # a revision this release does not know
    before = snapshot(empty_url)
    with pytest.raises(SchemaMismatch, match="unknown to this release"):
        Store.from_config(config)
    for command in (["sync"], ["serve"], ["db", "upgrade"]):
        refused = run(*command, "--config", path)
        assert refused.exit_code == 2, (command, refused.output)
        assert "revision 9f8e7d6c5b4a, unknown to this release" in refused.output
        assert "run the release that made it" in refused.output
        assert "db upgrade --config" not in refused.output
    current = run("db", "current", "--config", path)
    assert current.exit_code == 1 and "made by a later release" in current.output
    assert snapshot(empty_url) == before
    assert revision_of(empty_url) == "9f8e7d6c5b4a"


#: a later revision as a release would add it: a column, filled by a data step; on SQLite Alembic
#: copies the table to alter it, which must keep every row
LATER = '''"""Settings carry a note.

Revision ID: 0900
Revises: {down}
"""

import sqlalchemy as sa
from alembic import op

revision = "0900"
down_revision = "{down}"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("setting") as batch:
        batch.add_column(sa.Column("note", sa.Text(), nullable=True))
    op.execute("UPDATE setting SET note = 'kept'")


def downgrade() -> None:
    pass
'''


@pytest.fixture
def a_later_release(tmp_path, monkeypatch):
    """This release's migrations and one more after them, as the next release would ship them."""
    later = tmp_path / "migrations"
    shutil.copytree(schema.MIGRATIONS, later, ignore=shutil.ignore_patterns("__pycache__"))
    (later / "versions" / "0900_note.py").write_text(LATER.format(down=schema.head()))
    previous = schema.head()
    monkeypatch.setattr(schema, "MIGRATIONS", later)
    schema.scripts.cache_clear()
    yield previous
    monkeypatch.undo()
    schema.scripts.cache_clear()


@pytest.mark.slow
def test_a_store_at_the_previous_revision_is_refused_then_upgraded_intact(config_file, empty_url, tmp_path, request):
    path, config = config_file
    fill(config, tmp_path / "archive")  # at this release's revision
    before = snapshot(empty_url)
    previous = request.getfixturevalue("a_later_release")

    assert schema.head() == "0900"
    refused = run("sync", "--config", path)
    assert refused.exit_code == 2
    assert f"revision {previous}, behind this release's 0900" in refused.output
    assert "imaging-facade db upgrade --config" in refused.output

    upgraded = run("db", "upgrade", "--config", path)
    assert upgraded.exit_code == 0, upgraded.output
    assert f"the store was revision {previous}, behind this release's 0900; now revision 0900" in upgraded.output
    after = snapshot(empty_url)
    assert after["setting"] == sorted((*row, "kept") for row in before["setting"])
    assert {k: v for k, v in after.items() if k != "setting"} == {k: v for k, v in before.items() if k != "setting"}
    Store.from_config(config).close()  # at the newest revision now: opened


@pytest.mark.slow
def test_revision_0002_gives_every_deletion_its_version_and_history_its_indexes(config_file, empty_url, tmp_path):
    """Revision 0001 kept a deletion only as a tombstone: history could not list it, nor a vread
    of its version answer 410 (FHIR R4 http 3.1.0.12); 0002 adds a version for each, and the
    indexes type and system history read along."""
    path, config = config_file
    fill(config, tmp_path / "archive")
    deletion = {"deletion": b""}
    with connected(empty_url, write=True) as conn:  # as 0001 left it
        conn.execute(text("DELETE FROM resource_version WHERE content = :deletion"), deletion)
        conn.execute(text("DROP INDEX ix_version_type_time"))
        conn.execute(text("DROP INDEX ix_version_time"))
    set_version(empty_url, "0001")
    before = snapshot(empty_url)
    tombstones = before["tombstone"]
    assert tombstones and all(row[4] for row in before["resource_version"])

    refused = run("sync", "--config", path)
    assert refused.exit_code == 2 and "revision 0001, behind this release's" in refused.output
    upgraded = run("db", "upgrade", "--config", path)
    assert upgraded.exit_code == 0, upgraded.output
    assert revision_of(empty_url) == schema.head()

    after = snapshot(empty_url)
    added = set(after["resource_version"]) - set(before["resource_version"])
    assert {(r[0], r[1], r[2], r[3], bytes(r[4])) for r in added} == {(*row, b"") for row in tombstones}
    assert set(before["resource_version"]) <= set(after["resource_version"])
    assert {k: v for k, v in after.items() if k != "resource_version"} == {
        k: v for k, v in before.items() if k != "resource_version"
    }
    with connected(empty_url) as conn:
        indexes = {i["name"]: tuple(i["column_names"]) for i in inspect(conn).get_indexes("resource_version")}
    assert indexes["ix_version_type_time"] == ("rtype", "last_updated", "id", "version")
    assert indexes["ix_version_time"] == ("last_updated", "rtype", "id", "version")
    again = run("db", "upgrade", "--config", path)
    assert again.exit_code == 0 and "up to date" in again.output

    rtype, rid, version, _ = tombstones[0]
    store = Store.from_config(config)
    client = create_app(config, store).test_client()
    assert client.get(f"/fhir/{rtype}/{rid}/_history/{version}").status_code == 410
    entry = client.get(f"/fhir/{rtype}/{rid}/_history").get_json()["entry"][0]
    assert entry["request"]["method"] == "DELETE" and "resource" not in entry
    store.close()


@pytest.mark.slow
def test_revision_0005_gives_the_review_queue_its_paging_indexes(config_file, empty_url, tmp_path):
    """Revision 0004 had the pairs of one status indexed by (status, points) alone and every
    pair not at all: each page of `identity list` sorted the whole listing. 0005 indexes the
    listing's order, rows intact, and the queue pages through them in that order."""
    path, config = config_file
    fill(config, tmp_path / "archive")
    store = Store.from_config(config)
    from app.store import links

    with store.engine.begin() as conn:
        for n in range(30):
            links.put_link(conn, f"p{n:03d}", f"q{n % 7:03d}", "review" if n % 3 else "linked", float(n % 4), {})
    store.close()
    with connected(empty_url, write=True) as conn:  # as 0004 left it
        conn.execute(text("DROP INDEX ix_link_order"))
        conn.execute(text("DROP INDEX ix_link_status"))
        conn.execute(text("CREATE INDEX ix_link_status ON patient_link (status, points)"))
    set_version(empty_url, "0004")
    before = snapshot(empty_url)

    refused = run("sync", "--config", path)
    assert refused.exit_code == 2 and "revision 0004, behind this release's" in refused.output
    upgraded = run("db", "upgrade", "--config", path)
    assert upgraded.exit_code == 0, upgraded.output
    assert revision_of(empty_url) == schema.head()
    assert snapshot(empty_url) == before
    with connected(empty_url) as conn:
        indexes = {i["name"]: tuple(i["column_names"]) for i in inspect(conn).get_indexes("patient_link")}
    assert indexes["ix_link_order"] == ("points", "a", "b")
    assert indexes["ix_link_status"] == ("status", "points", "a", "b")

    listed = run("identity", "list", "--config", path, "--status", "all", "--limit", "7", "--all")
    assert listed.exit_code == 0, listed.output
    rows = [line.split("\t") for line in listed.stdout.splitlines()[1:]]
    pairs = len(before["patient_link"])
    assert pairs >= 30 and len(rows) == pairs and f"{pairs} pairs printed, {pairs} in all" in listed.stderr
    keys = [(float(points), a, b) for a, b, _, points in rows]
    assert keys == sorted(keys, reverse=True)


def test_stores_opened_at_once_are_made_once(empty_url):
    """Several processes starting on a new store (API nodes, a watcher) make it once, without error."""
    errors: list[BaseException] = []

    def open_store() -> None:
        try:
            Store(empty_url).close()
        except BaseException as exc:  # noqa: BLE001 - collected for the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=open_store) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    with connected(empty_url) as conn:
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalars().all() == [schema.head()]


def test_an_empty_store_is_made_by_db_upgrade(config_file, empty_url):
    path, _ = config_file
    made = run("db", "upgrade", "--config", path)
    assert made.exit_code == 0, made.output
    assert f"the store was empty (no tables yet); now revision {schema.head()}" in made.output
    assert revision_of(empty_url) == schema.head()


def test_a_database_of_something_else_is_not_taken_for_a_store(config_file, empty_url):
    path, _ = config_file
    with connected(empty_url, write=True) as conn:
        conn.execute(text("CREATE TABLE orders (id INTEGER PRIMARY KEY)"))
    refused = run("db", "upgrade", "--config", path)
    assert refused.exit_code == 2
    assert "tables but no schema version" in refused.output and "not a store of this server" in refused.output
    assert revision_of(empty_url) is None


def test_db_history_lists_every_revision_oldest_first(tmp_path):
    shown = run("db", "history")
    assert shown.exit_code == 0, shown.output
    lines = shown.output.splitlines()
    assert lines[0].startswith(f"{schema.BASELINE}  The baseline: the schema of the first release")
    assert lines[-1].startswith(schema.head()) and lines[-1].endswith("(newest)")
    assert len(lines) == len(list(schema.scripts().walk_revisions()))
