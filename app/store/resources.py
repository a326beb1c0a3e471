"""Resources and their versions: writing a new version only when content changed, tombstones,
and the API's reads of current and past versions.

A resource gets a new `meta.versionId` and `meta.lastUpdated` only when its content (all but
those two) changed, so syncing the same archive twice changes nothing, while a new profile
claim in `meta.profile` is a new version (FHIR R4 http: versionId changes with every change).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import orjson
from sqlalchemy import bindparam, delete, insert, inspect, null, select, update
from sqlalchemy.engine import Connection, Engine, Row
from sqlmodel import col

from app.clock import instant_now_ms
from app.store import batch
from app.store import tables as t
from app.store.indexer import Indexing, drop_index, write_index
from app.store.narrative import with_narrative
from app.store.reader import Reader

NEW, UPDATED, UNCHANGED, DELETED = "new", "updated", "unchanged", "deleted"
#: the content of the version a deletion makes: history lists the deletion as an entry without a
#: resource and a vread of that version answers 410 (FHIR R4 http 3.1.0.12, 3.1.0.3)
DELETION = b""

_VERSION_META = ("versionId", "lastUpdated")

# The statements a sync runs for every study, built once: building a statement and deriving
# its cache key costs some 0.3 ms, more than running it (0.07 ms on SQLite, 0.2 ms on
# PostgreSQL), and a study runs about a dozen. Values go in as parameters (`key_*` in WHERE
# clauses, column names in VALUES and SET).
_THE_RESOURCE = (col(t.Resource.rtype) == bindparam("key_rtype"), col(t.Resource.id) == bindparam("key_id"))
#: the stored version and hash of a resource, or else the version of its tombstone (content_hash
#: NULL): a resource that is neither stored nor deleted costs one round trip, not two
RESOURCE_STATE = (
    select(col(t.Resource.version), col(t.Resource.content_hash))
    .where(*_THE_RESOURCE)
    .union_all(
        select(col(t.Tombstone.version), null().cast(inspect(t.Resource).columns["content_hash"].type)).where(
            col(t.Tombstone.rtype) == bindparam("key_rtype"), col(t.Tombstone.id) == bindparam("key_id")
        )
    )
)
_UPDATE_RESOURCE = update(t.Resource).where(*_THE_RESOURCE)


def content_hash(body: dict) -> str:
    """A digest of what a resource says, leaving out what changes with each version."""
    content = {k: v for k, v in body.items() if k != "meta"}
    meta = {k: v for k, v in (body.get("meta") or {}).items() if k not in _VERSION_META}
    if meta:
        content["meta"] = meta
    return hashlib.sha256(orjson.dumps(content, option=orjson.OPT_SORT_KEYS)).hexdigest()


class Resources:
    """Writes of stored resources with their versions and index rows."""

    def __init__(self, engine: Engine, indexing: Indexing):
        self.engine = engine
        self.indexing = indexing

    def put(self, body: dict) -> str:
        """Store a resource in a transaction of its own; its outcome (new, updated, unchanged)."""
        with self.engine.begin() as conn:
            return self.put_in(conn, body)

    def put_in(self, conn: Connection, body: dict, found: Sequence[Row] | None = None) -> str:
        """Store a resource's new version unless its content is the stored one; `found` is
        what RESOURCE_STATE gives for it, when the caller read it already."""
        body = with_narrative(body)
        rtype, rid = body["resourceType"], body["id"]
        digest = content_hash(body)
        key = {"key_rtype": rtype, "key_id": rid}
        if found is None:
            found = conn.execute(RESOURCE_STATE, key).all()
        row = next((r for r in found if r.content_hash is not None), None)
        if row is not None and row.content_hash == digest:
            return UNCHANGED
        version = 1 if row is None else row.version + 1
        gone = next((r for r in found if r.content_hash is None), None)
        if row is None and gone is not None:  # served before and deleted: its versions go on
            version = gone.version + 1
            conn.execute(delete(t.Tombstone).where(col(t.Tombstone.rtype) == rtype, col(t.Tombstone.id) == rid))
        micros, instant = instant_now_ms()
        stored = {
            "resourceType": rtype,
            "id": rid,
            "meta": {**body.get("meta", {}), "versionId": str(version), "lastUpdated": instant},
        }
        stored.update((k, v) for k, v in body.items() if k not in ("resourceType", "id", "meta"))
        content = orjson.dumps(stored)
        values = dict(version=version, last_updated=micros, content_hash=digest, content=content)
        if row is None:
            conn.execute(insert(t.Resource), dict(rtype=rtype, id=rid, **values))
        else:
            conn.execute(_UPDATE_RESOURCE, dict(key, **values))
            drop_index(conn, rtype, rid)
        _write_version(conn, dict(rtype=rtype, id=rid, version=version, last_updated=micros, content=content))
        write_index(conn, stored, self.indexing)
        return NEW if row is None else UPDATED

    @staticmethod
    def delete_in(conn: Connection, rtype: str, rid: str) -> None:
        """Take a resource out of search; a tombstone answers reads with 410 from now on, and the
        deletion is a version of its own (content DELETION), kept in its history."""
        row = conn.execute(
            select(col(t.Resource.version)).where(col(t.Resource.rtype) == rtype, col(t.Resource.id) == rid)
        ).first()
        if row is None:
            return
        conn.execute(delete(t.Resource).where(col(t.Resource.rtype) == rtype, col(t.Resource.id) == rid))
        drop_index(conn, rtype, rid)
        micros, _ = instant_now_ms()
        version = row.version + 1
        conn.execute(insert(t.Tombstone).values(rtype=rtype, id=rid, version=version, deleted=micros))
        _write_version(conn, dict(rtype=rtype, id=rid, version=version, last_updated=micros, content=DELETION))

    @staticmethod
    def existing(conn: Connection, rtype: str, ids: list[str]) -> list[str]:
        """Those of `ids` that are stored, in their order."""
        if not ids:
            return []
        found = set(
            conn.execute(
                select(col(t.Resource.id)).where(col(t.Resource.rtype) == rtype, col(t.Resource.id).in_(ids))
            ).scalars()
        )
        return [i for i in ids if i in found]


def _write_version(conn: Connection, row: dict) -> None:
    """Keep a version for history and vread; only the API reads them, so a batch writes
    its versions at its end with its index rows."""
    pending = batch.pending(conn)
    if pending is not None:
        pending[(row["rtype"], row["id"], row["version"])] = [(t.ResourceVersion, [row])]
        return
    conn.execute(insert(t.ResourceVersion), row)


# ---- the API's reads (plain SQL on the read path, app/store/reader.py)


def read_current(reader: Reader, rtype: str, rid: str) -> tuple[int, int, bytes] | None:
    """(version, last_updated, content) of the current version, or None."""
    # by primary key: one plan for any id (app/store/reader.py)
    return reader.one(
        "SELECT version, last_updated, content FROM resource WHERE rtype = ? AND id = ?", [rtype, rid], any_values=True
    )


def read_deleted(reader: Reader, rtype: str, rid: str) -> tuple[int, int] | None:
    """(version, deleted) of a resource that was served and is gone, or None."""
    return reader.one(
        "SELECT version, deleted FROM tombstone WHERE rtype = ? AND id = ?", [rtype, rid], any_values=True
    )


def read_version(reader: Reader, rtype: str, rid: str, version: int) -> tuple[int, bytes] | None:
    """(last_updated, content) of one stored version, or None; content DELETION for a deletion."""
    return reader.one(
        "SELECT last_updated, content FROM resource_version WHERE rtype = ? AND id = ? AND version = ?",
        [rtype, rid, version],
        any_values=True,
    )


def read_audit_event(reader: Reader, event_id: str) -> tuple[int, bytes] | None:
    """(recorded, stored record) of one event of the audit trail, or None."""
    return reader.one("SELECT recorded, content FROM audit_event WHERE id = ?", [event_id], any_values=True)
