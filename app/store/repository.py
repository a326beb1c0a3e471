"""The store: one database, its concerns each in a module of its own, reached from here.

    store.resources   resources and their versions (resources.py)
    store.studies     the archives' copies of studies (studies.py)
    store.patients    Patients merged from their studies, with their links (patients.py)
    store.quarantine  what a sync could not map (bookkeeping.py)
    store.sync_state  each source's cursor, last attempts and runs (bookkeeping.py)
    store.fetches     on-demand asks per patient (bookkeeping.py)
    store.settings    shared server settings (bookkeeping.py)

The schema's version is checked when a Store opens (schema.py, migrations/), and so is the scheme
of its Patient ids (patient_ids.py).

Writes go through SQLAlchemy; the API's reads through plain SQL (reader.py, search_sql.py).
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import TYPE_CHECKING

from sqlalchemy.engine import Connection

from app.store import batch, patient_ids, schema
from app.store.bookkeeping import PatientFetches, Quarantine, Settings, SyncState
from app.store.engine import analyze, make_engine
from app.store.indexer import Indexing
from app.store.patients import Patients
from app.store.resources import Resources
from app.store.studies import StudyCopies

if TYPE_CHECKING:
    from app.config import Config


class Store:
    def __init__(self, url: str, default_zone: str = "UTC", base_url: str | None = None):
        self.url = url
        self.engine = make_engine(url)
        try:
            schema.check(self.engine)  # a new store is made; one behind or ahead is refused
            patient_ids.check(self.engine)  # so is one whose Patient ids are not re-keyed yet
        except BaseException:
            self.engine.dispose()
            raise
        self.indexing = Indexing(default_zone, base_url)
        self.resources = Resources(self.engine, self.indexing)
        self.patients = Patients(self.resources)
        self.studies = StudyCopies(self.engine, self.resources, self.patients)
        self.quarantine = Quarantine(self.engine)
        self.sync_state = SyncState(self.engine)
        self.fetches = PatientFetches(self.engine)
        self.settings = Settings(self.engine)
        self._patient_id_keys: dict[str | None, bytes] = {}

    @classmethod
    def from_config(cls, config: Config) -> Store:
        """The store a loaded Config names, indexing dates in its zone and links on its base URL."""
        return cls(config.store, config.timezone, config.server.base_url)

    def patient_id_key(self, secret: str | None = None) -> bytes:
        """The deployment's Patient id key (the config's `identity.secret`, or the store's own),
        checked against the store once per process (patient_ids.py; KeyMismatch)."""
        if secret not in self._patient_id_keys:
            self._patient_id_keys[secret] = patient_ids.resolve_key(self.engine, secret)
        return self._patient_id_keys[secret]

    def batch(self) -> AbstractContextManager[Connection]:
        """One transaction for many studies (app/store/batch.py)."""
        return batch.batch(self.engine)

    @staticmethod
    def savepoint(conn: Connection) -> AbstractContextManager[Connection]:
        """A part of a batch that may fail alone (app/store/batch.py)."""
        return batch.savepoint(conn)

    def analyze(self) -> None:
        analyze(self.engine)

    def close(self) -> None:
        self.engine.dispose()
