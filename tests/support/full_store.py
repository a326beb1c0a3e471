"""A store with a row in every table a deployment keeps, made through the real code from real
DICOM files, and a snapshot of every table: a migration test fills a store made by the previous
schema, upgrades it and compares the snapshots, so that nothing a hospital keeps is lost.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pydicom
from pydicom.data import get_testdata_file
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import Connection

from app.config import Config
from app.identity.reconcile import reconcile_patient
from app.store.audit_log import close_all as close_audit_logs
from app.store.repository import Store
from app.sync import sync_source
from app.web import create_app
from tests.support.people import person, stored, study

#: real files shipped with pydicom: three studies of three patients
FILES = ("CT_small.dcm", "MR_small.dcm", "rtplan.dcm")
#: tables whose rows the filling must make, named by what they keep
KEPT = (
    "resource",  # resources
    "resource_version",  # their versions
    "tombstone",  # deletions
    "study_copy",
    "patient_contribution",
    "patient_link",  # identity links, automatic and waiting for review
    "patient_match",
    "patient_block",
    "quarantine",
    "source_state",
    "sync_run",
    "patient_fetch",
    "setting",
    "audit_event",  # the audit trail
    "audit_index",
)


def folder_source_config(store_url: str, archive: Path) -> dict:
    """An open server that keeps an audit trail, over one folder source at `archive`."""
    return {
        "store": store_url,
        "server": {"base_url": "http://testserver/fhir"},
        "security": {"open": True, "audit": True},
        "sources": [{"name": "archive", "type": "folder", "path": str(archive)}],
    }


def fill(config: Config, archive: Path) -> None:
    """Sync real files (one of them broken, one removed again), link records of one person,
    ask on demand, and read through the API with the audit trail on."""
    archive.mkdir(exist_ok=True)
    for name in FILES:
        shutil.copyfile(get_testdata_file(name), archive / name)
    broken = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    del broken.StudyInstanceUID  # quarantined: a study needs its UID
    broken.save_as(archive / "broken.dcm")
    store = Store.from_config(config)
    try:
        src = config.sources[0]
        sync_source(store, src)
        (archive / "rtplan.dcm").unlink()  # gone from the archive: its study is deleted
        sync_source(store, src)
        same = person("urn:oid:1.2.1", "1001", "Miller", "John", "1970-03-05", "male")
        again = person("urn:oid:1.2.2", "A77", "MILLER", "John", "1970-05-03", "male")  # linked automatically
        unsure = person("urn:oid:1.2.3", "10", "Miller", "John", None, "male")  # waits for review
        for uid, patient, source in [("1.1", same, "a"), ("1.2", again, "b"), ("1.3", unsure, "c")]:
            store.studies.put(study(uid, patient), stored(patient), source)
            reconcile_patient(store, patient["id"], config.identity)
        store.fetches.mark(src.name, "urn:oid:1.2.1", "1001", 1_700_000_000_000_000)
        client = create_app(config, store).test_client()
        for url in ("/fhir/ImagingStudy", "/fhir/Patient?name=miller", f"/fhir/Patient/{same['id']}"):
            assert client.get(url).status_code == 200, url
        close_audit_logs()  # every event stored
    finally:
        store.close()


@contextmanager
def connected(url: str, write: bool = False) -> Iterator[Connection]:
    """A connection to the database at `url` (in a transaction committed at the end when `write`),
    on an engine of its own that is let go afterwards."""
    engine = create_engine(url)
    try:
        with engine.begin() if write else engine.connect() as conn:
            yield conn
    finally:
        engine.dispose()


def snapshot(url: str) -> dict[str, list[tuple]]:
    """Every row of every table but Alembic's own, in a stable order."""
    with connected(url) as conn:
        names = sorted(set(inspect(conn).get_table_names()) - {"alembic_version"})
        return {name: sorted(map(tuple, conn.execute(text(f'SELECT * FROM "{name}"'))), key=repr) for name in names}


def forget_version(url: str) -> None:
    """Make the store look as the first release left it: its tables, no schema version."""
    with connected(url, write=True) as conn:
        conn.execute(text("DROP TABLE alembic_version"))


def set_version(url: str, revision: str) -> None:
    with connected(url, write=True) as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = :r"), {"r": revision})
