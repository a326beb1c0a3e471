"""Writes of stored resources and their index rows; one transaction per study or batch of studies.

Reads on the API's hot path go through reader.py.

A resource gets a new `meta.versionId` and `meta.lastUpdated` only when its content (all
but those two) changed, so syncing the same archive twice changes nothing, while a new
profile claim in `meta.profile` is a new version.
"""
from __future__ import annotations

import hashlib
import secrets
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import orjson
from sqlalchemy import bindparam, create_engine, delete, event, insert, null, select, update
from sqlalchemy.engine import Connection, Engine
from sqlmodel import SQLModel

from app.identity.settings import DEFAULT as IDENTITY_DEFAULT
from app.ids import valid_id
from app.clock import instant_now_ms
from app.store import links
from app.store import tables as t
from app.store.copies import merge_copies
from app.store.indexer import index_rows
from app.store.study_state import StudyState, read_states

NEW, UPDATED, UNCHANGED, DELETED = "new", "updated", "unchanged", "deleted"
#: Connection.info key under which a batch collects, until it ends, the rows nothing in it reads
#: back: index rows under (rtype, id), version rows under (rtype, id, version)
_PENDING_INDEX = "imaging-facade.pending-index"
#: Connection.info key under which a batch keeps the study states it read ahead (read_ahead)
_READ_AHEAD = "imaging-facade.read-ahead"


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite:"):
        path = url.split(":///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn, _record):
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=5)


_VERSION_META = ("versionId", "lastUpdated")


def content_hash(body: dict) -> str:
    content = {k: v for k, v in body.items() if k != "meta"}
    meta = {k: v for k, v in (body.get("meta") or {}).items() if k not in _VERSION_META}
    if meta:
        content["meta"] = meta
    return hashlib.sha256(orjson.dumps(content, option=orjson.OPT_SORT_KEYS)).hexdigest()


INDEX_TABLES = (t.TokenIndex, t.StringIndex, t.DateIndex, t.ReferenceIndex)

# The statements a sync runs for every study, built once: building a statement and deriving
# its cache key costs some 0.3 ms, more than running it (0.07 ms on SQLite, 0.2 ms on
# PostgreSQL), and a study runs about a dozen. Values go in as parameters (`key_*` in WHERE
# clauses, column names in VALUES and SET).
_THE_RESOURCE = (t.Resource.rtype == bindparam("key_rtype"), t.Resource.id == bindparam("key_id"))
#: the stored version and hash of a resource, or else the version of its tombstone (content_hash
#: NULL): a resource that is neither stored nor deleted costs one round trip, not two
_RESOURCE_STATE = select(t.Resource.version, t.Resource.content_hash).where(*_THE_RESOURCE).union_all(
    select(t.Tombstone.version, null().cast(t.Resource.content_hash.type)).where(
        t.Tombstone.rtype == bindparam("key_rtype"), t.Tombstone.id == bindparam("key_id")))
_UPDATE_RESOURCE = update(t.Resource).where(*_THE_RESOURCE)
_THE_COPY = (t.StudyCopy.source == bindparam("key_source"), t.StudyCopy.study_uid == bindparam("key_uid"))
_UPDATE_COPY = update(t.StudyCopy).where(*_THE_COPY)
_THE_CONTRIBUTION = (t.PatientContribution.source == bindparam("key_source"),
                     t.PatientContribution.study_uid == bindparam("key_uid"))
_UPDATE_CONTRIBUTION = update(t.PatientContribution).where(*_THE_CONTRIBUTION)
_CONTRIBUTIONS_TO = select(t.PatientContribution.rank, t.PatientContribution.content).where(
    t.PatientContribution.patient_id == bindparam("key_patient"))
_QUARANTINED = select(t.Quarantine.study_uid).where(
    t.Quarantine.source == bindparam("key_source"), t.Quarantine.study_uid.in_(bindparam("uids", expanding=True)))
_RELEASE = delete(t.Quarantine).where(t.Quarantine.source == bindparam("key_source"),
                                      t.Quarantine.study_uid == bindparam("key_uid"))


class Store:
    def __init__(self, url: str, default_zone: str = "UTC", base_url: str | None = None, identity=None):
        self.url = url
        self.default_zone = default_zone
        self.base_url = base_url
        #: the `identity:` rules (app/identity/settings.py) that syncs into this store follow
        self.identity = identity or IDENTITY_DEFAULT
        self.engine = make_engine(url)
        SQLModel.metadata.create_all(self.engine)

    @classmethod
    def from_config(cls, config) -> "Store":
        """The store a loaded Config names, indexing dates in its zone and links on its base URL."""
        return cls(config.store, config.timezone, config.server.base_url, config.identity)

    def close(self) -> None:
        self.engine.dispose()

    def analyze(self) -> None:
        """Refresh the planner's statistics after many writes.

        Without them PostgreSQL takes fresh index tables for nearly empty and nests the
        subqueries of a chained search as loops that rescan each other: minutes on a hundred
        resources. Autovacuum catches up within minutes; a sync does not leave it to chance.
        """
        with self.engine.begin() as conn:
            if self.engine.dialect.name == "postgresql":
                conn.exec_driver_sql("ANALYZE resource, idx_token, idx_string, idx_date, idx_reference")
            else:
                conn.exec_driver_sql("ANALYZE")

    # ---------------------------------------------------------------- writes

    def _put(self, conn: Connection, body: dict, found: list | None = None) -> str:
        """Store a resource's new version unless its content is the stored one; `found` is
        what _RESOURCE_STATE gives for it, when the caller read it already."""
        rtype, rid = body["resourceType"], body["id"]
        digest = content_hash(body)
        key = {"key_rtype": rtype, "key_id": rid}
        if found is None:
            found = conn.execute(_RESOURCE_STATE, key).all()
        row = next((r for r in found if r.content_hash is not None), None)
        if row is not None and row.content_hash == digest:
            return UNCHANGED
        version = 1 if row is None else row.version + 1
        gone = next((r for r in found if r.content_hash is None), None)
        if row is None and gone is not None:  # served before and deleted: its versions go on
            version = gone.version + 1
            conn.execute(delete(t.Tombstone).where(t.Tombstone.rtype == rtype, t.Tombstone.id == rid))
        micros, instant = instant_now_ms()
        stored = {"resourceType": rtype, "id": rid, "meta": {**body.get("meta", {}),
                  "versionId": str(version), "lastUpdated": instant}}
        stored.update((k, v) for k, v in body.items() if k not in ("resourceType", "id", "meta"))
        content = orjson.dumps(stored)
        values = dict(version=version, last_updated=micros, content_hash=digest, content=content)
        if row is None:
            conn.execute(insert(t.Resource), dict(rtype=rtype, id=rid, **values))
        else:
            conn.execute(_UPDATE_RESOURCE, dict(key, **values))
            self._drop_index(conn, rtype, rid)
        self._write_version(conn, dict(rtype=rtype, id=rid, version=version, last_updated=micros, content=content))
        self._write_index(conn, stored)
        return NEW if row is None else UPDATED

    def _index_values(self, body: dict) -> list[tuple[type, list[dict]]]:
        """The index rows of a resource, per table, as column -> value dicts."""
        rows = index_rows(body, self.default_zone, self.base_url)
        owner = {"rtype": body["resourceType"], "rid": body["id"]}
        return [(table, values) for table, values in (
            (t.TokenIndex, [dict(owner, param=p, system=s, code=c) for p, s, c in rows.tokens]),
            (t.StringIndex, [dict(owner, param=p, norm=n, value=v) for p, n, v in rows.strings]),
            (t.DateIndex, [dict(owner, param=p, low=lo, high=hi) for p, lo, hi in rows.dates]),
            (t.ReferenceIndex, [dict(owner, param=p, target_type=tt, target_id=ti) for p, tt, ti in rows.refs]),
        ) if values]

    @staticmethod
    def _write_version(conn: Connection, row: dict) -> None:
        """Keep a version for history and vread; only the API reads them, so a batch writes
        its versions at its end with its index rows."""
        pending = conn.info.get(_PENDING_INDEX)
        if pending is not None:
            pending[(row["rtype"], row["id"], row["version"])] = [(t.ResourceVersion, [row])]
            return
        conn.execute(insert(t.ResourceVersion), row)

    def _write_index(self, conn: Connection, body: dict) -> None:
        pending = conn.info.get(_PENDING_INDEX)
        if pending is not None:  # inside a batch: written together at the end
            pending[(body["resourceType"], body["id"])] = self._index_values(body)
            return
        for table, values in self._index_values(body):
            conn.execute(insert(table), values)

    @staticmethod
    def _drop_index(conn: Connection, rtype: str, rid: str) -> None:
        for table in INDEX_TABLES:
            conn.execute(delete(table).where(table.rtype == rtype, table.rid == rid))
        pending = conn.info.get(_PENDING_INDEX)
        if pending is not None:
            pending.pop((rtype, rid), None)

    def put_resource(self, body: dict) -> str:
        with self.engine.begin() as conn:
            return self._put(conn, body)

    def put_study(self, study: dict, patient: dict, source: str, archive_key: str | None = None,
                  conn: Connection | None = None) -> str:
        """Store one archive's copy of a study and its patient's contribution, in one transaction
        (or in the batch `conn`, see `batch`).

        The served ImagingStudy is the merge of every archive's copy. Returns its outcome
        (new, updated, unchanged).
        """
        if conn is not None:
            return self._put_study(conn, study, patient, source, archive_key)
        with self.batch() as conn:
            return self._put_study(conn, study, patient, source, archive_key)

    def put_studies(self, studies: list[tuple[dict, dict]], source: str) -> list[str]:
        """put_study for each (study, patient) in turn, all in one batch: for bulk loads.

        Returns each study's outcome, in order.
        """
        with self.batch() as conn:
            self.read_ahead(conn, source, [study["id"] for study, _ in studies])
            return [self._put_study(conn, study, patient, source) for study, patient in studies]

    @contextmanager
    def batch(self) -> Iterator[Connection]:
        """One transaction for many studies (put_study, release_study with its `conn`).

        Its studies get the same resources, versions and index rows as one transaction each
        would give them, but the index rows and versions of the whole batch are written at
        the end (COPY on PostgreSQL), where one INSERT per row costs as much as the rest of
        a study, what its studies look up first may be read for all of them at once
        (read_ahead), and the batch commits once (without waiting for the disk, see
        _commit_without_waiting_for_disk). Loading the benchmarks' 40,000 studies takes
        minutes instead of an hour.
        """
        with self.engine.begin() as conn:
            _commit_without_waiting_for_disk(conn)
            conn.info[_PENDING_INDEX] = pending = {}
            conn.info[_READ_AHEAD] = {}
            try:
                yield conn
            finally:
                del conn.info[_PENDING_INDEX]
                del conn.info[_READ_AHEAD]
            by_table: dict = {}
            for tables in pending.values():
                for table, values in tables:
                    by_table.setdefault(table, []).extend(values)
            for table, values in by_table.items():
                self._bulk_insert(conn, table, values)

    @staticmethod
    def read_ahead(conn: Connection, source: str, uids: list[str]) -> None:
        """Read what storing these studies of `source` in the batch `conn` will look up, in
        three queries instead of four per study (app/store/study_state.py).

        Each study's state is used once: nothing else in a batch writes a study's copies,
        contribution or ImagingStudy, but a study stored twice in one batch must see the
        first time's writes, so the second time reads the store.
        """
        ahead = conn.info.get(_READ_AHEAD)
        if ahead is not None:
            ahead.update(((source, uid), state) for uid, state in read_states(conn, source, uids).items())

    @staticmethod
    def _study_state(conn: Connection, source: str, uid: str) -> StudyState:
        ahead = conn.info.get(_READ_AHEAD)
        state = ahead.pop((source, uid), None) if ahead is not None else None
        return state if state is not None else read_states(conn, source, [uid])[uid]

    @staticmethod
    @contextmanager
    def savepoint(conn: Connection) -> Iterator[Connection]:
        """A part of a batch that may fail alone: on an exception its writes are undone (the
        index rows and versions waiting for the end of the batch too) and the exception goes
        on, while the rest of the batch stays.

        Open it after the batch has written something: Python's sqlite3 begins a transaction
        at the first write, and a SAVEPOINT before that would begin one of its own, which
        its RELEASE would commit.
        """
        pending = conn.info.get(_PENDING_INDEX)
        saved = dict(pending) if pending is not None else None
        try:
            with conn.begin_nested():
                yield conn
        except BaseException:
            if pending is not None:
                pending.clear()
                pending.update(saved)
            raise

    @staticmethod
    def _bulk_insert(conn: Connection, table, values: list[dict]) -> None:
        if conn.dialect.name != "postgresql":
            conn.execute(insert(table), values)
            return
        columns = list(values[0])
        cursor = conn.connection.dbapi_connection.cursor()
        with cursor.copy(f"COPY {table.__tablename__} ({', '.join(columns)}) FROM STDIN") as copy:
            for row in values:
                copy.write_row([row[c] for c in columns])
        cursor.close()

    def _put_study(self, conn: Connection, study: dict, patient: dict, source: str,
                   archive_key: str | None = None) -> str:
        uid = study["id"]
        state = self._study_state(conn, source, uid)
        self._save_copy(conn, source, study, archive_key, state.copies.get(source))
        self._save_contribution(conn, source, uid, patient, f"{study.get('started', '')}|{uid}", state.contribution)
        copies = {source: study, **{other: orjson.loads(r.content) for other, r in state.copies.items()
                                    if other != source}}
        return self._put(conn, merge_copies(copies), state.resource)

    def _save_copy(self, conn: Connection, source: str, study: dict, archive_key: str | None, found) -> None:
        """Keep the archive's copy (`found`: the one stored, or None) and note that this sync saw it."""
        uid = study["id"]
        micros, _ = instant_now_ms()
        content = orjson.dumps(study)
        key = {"key_source": source, "key_uid": uid}
        if found is None:
            conn.execute(insert(t.StudyCopy), dict(source=source, study_uid=uid, archive_key=archive_key,
                                                   last_seen=micros, content=content))
            return
        values: dict = {"last_seen": micros}
        if found.content != content:
            values["content"] = content
        if archive_key and archive_key != found.archive_key:
            values["archive_key"] = archive_key
        conn.execute(_UPDATE_COPY, dict(key, **values))

    def _save_contribution(self, conn: Connection, source: str, uid: str, patient: dict, rank: str,
                           previous) -> None:
        """Keep what the study says about its patient (`previous`: what it said, or None)."""
        contribution = orjson.dumps(patient, option=orjson.OPT_SORT_KEYS)
        key = {"key_source": source, "key_uid": uid}
        if previous is None:
            conn.execute(insert(t.PatientContribution), dict(
                source=source, study_uid=uid, patient_id=patient["id"], rank=rank, content=contribution))
        elif previous.patient_id != patient["id"] or previous.content != contribution:
            conn.execute(_UPDATE_CONTRIBUTION, dict(key, patient_id=patient["id"], rank=rank, content=contribution))
        touched = {patient["id"]}
        if previous is not None and previous.patient_id != patient["id"]:
            touched.add(previous.patient_id)
        if previous is None or previous.content != contribution or len(touched) > 1:
            for patient_id in sorted(touched):
                self._refresh_patient(conn, patient_id)

    def remove_copy(self, source: str, uid: str) -> str | None:
        """The archive no longer holds the study: drop its copy and what its copy said.

        The study stays, merged from the other archives' copies, while one still holds it;
        otherwise it leaves search and a read of it answers 410. Returns the study's outcome
        (updated or deleted), or None if the archive was not known to hold it.
        """
        with self.engine.begin() as conn:
            where = (t.StudyCopy.source == source, t.StudyCopy.study_uid == uid)
            if conn.execute(delete(t.StudyCopy).where(*where)).rowcount == 0:
                return None
            contribution = (t.PatientContribution.source == source, t.PatientContribution.study_uid == uid)
            previous = conn.execute(select(t.PatientContribution.patient_id).where(*contribution)).first()
            conn.execute(delete(t.PatientContribution).where(*contribution))
            others = conn.execute(select(t.StudyCopy.source, t.StudyCopy.content).where(
                t.StudyCopy.study_uid == uid)).all()
            if others:
                outcome = self._put(conn, merge_copies({r.source: orjson.loads(r.content) for r in others}))
            else:
                self._delete(conn, "ImagingStudy", uid)
                outcome = DELETED
            if previous is not None:
                self._refresh_patient(conn, previous.patient_id)
            return outcome

    def copies_not_seen_since(self, source: str, since: int) -> list[str]:
        """Studies of `source` that no listing since `since` (epoch micros) has shown."""
        with self.engine.connect() as conn:
            return list(conn.execute(select(t.StudyCopy.study_uid).where(
                t.StudyCopy.source == source, t.StudyCopy.last_seen < since).order_by(t.StudyCopy.study_uid)).scalars())

    def study_for_archive_key(self, source: str, archive_key: str) -> str | None:
        """The study an archive knows by its own id (Orthanc's study id)."""
        with self.engine.connect() as conn:
            return conn.execute(select(t.StudyCopy.study_uid).where(
                t.StudyCopy.source == source, t.StudyCopy.archive_key == archive_key)).scalar()

    def archive_keys(self, source: str) -> dict[str, str]:
        """The archive's own ids of the studies it holds -> their StudyInstanceUIDs."""
        with self.engine.connect() as conn:
            return {r.archive_key: r.study_uid for r in conn.execute(
                select(t.StudyCopy.archive_key, t.StudyCopy.study_uid).where(
                    t.StudyCopy.source == source, t.StudyCopy.archive_key.is_not(None)))}

    def holders(self, uid: str) -> list[str]:
        """The sources that hold a study."""
        with self.engine.connect() as conn:
            return list(conn.execute(select(t.StudyCopy.source).where(t.StudyCopy.study_uid == uid)
                                     .order_by(t.StudyCopy.source)).scalars())

    def _refresh_patient(self, conn: Connection, patient_id: str) -> None:
        rows = conn.execute(_CONTRIBUTIONS_TO, {"key_patient": patient_id}).all()
        if not rows:
            partners = links.linked_ids(conn, patient_id)
            self._delete(conn, "Patient", patient_id)
            links.forget_patient(conn, patient_id)
            for partner in partners:  # their Patient.link to this one goes
                self._refresh_patient(conn, partner)
            return
        merged = merge_patient([orjson.loads(r.content) for r in sorted(rows, key=lambda r: r.rank, reverse=True)])
        partners = self._existing(conn, "Patient", links.linked_ids(conn, patient_id))
        if self._put(conn, with_links(merged, partners)) == NEW:
            for partner in partners:  # back after a deletion: a person's link to it holds again, both ways
                self._refresh_patient(conn, partner)

    def refresh_patients(self, conn: Connection, patient_ids) -> None:
        """Store new versions of Patients whose links changed (in the caller's transaction)."""
        for patient_id in sorted(set(patient_ids)):
            self._refresh_patient(conn, patient_id)

    @staticmethod
    def _existing(conn: Connection, rtype: str, ids: list[str]) -> list[str]:
        if not ids:
            return []
        found = set(conn.execute(select(t.Resource.id).where(t.Resource.rtype == rtype, t.Resource.id.in_(ids)))
                    .scalars())
        return [i for i in ids if i in found]

    def _delete(self, conn: Connection, rtype: str, rid: str) -> None:
        """Take a resource out of search; a tombstone answers reads with 410 from now on."""
        row = conn.execute(select(t.Resource.version).where(t.Resource.rtype == rtype, t.Resource.id == rid)).first()
        if row is None:
            return
        conn.execute(delete(t.Resource).where(t.Resource.rtype == rtype, t.Resource.id == rid))
        self._drop_index(conn, rtype, rid)
        micros, _ = instant_now_ms()
        conn.execute(insert(t.Tombstone).values(rtype=rtype, id=rid, version=row.version + 1, deleted=micros))

    # ---------------------------------------------------------------- quarantine and runs

    def quarantine(self, source: str, key: str, study_uid: str | None, reason: str) -> None:
        """Keep what could not be mapped, with the reason.

        The archive still holds the study, so a copy stored by an earlier sync counts as
        seen: the study stays served as it was, and is not taken for deleted.
        """
        micros, _ = instant_now_ms()
        # what an archive sent may not fit the columns (a UID of 80 characters, a NUL PostgreSQL
        # refuses in text): the entry is kept all the same, its values made storable
        study_uid = study_uid if study_uid and valid_id(study_uid) else None
        key = _storable(key)[:512]
        reason = _storable(reason)
        with self.engine.begin() as conn:
            if study_uid:
                conn.execute(update(t.StudyCopy).where(t.StudyCopy.source == source, t.StudyCopy.study_uid == study_uid)
                             .values(last_seen=micros))
            found = conn.execute(select(t.Quarantine.first_seen).where(
                t.Quarantine.source == source, t.Quarantine.key == key)).first()
            if found:
                conn.execute(update(t.Quarantine).where(t.Quarantine.source == source, t.Quarantine.key == key)
                             .values(reason=reason, last_seen=micros, study_uid=study_uid))
            else:
                conn.execute(insert(t.Quarantine).values(source=source, key=key, study_uid=study_uid,
                                                         reason=reason, first_seen=micros, last_seen=micros))

    def release_study(self, source: str, uid: str, conn: Connection | None = None) -> int:
        """A quarantined study of `source` stored fine now: it leaves the quarantine (in the
        batch `conn` when given)."""
        if conn is None:
            with self.engine.begin() as conn:
                return self.release_study(source, uid, conn)
        return conn.execute(_RELEASE, {"key_source": source, "key_uid": uid}).rowcount

    def quarantined_studies(self, source: str, uids: list[str], conn: Connection) -> set[str]:
        """Which of these studies of `source` wait in the quarantine: one query for a batch, so
        that the many studies that never failed are not each released for nothing."""
        return set(conn.execute(_QUARANTINED, {"key_source": source, "uids": uids}).scalars())

    def release_stale(self, source: str, before: int) -> int:
        """Release what a complete sync (started at `before`) did not quarantine again."""
        with self.engine.begin() as conn:
            return conn.execute(delete(t.Quarantine).where(
                t.Quarantine.source == source, t.Quarantine.last_seen < before)).rowcount

    def quarantined(self, source: str | None = None) -> list[t.Quarantine]:
        query = select(t.Quarantine).order_by(t.Quarantine.source, t.Quarantine.key)
        if source:
            query = query.where(t.Quarantine.source == source)
        with self.engine.connect() as conn:
            return [t.Quarantine(**row._mapping) for row in conn.execute(query)]

    def record_run(self, source: str, started: int, status: str, summary: dict) -> None:
        finished, _ = instant_now_ms()
        with self.engine.begin() as conn:
            conn.execute(insert(t.SyncRun).values(source=source, started=started, finished=finished,
                                                  status=status, summary=orjson.dumps(summary).decode()))

    # ---------------------------------------------------------------- source state

    def source_state(self, source: str) -> t.SourceState | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(t.SourceState).where(t.SourceState.source == source)).first()
        return t.SourceState(**row._mapping) if row else None

    def source_states(self) -> list[t.SourceState]:
        with self.engine.connect() as conn:
            return [t.SourceState(**row._mapping) for row in
                    conn.execute(select(t.SourceState).order_by(t.SourceState.source))]

    def update_source_state(self, source: str, **values) -> None:
        """Set some columns of a source's state (cursor as a dict), creating the row if needed."""
        if "cursor" in values:
            values["cursor"] = orjson.dumps(values["cursor"]).decode()
        with self.engine.begin() as conn:
            done = conn.execute(update(t.SourceState).where(t.SourceState.source == source).values(**values)).rowcount
            if not done:
                conn.execute(insert(t.SourceState).values(source=source, **{"cursor": "{}", **values}))

    def patient_fetched(self, source: str, system: str, value: str) -> int | None:
        """When the archive was last asked for this patient's studies (epoch micros), or None."""
        with self.engine.connect() as conn:
            return conn.execute(select(t.PatientFetch.fetched).where(
                t.PatientFetch.source == source, t.PatientFetch.system == system,
                t.PatientFetch.value == value)).scalar()

    def mark_patient_fetched(self, source: str, system: str, value: str, when: int) -> None:
        where = (t.PatientFetch.source == source, t.PatientFetch.system == system, t.PatientFetch.value == value)
        with self.engine.begin() as conn:
            if not conn.execute(update(t.PatientFetch).where(*where).values(fetched=when)).rowcount:
                conn.execute(insert(t.PatientFetch).values(source=source, system=system, value=value, fetched=when))

    def setting(self, key: str, make) -> str:
        """Read a shared setting, creating it with `make()` the first time (race-safe)."""
        with self.engine.connect() as conn:
            row = conn.execute(select(t.Setting.value).where(t.Setting.key == key)).first()
        if row:
            return row.value
        try:
            with self.engine.begin() as conn:
                conn.execute(insert(t.Setting).values(key=key, value=make()))
        except Exception:  # another process created it first
            pass
        with self.engine.connect() as conn:
            return conn.execute(select(t.Setting.value).where(t.Setting.key == key)).scalar_one()

    def paging_secret(self) -> str:
        return self.setting("paging-secret", lambda: secrets.token_urlsafe(32))


def _storable(text: str) -> str:
    return text.replace("\x00", "\\0")


#: Patient.link type for another record of the same person in another system. R4: "seealso: the
#: patient resource containing this link is in use and valid, but points to another patient
#: resource that is known to contain data about the same person ... both should be regarded as
#: equally valid". `replaced-by`/`replaces` say one record is obsolete and `refer` that one is
#: not authoritative; two archives' records are neither, so every link here is `seealso`.
LINK_TYPE = "seealso"


def with_links(patient: dict, linked: list[str]) -> dict:
    """The Patient with a Patient.link (`seealso`) to each linked Patient id, or none."""
    patient = {k: v for k, v in patient.items() if k != "link"}
    if linked:
        patient["link"] = [{"other": {"reference": f"Patient/{other}"}, "type": LINK_TYPE} for other in linked]
    return patient


def merge_patient(contributions: list[dict]) -> dict:
    """One Patient from what its studies say, the most recent study first.

    Demographics come from the most recent study; identifiers from all studies are united,
    so an Other Patient ID seen once stays searchable.
    """
    merged = dict(contributions[0])
    identifiers, seen = [], set()
    for body in contributions:
        for ident in body.get("identifier", []):
            key = (ident.get("system"), ident.get("value"))
            if key not in seen:
                seen.add(key)
                identifiers.append(ident)
    if identifiers:
        merged["identifier"] = identifiers
    return merged


def _commit_without_waiting_for_disk(conn: Connection) -> None:
    """On PostgreSQL, let this transaction commit without waiting for its WAL flush.

    A sync commits once per batch of studies; waiting for the disk each time costs a flush
    per batch. Skipping the wait never reorders commits: after a crash the last few batches
    may be missing, and so is every later write, the source's cursor among them, so the next
    sync fetches them again. The automatic matching of a batch's patients commits with it,
    and is redone with it. Nothing else (audit, a person's identity decisions) commits this way.
    """
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql("SET LOCAL synchronous_commit TO OFF")
