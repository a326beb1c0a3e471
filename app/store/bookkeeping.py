"""What the server keeps about its own work: the quarantine, each source's sync state and runs,
when an archive was last asked for a patient (on-demand mode), and shared settings."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import orjson
from sqlalchemy import bindparam, delete, insert, select, update
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import col

from app.clock import instant_now_ms
from app.ids import valid_id
from app.store import tables as t
from app.store.reader import Reader

_QUARANTINED = select(col(t.Quarantine.study_uid)).where(
    col(t.Quarantine.source) == bindparam("key_source"),
    col(t.Quarantine.study_uid).in_(bindparam("uids", expanding=True)),
)
_RELEASE = delete(t.Quarantine).where(
    col(t.Quarantine.source) == bindparam("key_source"), col(t.Quarantine.study_uid) == bindparam("key_uid")
)


def _storable(text: str) -> str:
    return text.replace("\x00", "\\0")


class Quarantine:
    """Studies (or files) a sync could not map, with the reason; retried by the next sync."""

    def __init__(self, engine: Engine):
        self.engine = engine

    def add(self, source: str, key: str, study_uid: str | None, reason: str) -> None:
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
                conn.execute(
                    update(t.StudyCopy)
                    .where(col(t.StudyCopy.source) == source, col(t.StudyCopy.study_uid) == study_uid)
                    .values(last_seen=micros)
                )
            found = conn.execute(
                select(col(t.Quarantine.first_seen)).where(
                    col(t.Quarantine.source) == source, col(t.Quarantine.key) == key
                )
            ).first()
            if found:
                conn.execute(
                    update(t.Quarantine)
                    .where(col(t.Quarantine.source) == source, col(t.Quarantine.key) == key)
                    .values(reason=reason, last_seen=micros, study_uid=study_uid)
                )
            else:
                conn.execute(
                    insert(t.Quarantine).values(
                        source=source, key=key, study_uid=study_uid, reason=reason, first_seen=micros, last_seen=micros
                    )
                )

    def release(self, source: str, uid: str, conn: Connection | None = None) -> int:
        """A quarantined study of `source` stored fine now: it leaves the quarantine (in the
        batch `conn` when given)."""
        if conn is None:
            with self.engine.begin() as conn:
                return self.release(source, uid, conn)
        return conn.execute(_RELEASE, {"key_source": source, "key_uid": uid}).rowcount

    @staticmethod
    def waiting(source: str, uids: list[str], conn: Connection) -> set[str]:
        """Which of these studies of `source` wait in the quarantine: one query for a batch, so
        that the many studies that never failed are not each released for nothing."""
        # `study_uid IN (…)` never selects a NULL study_uid
        return cast(set[str], set(conn.execute(_QUARANTINED, {"key_source": source, "uids": uids}).scalars()))

    def release_stale(self, source: str, before: int) -> int:
        """Release what a complete sync (started at `before`) did not quarantine again."""
        with self.engine.begin() as conn:
            return conn.execute(
                delete(t.Quarantine).where(col(t.Quarantine.source) == source, col(t.Quarantine.last_seen) < before)
            ).rowcount

    def entries(self, source: str | None = None) -> list[t.Quarantine]:
        query = select(t.Quarantine).order_by(col(t.Quarantine.source), col(t.Quarantine.key))
        if source:
            query = query.where(col(t.Quarantine.source) == source)
        with self.engine.connect() as conn:
            return [t.Quarantine(**row._mapping) for row in conn.execute(query)]


class SyncState:
    """Where each source's sync stands (its cursor, how its last attempts went) and its runs."""

    def __init__(self, engine: Engine):
        self.engine = engine

    def get(self, source: str) -> t.SourceState | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(t.SourceState).where(col(t.SourceState.source) == source)).first()
        return t.SourceState(**row._mapping) if row else None

    def update(self, source: str, **values: Any) -> None:
        """Set some columns of a source's state (cursor as a dict), creating the row if needed."""
        if "cursor" in values:
            values["cursor"] = orjson.dumps(values["cursor"]).decode()
        with self.engine.begin() as conn:
            done = conn.execute(
                update(t.SourceState).where(col(t.SourceState.source) == source).values(**values)
            ).rowcount
            if not done:
                conn.execute(insert(t.SourceState).values(source=source, **{"cursor": "{}", **values}))

    def record_run(self, source: str, started: int, status: str, summary: dict) -> None:
        finished, _ = instant_now_ms()
        with self.engine.begin() as conn:
            conn.execute(
                insert(t.SyncRun).values(
                    source=source,
                    started=started,
                    finished=finished,
                    status=status,
                    summary=orjson.dumps(summary).decode(),
                )
            )


class PatientFetches:
    """When the facade last asked an archive for one patient's studies (on-demand mode)."""

    def __init__(self, engine: Engine):
        self.engine = engine

    def when(self, source: str, system: str, value: str) -> int | None:
        """When the archive was last asked for this patient's studies (epoch micros), or None."""
        with self.engine.connect() as conn:
            return conn.execute(
                select(col(t.PatientFetch.fetched)).where(
                    col(t.PatientFetch.source) == source,
                    col(t.PatientFetch.system) == system,
                    col(t.PatientFetch.value) == value,
                )
            ).scalar()

    def mark(self, source: str, system: str, value: str, when: int) -> None:
        where = (
            col(t.PatientFetch.source) == source,
            col(t.PatientFetch.system) == system,
            col(t.PatientFetch.value) == value,
        )
        with self.engine.begin() as conn:
            if conn.execute(update(t.PatientFetch).where(*where).values(fetched=when)).rowcount:
                return
        try:
            with self.engine.begin() as conn:
                conn.execute(insert(t.PatientFetch).values(source=source, system=system, value=value, fetched=when))
        except IntegrityError:  # another API node fetched the same patient at the same moment
            with self.engine.begin() as conn:
                later = col(t.PatientFetch.fetched) < when
                conn.execute(update(t.PatientFetch).where(*where, later).values(fetched=when))


class Settings:
    """Server-wide values every process must share (e.g. the paging link key)."""

    def __init__(self, engine: Engine):
        self.engine = engine

    def get(self, key: str, make: Callable[[], str]) -> str:
        """Read a shared setting, creating it with `make()` the first time (race-safe)."""
        with self.engine.connect() as conn:
            row = conn.execute(select(col(t.Setting.value)).where(col(t.Setting.key) == key)).first()
        if row:
            return row.value
        try:
            with self.engine.begin() as conn:
                conn.execute(insert(t.Setting).values(key=key, value=make()))
        except IntegrityError:  # another process created it first: theirs is read below
            pass
        with self.engine.connect() as conn:
            return conn.execute(select(col(t.Setting.value)).where(col(t.Setting.key) == key)).scalar_one()

    def paging_secret(self) -> str:
        import secrets

        return self.get("paging-secret", lambda: secrets.token_urlsafe(32))


def health_rows(reader: Reader) -> dict[str, tuple]:
    """source -> (last success, last full sync, last error, when it happened), as /health reports."""
    return {
        r[0]: r[1:]
        for r in reader.all("SELECT source, last_success, last_full, last_error, last_error_at FROM source_state")
    }
