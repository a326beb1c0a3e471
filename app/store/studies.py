"""Studies: each archive's copy of a study, the ImagingStudy served as their merge, and what
becomes of it when an archive no longer holds it.

A sync stores one archive's copy of a study (app/store/copies.py merges the copies of every
archive that holds it) together with what the study says about its patient
(app/store/patients.py), in one transaction or as part of a batch (app/store/batch.py).
"""

from __future__ import annotations

import orjson
from sqlalchemy import bindparam, delete, insert, select, update
from sqlalchemy.engine import Connection, Engine, Row
from sqlmodel import col

from app.clock import instant_now_ms
from app.store import batch, study_events
from app.store import tables as t
from app.store.copies import merge_copies
from app.store.patients import Patients
from app.store.reader import Reader
from app.store.resources import DELETED, NEW, UPDATED, Resources
from app.store.study_state import StudyState, read_states

_THE_COPY = (col(t.StudyCopy.source) == bindparam("key_source"), col(t.StudyCopy.study_uid) == bindparam("key_uid"))
_UPDATE_COPY = update(t.StudyCopy).where(*_THE_COPY)


class StudyCopies:
    """Writes and bookkeeping reads of the archives' copies of studies."""

    def __init__(self, engine: Engine, resources: Resources, patients: Patients):
        self.engine = engine
        self.resources = resources
        self.patients = patients

    def put(
        self, study: dict, patient: dict, source: str, archive_key: str | None = None, conn: Connection | None = None
    ) -> str:
        """Store one archive's copy of a study and its patient's contribution, in one transaction
        (or in the batch `conn`, see app/store/batch.py).

        The served ImagingStudy is the merge of every archive's copy. Returns its outcome
        (new, updated, unchanged).
        """
        if conn is not None:
            return self._put(conn, study, patient, source, archive_key)
        with batch.batch(self.engine) as conn:
            return self._put(conn, study, patient, source, archive_key)

    def put_many(self, studies: list[tuple[dict, dict]], source: str) -> list[str]:
        """`put` for each (study, patient) in turn, all in one batch: for bulk loads.

        Returns each study's outcome, in order.
        """
        with batch.batch(self.engine) as conn:
            self.read_ahead(conn, source, [study["id"] for study, _ in studies])
            return [self._put(conn, study, patient, source) for study, patient in studies]

    @staticmethod
    def read_ahead(conn: Connection, source: str, uids: list[str]) -> None:
        """Read what storing these studies of `source` in the batch `conn` will look up, in
        three queries instead of four per study (app/store/study_state.py).

        Each study's state is used once: nothing else in a batch writes a study's copies,
        contribution or ImagingStudy, but a study stored twice in one batch must see the
        first time's writes, so the second time reads the store.
        """
        ahead = batch.ahead(conn)
        if ahead is not None:
            ahead.update(((source, uid), state) for uid, state in read_states(conn, source, uids).items())

    @staticmethod
    def _state(conn: Connection, source: str, uid: str) -> StudyState:
        ahead = batch.ahead(conn)
        state = ahead.pop((source, uid), None) if ahead is not None else None
        return state if state is not None else read_states(conn, source, [uid])[uid]

    def _put(self, conn: Connection, study: dict, patient: dict, source: str, archive_key: str | None = None) -> str:
        uid = study["id"]
        state = self._state(conn, source, uid)
        self._save_copy(conn, source, study, archive_key, state.copies.get(source))
        self.patients.contribute(conn, source, uid, patient, f"{study.get('started', '')}|{uid}", state.contribution)
        copies = {
            source: study,
            **{other: orjson.loads(r.content) for other, r in state.copies.items() if other != source},
        }
        merged = merge_copies(copies)
        outcome = self.resources.put_in(conn, merged, state.resource)
        if outcome == NEW:
            study_events.record(conn, uid, None, merged)
        elif outcome == UPDATED:  # what it was, for the topics (app/store/study_events.py)
            before = {other: orjson.loads(r.content) for other, r in state.copies.items()}
            study_events.record(conn, uid, merge_copies(before) if before else None, merged)
        return outcome

    @staticmethod
    def _save_copy(conn: Connection, source: str, study: dict, archive_key: str | None, found: Row | None) -> None:
        """Keep the archive's copy (`found`: the one stored, or None) and note that this sync saw it."""
        uid = study["id"]
        micros, _ = instant_now_ms()
        content = orjson.dumps(study)
        key = {"key_source": source, "key_uid": uid}
        if found is None:
            conn.execute(
                insert(t.StudyCopy),
                dict(source=source, study_uid=uid, archive_key=archive_key, last_seen=micros, content=content),
            )
            return
        values: dict = {"last_seen": micros}
        if found.content != content:
            values["content"] = content
        if archive_key and archive_key != found.archive_key:
            values["archive_key"] = archive_key
        conn.execute(_UPDATE_COPY, dict(key, **values))

    def remove(self, source: str, uid: str) -> str | None:
        """The archive no longer holds the study: drop its copy and what its copy said.

        The study stays, merged from the other archives' copies, while one still holds it;
        otherwise it leaves search and a read of it answers 410. Returns the study's outcome
        (updated or deleted), or None if the archive was not known to hold it.
        """
        with self.engine.begin() as conn:
            held = conn.execute(
                select(col(t.StudyCopy.source), col(t.StudyCopy.content)).where(col(t.StudyCopy.study_uid) == uid)
            ).all()
            if not any(r.source == source for r in held):
                return None
            conn.execute(
                delete(t.StudyCopy).where(col(t.StudyCopy.source) == source, col(t.StudyCopy.study_uid) == uid)
            )
            patient = self.patients.withdraw(conn, source, uid)
            before = merge_copies({r.source: orjson.loads(r.content) for r in held})
            others = [r for r in held if r.source != source]
            if others:
                after = merge_copies({r.source: orjson.loads(r.content) for r in others})
                outcome = self.resources.put_in(conn, after)
                if outcome == UPDATED:
                    study_events.record(conn, uid, before, after)
            else:
                self.resources.delete_in(conn, "ImagingStudy", uid)
                study_events.record(conn, uid, before, None)
                outcome = DELETED
            if patient is not None:
                self.patients.refresh(conn, [patient])
            return outcome

    def not_seen_since(self, source: str, since: int) -> list[str]:
        """Studies of `source` that no listing since `since` (epoch micros) has shown."""
        with self.engine.connect() as conn:
            return list(
                conn.execute(
                    select(col(t.StudyCopy.study_uid))
                    .where(col(t.StudyCopy.source) == source, col(t.StudyCopy.last_seen) < since)
                    .order_by(col(t.StudyCopy.study_uid))
                ).scalars()
            )

    def held_by(self, source: str) -> list[str]:
        """Every study `source` holds, as far as the store knows."""
        with self.engine.connect() as conn:
            return list(
                conn.execute(
                    select(col(t.StudyCopy.study_uid))
                    .where(col(t.StudyCopy.source) == source)
                    .order_by(col(t.StudyCopy.study_uid))
                ).scalars()
            )

    def for_archive_key(self, source: str, archive_key: str) -> str | None:
        """The study an archive knows by its own id (Orthanc's study id)."""
        with self.engine.connect() as conn:
            return conn.execute(
                select(col(t.StudyCopy.study_uid)).where(
                    col(t.StudyCopy.source) == source, col(t.StudyCopy.archive_key) == archive_key
                )
            ).scalar()

    def archive_keys(self, source: str) -> dict[str, str]:
        """The archive's own ids of the studies it holds -> their StudyInstanceUIDs."""
        with self.engine.connect() as conn:
            return {
                r.archive_key: r.study_uid
                for r in conn.execute(
                    select(col(t.StudyCopy.archive_key), col(t.StudyCopy.study_uid)).where(
                        col(t.StudyCopy.source) == source, col(t.StudyCopy.archive_key).is_not(None)
                    )
                )
            }

    def holders(self, uid: str) -> list[str]:
        """The sources that hold a study."""
        with self.engine.connect() as conn:
            return list(
                conn.execute(
                    select(col(t.StudyCopy.source))
                    .where(col(t.StudyCopy.study_uid) == uid)
                    .order_by(col(t.StudyCopy.source))
                ).scalars()
            )


# ---- the API's reads

_SUBJECT = b'"subject":{"reference":"Patient/'


def study_subject(content: bytes | None) -> str | None:
    """The Patient id of a stored ImagingStudy's subject, read off its JSON as the store wrote it
    (orjson: compact, `reference` the subject's first key; a FHIR id holds no quote); None when
    it is not there in that form. A search for it would cost more than the search it audits."""
    if not content:
        return None
    start = content.find(_SUBJECT)
    if start < 0:
        return None
    start += len(_SUBJECT)
    end = content.find(b'"', start)
    return content[start:end].decode() if end > start else None


def holders_of(reader: Reader, uid: str) -> list[str]:
    """The sources that hold a study, by name (the WADO-RS gateway asks on every request)."""
    return [r[0] for r in reader.all("SELECT source FROM study_copy WHERE study_uid = ? ORDER BY source", [uid])]


def subjects_of(reader: Reader, studies: list[str]) -> set[str]:
    """The Patient ids of the studies' subjects, from their index rows."""
    # by the owner index: SQLite without statistics (a store not yet analyzed) would otherwise
    # scan every study's patient reference in the covering lookup index, 9 ms at 40,000 studies
    table = "idx_reference INDEXED BY ix_reference_owner" if reader.is_sqlite else "idx_reference"
    found: set[str] = set()
    for start in range(0, len(studies), 500):
        chunk = studies[start : start + 500]
        rows = reader.all(
            f"SELECT target_id FROM {table} WHERE rtype = ? AND param = ? AND target_type = ? "
            f"AND rid IN ({', '.join('?' * len(chunk))})",
            ["ImagingStudy", "patient", "Patient", *chunk],
        )
        found.update(r[0] for r in rows)
    return found
