"""Re-keying a store's Patient ids: from the unkeyed digests of earlier releases to keyed ones
(app/identity/keys.py), with every reference to them.

A Patient id sits in many places: the Patient's rows (current, versions, tombstone, index rows),
what names it (ImagingStudy.subject in the current study, its versions and each archive's copy;
Patient.link of linked records; reference index rows), identity matching's tables (features,
blocking keys, link decisions), the studies' contributions, the quarantine's reasons and the
audit trail (the patients an event names, its read, its path and query). All of them move to
the new id, so history, links, compartments and the trail read as before.

The work is cut into batches, each one transaction that also records how far the work got (the
`patient-rekey` setting): a re-key killed at any moment goes on from the last batch that
committed when run again, and ends with the same store as one run in one go, since each new id
is a function of the key and the old id's identifier. Steps:

1. `map`: every Patient id ever stored (from its versions) and its new id, in a work table
   (`patient_rekey`, made for the re-key and dropped at its end): the new id is the keyed id of
   the identifier the old id was the digest of, found among the Patient's identifiers (in its
   namespace, `identity.same_namespace`), or of the study of a Patient of its own; an old id
   whose identifier cannot be found any more gets an id keyed on the old id itself.
2. `patients`: each Patient's own rows and the rows naming it by id column, a batch of Patients
   at a time; a link decision moves with the first of its two Patients.
3. `resources`, `versions`, `copies`, `quarantine`, `audit`, `exports`, `subscriptions`: the
   other rows whose content names a Patient, each in key order; every old id found in the
   content is replaced.

Old ids are "p"/"s" and 40 hex digits, and a content is searched for that shape; only ids in
the work table are replaced. Deletions (versions with empty content) keep their empty content.
Nothing is logged but counts: neither the key nor any id.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Callable, Iterable

import orjson
from sqlalchemy import Column, MetaData, Table, bindparam, text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.sql.elements import BindParameter, TextClause

from app.identity.keys import (
    KEYED_PREFIX,
    STUDY_PREFIX,
    legacy_patient_id,
    legacy_patient_id_for_study,
    patient_id,
    patient_id_for_study,
    rekeyed_unknown,
)
from app.identity.settings import IdentityConfig
from app.store.patient_ids import SCHEME, SCHEME_SETTING, current
from app.store.resources import content_hash
from app.store.tables import ID_TEXT

PROGRESS_SETTING = "patient-rekey"
#: an old id anywhere (the audit trail's queries and paths, quarantine reasons, link explanations)
_OLD_ID = re.compile(rb"()([ps][0-9a-f]{40})(?![0-9a-f])")
#: a reference to a Patient (ImagingStudy.subject, Patient.link): the literal prefix lets the
#: search skip along large study contents instead of trying a match at every byte
_REFERENCE = re.compile(rb"(Patient/)([ps][0-9a-f]{40})(?![0-9a-f])")

_work = MetaData()
WORK = Table(
    "patient_rekey",
    _work,
    Column("old_id", ID_TEXT, primary_key=True),
    Column("new_id", ID_TEXT, nullable=False),
)

#: (table, id column, what else selects the rows): the rows naming a Patient in an id column
_ID_COLUMNS = (
    ("tombstone", "id", "rtype = 'Patient'"),
    ("idx_token", "rid", "rtype = 'Patient'"),
    ("idx_string", "rid", "rtype = 'Patient'"),
    ("idx_date", "rid", "rtype = 'Patient'"),
    ("idx_reference", "rid", "rtype = 'Patient'"),
    ("patient_match", "patient_id", "1 = 1"),
    ("patient_block", "patient_id", "1 = 1"),
    ("audit_index", "value", "param = 'patient'"),
)


def _move(table: str, column: str, where: str) -> TextClause:
    """Set `column` to the new id of the old one it holds, in the rows `where` of the ids `:ids`."""
    return text(
        f"UPDATE {table} SET {column} = (SELECT new_id FROM patient_rekey WHERE old_id = {table}.{column}) "
        f"WHERE {where} AND {column} IN :ids"
    ).bindparams(bindparam("ids", expanding=True))


#: what a re-key tells as it goes: (step, rows of the step done so far)
Progress = Callable[[str, int], None]
STEPS = ("map", "patients", "resources", "versions", "copies", "quarantine", "audit", "exports", "subscriptions")


def needed(engine: Engine) -> bool:
    """Whether the store's Patient ids still need a re-key (never re-keyed, or a re-key stopped)."""
    return not current(engine)


def rekey(
    engine: Engine, key: bytes, rules: IdentityConfig, batch: int = 1000, progress: Progress | None = None
) -> int:
    """Re-key every Patient id of the store, going on from where a stopped re-key got; the
    number of Patient ids the work table holds (0: nothing to do)."""
    return _Rekey(engine, key, rules, batch, progress or (lambda step, done: None)).run()


class _Rekey:
    def __init__(self, engine: Engine, key: bytes, rules: IdentityConfig, batch: int, progress: Progress):
        self.engine = engine
        self.key = key
        self.rules = rules
        self.batch = max(1, batch)
        self.progress = progress

    def run(self) -> int:
        if current(self.engine):
            WORK.drop(self.engine, checkfirst=True)  # left by a re-key stopped after its last batch
            return 0
        WORK.create(self.engine, checkfirst=True)
        with self.engine.connect() as conn:
            state = _progress(conn) or {"step": STEPS[0], "after": None, "done": 0}
        start, total = STEPS.index(state["step"]), 0
        for name in STEPS[start:]:
            step = getattr(self, "_" + name)
            after, done = (state["after"], state["done"]) if name == state["step"] else (None, 0)
            while True:
                with self.engine.begin() as conn:
                    after, rows = step(conn, after)
                    done += rows
                    # the next step starts from its beginning once this one is through
                    if after is None:
                        following = STEPS.index(name) + 1
                        saved = {"step": STEPS[following], "after": None, "done": 0} if following < len(STEPS) else None
                    else:
                        saved = {"step": name, "after": after, "done": done}
                    if saved is not None:
                        _save_progress(conn, saved)
                    else:
                        total = conn.execute(text("SELECT COUNT(*) FROM patient_rekey")).scalar_one()
                        _finish(conn)
                self.progress(name, done)
                if after is None:
                    break
        WORK.drop(self.engine, checkfirst=True)
        return int(total)

    # ---- 1. the work table: old id -> new id

    def _map(self, conn: Connection, after: str | None) -> tuple[str | None, int]:
        ids = list(
            conn.execute(
                text(
                    "SELECT DISTINCT id FROM resource_version WHERE rtype = 'Patient' AND id > :after "
                    "ORDER BY id LIMIT :n"
                ),
                {"after": after or "", "n": self.batch},
            ).scalars()
        )
        if not ids:
            return None, 0
        contents: dict[str, list[bytes]] = {i: [] for i in ids}
        for rid, content in conn.execute(
            text("SELECT id, content FROM resource_version WHERE rtype = 'Patient' AND id IN :ids").bindparams(
                bindparam("ids", expanding=True)
            ),
            {"ids": ids},
        ):
            if content:
                contents[rid].append(bytes(content))
        studies: dict[str, list[str]] = {}
        own = [i for i in ids if i.startswith(STUDY_PREFIX)]
        if own:
            for pid, uid in conn.execute(
                text("SELECT patient_id, study_uid FROM patient_contribution WHERE patient_id IN :ids").bindparams(
                    bindparam("ids", expanding=True)
                ),
                {"ids": own},
            ):
                studies.setdefault(pid, []).append(uid)
        rows = [{"old_id": i, "new_id": self._new_id(i, contents[i], studies.get(i, []))} for i in ids]
        conn.execute(WORK.insert(), rows)
        return ids[-1], len(ids)

    def _new_id(self, old: str, contents: list[bytes], studies: list[str]) -> str:
        if old.startswith(STUDY_PREFIX):
            for uid in studies:
                if legacy_patient_id_for_study(uid) == old:
                    return patient_id_for_study(uid, self.key)
        elif old.startswith(KEYED_PREFIX):
            for system, value in self._identifiers(contents):
                for namespace in self._namespaces(system):
                    if legacy_patient_id(namespace, value) == old:
                        return patient_id(namespace, value, self.key)
        return rekeyed_unknown(old, self.key)

    @staticmethod
    def _identifiers(contents: list[bytes]) -> Iterable[tuple[str, str]]:
        seen: set[tuple[str, str]] = set()
        for content in contents:
            for ident in orjson.loads(content).get("identifier") or []:
                pair = (ident.get("system"), ident.get("value"))
                if isinstance(pair[0], str) and isinstance(pair[1], str) and pair[0] and pair[1] and pair not in seen:
                    seen.add(pair)
                    yield pair

    def _namespaces(self, system: str) -> list[str]:
        """The systems `system`'s values may have been keyed in: its own, and those of its group."""
        found = [system, self.rules.namespace(system)]
        for group in self.rules.same_namespace:
            if system in group:
                found.extend(group)
        return list(dict.fromkeys(found))

    # ---- 2. each Patient's own rows, and the rows naming it in an id column

    def _patients(self, conn: Connection, after: str | None) -> tuple[str | None, int]:
        pairs = conn.execute(
            text("SELECT old_id, new_id FROM patient_rekey WHERE old_id > :after ORDER BY old_id LIMIT :n"),
            {"after": after or "", "n": self.batch},
        ).all()
        if not pairs:
            return None, 0
        mapping = {old: new for old, new in pairs}
        olds = list(mapping)
        expanding: BindParameter = bindparam("ids", expanding=True)
        # the Patient's current version and its versions: id column and content (its id, its links)
        current_rows = conn.execute(
            text("SELECT id, content FROM resource WHERE rtype = 'Patient' AND id IN :ids").bindparams(expanding),
            {"ids": olds},
        ).all()
        version_rows = conn.execute(
            text("SELECT id, version, content FROM resource_version WHERE rtype = 'Patient' AND id IN :ids").bindparams(
                expanding
            ),
            {"ids": olds},
        ).all()
        contents = [bytes(r.content) for r in current_rows] + [bytes(r.content) for r in version_rows]
        names = self._names_in(conn, contents, mapping)
        updates = []
        for r in current_rows:
            content = _replace(bytes(r.content), names)
            updates.append(
                {"old": r.id, "new": mapping[r.id], "content": content, "hash": content_hash(orjson.loads(content))}
            )
        if updates:
            _update_rows(
                conn,
                "resource",
                {"id": "new", "content": "content", "content_hash": "hash"},
                {"rtype": "rtype", "id": "old"},
                [dict(u, rtype="Patient") for u in updates],
            )
        versions = [
            {"old": r.id, "new": mapping[r.id], "version": r.version, "content": _replace(bytes(r.content), names)}
            for r in version_rows
        ]
        if versions:
            _update_rows(
                conn,
                "resource_version",
                {"id": "new", "content": "content"},
                {"rtype": "rtype", "id": "old", "version": "version"},
                [dict(v, rtype="Patient") for v in versions],
            )
        # the rows that name these Patients in an id column: one statement per table and batch,
        # each row's new id looked up in the work table by its primary key, the rows found by
        # `IN (…)` on an index of theirs (a plan that does not depend on the tables' statistics)
        for table, column, where in _ID_COLUMNS:
            conn.execute(_move(table, column, where), {"ids": olds})
        # references to the Patients in the index, by each (type, parameter) that names Patients,
        # so that each update reads the lookup index
        for rtype, param in self._patient_parameters(conn):
            conn.execute(
                _move("idx_reference", "target_id", "rtype = :rtype AND param = :param AND target_type = 'Patient'"),
                {"ids": olds, "rtype": rtype, "param": param},
            )
        self._contributions(conn, olds, mapping)
        self._links(conn, olds, mapping)
        return olds[-1], len(olds)

    def _patient_parameters(self, conn: Connection) -> list[tuple[str, str]]:
        if not hasattr(self, "_parameters"):
            self._parameters = [
                (r[0], r[1])
                for r in conn.execute(
                    text("SELECT DISTINCT rtype, param FROM idx_reference WHERE target_type = 'Patient'")
                )
            ]
        return self._parameters

    def _contributions(self, conn: Connection, olds: list[str], mapping: dict[str, str]) -> None:
        rows = conn.execute(
            text(
                "SELECT source, study_uid, patient_id, content FROM patient_contribution WHERE patient_id IN :ids"
            ).bindparams(bindparam("ids", expanding=True)),
            {"ids": olds},
        ).all()
        if rows:
            _update_rows(
                conn,
                "patient_contribution",
                {"patient_id": "new", "content": "content"},
                {"source": "source", "study_uid": "uid"},
                [
                    {
                        "new": mapping[r.patient_id],
                        "content": _replace(bytes(r.content), mapping),
                        "source": r.source,
                        "uid": r.study_uid,
                    }
                    for r in rows
                ],
            )

    def _links(self, conn: Connection, olds: list[str], mapping: dict[str, str]) -> None:
        """Link decisions of these Patients: both ends move at once (the other end is still old,
        or it would have moved this row before), kept in order (`a` < `b`)."""
        rows = conn.execute(
            text(
                "SELECT a, b, status, points, explanation, decided FROM patient_link WHERE a IN :ids "
                "UNION SELECT a, b, status, points, explanation, decided FROM patient_link WHERE b IN :ids"
            ).bindparams(bindparam("ids", expanding=True)),
            {"ids": olds},
        ).all()
        if not rows:
            return
        names = self._names_in(conn, [bytes(r.explanation) for r in rows], dict(mapping))
        for end in ("a", "b"):
            missing = [getattr(r, end) for r in rows if getattr(r, end) not in names]
            names.update(self._lookup(conn, missing))
        conn.execute(text("DELETE FROM patient_link WHERE a = :a AND b = :b"), [{"a": r.a, "b": r.b} for r in rows])
        moved = []
        for r in rows:
            a, b = names.get(r.a, r.a), names.get(r.b, r.b)
            a, b = min(a, b), max(a, b)
            moved.append(
                {
                    "a": a,
                    "b": b,
                    "status": r.status,
                    "points": r.points,
                    "explanation": _replace(bytes(r.explanation), names),
                    "decided": r.decided,
                }
            )
        conn.execute(
            text(
                "INSERT INTO patient_link (a, b, status, points, explanation, decided) "
                "VALUES (:a, :b, :status, :points, :explanation, :decided)"
            ),
            moved,
        )

    # ---- 3. the other rows whose content names Patients

    def _resources(self, conn: Connection, after: list | None) -> tuple[list | None, int]:
        rows = self._page(
            conn, "SELECT rtype, id, content FROM resource WHERE rtype <> 'Patient'", ("rtype", "id"), after
        )
        if not rows:
            return None, 0
        names = self._names_in(conn, [bytes(r.content) for r in rows], pattern=_REFERENCE)
        changed = []
        for r in rows:
            content = _replace(bytes(r.content), names, _REFERENCE)
            if content != bytes(r.content):
                changed.append(
                    {"rtype": r.rtype, "id": r.id, "content": content, "hash": content_hash(orjson.loads(content))}
                )
        if changed:
            _update_rows(
                conn,
                "resource",
                {"content": "content", "content_hash": "hash"},
                {"rtype": "rtype", "id": "id"},
                changed,
            )
        return [rows[-1].rtype, rows[-1].id], len(rows)

    def _versions(self, conn: Connection, after: list | None) -> tuple[list | None, int]:
        rows = self._page(
            conn,
            "SELECT rtype, id, version, content FROM resource_version WHERE rtype <> 'Patient'",
            ("rtype", "id", "version"),
            after,
        )
        if not rows:
            return None, 0
        names = self._names_in(conn, [bytes(r.content) for r in rows], pattern=_REFERENCE)
        changed = [
            {
                "rtype": r.rtype,
                "id": r.id,
                "version": r.version,
                "content": _replace(bytes(r.content), names, _REFERENCE),
            }
            for r in rows
            if names and _REFERENCE.search(bytes(r.content))
        ]
        if changed:
            _update_rows(
                conn,
                "resource_version",
                {"content": "content"},
                {"rtype": "rtype", "id": "id", "version": "version"},
                changed,
            )
        return [rows[-1].rtype, rows[-1].id, rows[-1].version], len(rows)

    def _copies(self, conn: Connection, after: list | None) -> tuple[list | None, int]:
        rows = self._page(
            conn, "SELECT source, study_uid, content FROM study_copy WHERE 1 = 1", ("source", "study_uid"), after
        )
        if not rows:
            return None, 0
        names = self._names_in(conn, [bytes(r.content) for r in rows], pattern=_REFERENCE)
        changed = [
            {"source": r.source, "uid": r.study_uid, "content": _replace(bytes(r.content), names, _REFERENCE)}
            for r in rows
            if names and _REFERENCE.search(bytes(r.content))
        ]
        if changed:
            _update_rows(conn, "study_copy", {"content": "content"}, {"source": "source", "study_uid": "uid"}, changed)
        return [rows[-1].source, rows[-1].study_uid], len(rows)

    def _quarantine(self, conn: Connection, after: list | None) -> tuple[list | None, int]:
        rows = self._page(conn, "SELECT source, key, reason FROM quarantine WHERE 1 = 1", ("source", "key"), after)
        if not rows:
            return None, 0
        names = self._names_in(conn, [r.reason.encode() for r in rows])
        changed = [
            {"source": r.source, "key": r.key, "reason": _replace(r.reason.encode(), names).decode()}
            for r in rows
            if names and _OLD_ID.search(r.reason.encode())
        ]
        if changed:
            conn.execute(text("UPDATE quarantine SET reason = :reason WHERE source = :source AND key = :key"), changed)
        return [rows[-1].source, rows[-1].key], len(rows)

    def _audit(self, conn: Connection, after: list | None) -> tuple[list | None, int]:
        rows = self._page(conn, "SELECT id, content FROM audit_event WHERE 1 = 1", ("id",), after)
        if not rows:
            return None, 0
        contents = [_audit_text(bytes(r.content)) for r in rows]
        names = self._names_in(conn, contents)
        changed = []
        for r, shown in zip(rows, contents, strict=True):
            if names and _OLD_ID.search(shown):
                content = _rekey_audit(bytes(r.content), names)
                if content != bytes(r.content):
                    changed.append({"id": r.id, "content": content})
        if changed:
            conn.execute(text("UPDATE audit_event SET content = :content WHERE id = :id"), changed)
        return [rows[-1].id], len(rows)

    def _exports(self, conn: Connection, after: list | None) -> tuple[list | None, int]:
        """Bulk Data export jobs: their request and parameters may name Patients (Patient/$export
        `patient`, `_typeFilter`), and so may a finished job's manifest and error. The files a job
        wrote stay as they are until the job expires."""
        rows = self._page(
            conn, "SELECT id, request, params, progress, manifest, error FROM export_job WHERE 1 = 1", ("id",), after
        )
        if not rows:
            return None, 0
        texts = ("request", "progress", "error")
        blobs = ("params", "manifest")
        contents = [
            b"\n".join(
                [
                    *(getattr(r, f).encode() for f in texts if getattr(r, f)),
                    *(bytes(getattr(r, f)) for f in blobs if getattr(r, f)),
                ]
            )
            for r in rows
        ]
        names = self._names_in(conn, contents)
        changed = []
        for r, content in zip(rows, contents, strict=True):
            if names and _OLD_ID.search(content):
                row = {"id": r.id}
                for f in texts:
                    value = getattr(r, f)
                    row[f] = _replace(value.encode(), names).decode() if value else value
                for f in blobs:
                    value = getattr(r, f)
                    row[f] = _replace(bytes(value), names) if value else value
                changed.append(row)
        _update_rows(conn, "export_job", {f: f for f in (*texts, *blobs)}, {"id": "id"}, changed)
        return [rows[-1].id], len(rows)

    def _subscriptions(self, conn: Connection, after: list | None) -> tuple[list | None, int]:
        """Subscriptions: a `patient` filter names a Patient by id (in the served Subscription and
        in the `filters` column). Study changes not yet handed on are few and short-lived; their
        filter keys move too (`study_change` is read whole, after the subscriptions)."""
        rows = self._page(conn, "SELECT id, resource, filters FROM subscription WHERE 1 = 1", ("id",), after)
        if not rows:
            changes = conn.execute(text("SELECT id, keys FROM study_change")).all()
            names = self._names_in(conn, [bytes(r.keys) for r in changes])
            moved = [{"id": r.id, "keys": _replace(bytes(r.keys), names)} for r in changes if names]
            _update_rows(conn, "study_change", {"keys": "keys"}, {"id": "id"}, moved)
            return None, 0
        contents = [bytes(r.resource) + b"\n" + bytes(r.filters) for r in rows]
        names = self._names_in(conn, contents)
        changed = [
            {"id": r.id, "resource": _replace(bytes(r.resource), names), "filters": _replace(bytes(r.filters), names)}
            for r, content in zip(rows, contents, strict=True)
            if names and _OLD_ID.search(content)
        ]
        _update_rows(conn, "subscription", {"resource": "resource", "filters": "filters"}, {"id": "id"}, changed)
        return [rows[-1].id], len(rows)

    # ---- helpers

    def _page(self, conn: Connection, select: str, key: tuple[str, ...], after: list | None) -> list:
        """The next batch of rows after `after` in key order (a row-value comparison, which both
        databases run along the primary key)."""
        columns = ", ".join(key)
        where = ""
        params: dict = {"n": self.batch}
        if after is not None:
            marks = ", ".join(f":k{i}" for i in range(len(key)))
            where = f" AND ({columns}) > ({marks})"
            params.update({f"k{i}": value for i, value in enumerate(after)})
        return list(conn.execute(text(f"{select}{where} ORDER BY {columns} LIMIT :n"), params).all())

    def _names_in(
        self,
        conn: Connection,
        contents: list[bytes],
        known: dict[str, str] | None = None,
        pattern: re.Pattern[bytes] = _OLD_ID,
    ) -> dict[str, str]:
        """old id -> new id of every old id these contents name (as `pattern` finds them)."""
        found: set[str] = set()
        for content in contents:
            found.update(m[1].decode() for m in pattern.findall(content))
        names = dict(known or {})
        names.update(self._lookup(conn, [f for f in found if f not in names]))
        return names

    @staticmethod
    def _lookup(conn: Connection, ids: list[str]) -> dict[str, str]:
        if not ids:
            return {}
        rows = conn.execute(
            text("SELECT old_id, new_id FROM patient_rekey WHERE old_id IN :ids").bindparams(
                bindparam("ids", expanding=True)
            ),
            {"ids": sorted(set(ids))},
        )
        return {old: new for old, new in rows}


def _update_rows(conn: Connection, table: str, sets: dict[str, str], match: dict[str, str], rows: list[dict]) -> None:
    """Write each row's values (`sets`: column -> field of the row) into the row of `table` it
    matches on its primary key (`match`: column -> field): a statement a row, sent together
    (psycopg pipelines them), each one an index lookup whatever the table's statistics say. A
    join of the table with the batch's values (UPDATE … FROM) was measured no faster on
    PostgreSQL, and planned as a hash join over the whole table."""
    if rows:
        assign = ", ".join(f"{column} = :{field}" for column, field in sets.items())
        where = " AND ".join(f"{column} = :{field}" for column, field in match.items())
        conn.execute(text(f"UPDATE {table} SET {assign} WHERE {where}"), rows)


def _replace(content: bytes, names: dict[str, str], pattern: re.Pattern[bytes] = _OLD_ID) -> bytes:
    """`content` with each old id `pattern` finds that `names` knows replaced by its new id."""
    if not names or not content:
        return content

    def new(match: re.Match[bytes]) -> bytes:
        old = match[2].decode()
        return match[1] + names[old].encode() if old in names else match[0]

    return pattern.sub(new, content)


def _audit_text(content: bytes) -> bytes:
    """What an event says, the query of an event stored as AuditEvent JSON (earlier releases)
    decoded from its base64."""
    if not content.startswith(b'{"resourceType"'):
        return content
    event = orjson.loads(content)
    queries = [base64.b64decode(e["query"]) for e in event.get("entity", []) if isinstance(e.get("query"), str)]
    return b"\n".join([content, *queries])


def _rekey_audit(content: bytes, names: dict[str, str]) -> bytes:
    if not content.startswith(b'{"resourceType"'):
        return _replace(content, names)
    event = orjson.loads(_replace(content, names))
    for entity in event.get("entity", []):
        if isinstance(entity.get("query"), str):
            query = base64.b64decode(entity["query"])
            entity["query"] = base64.b64encode(_replace(query, names)).decode()
    return orjson.dumps(event)


def _progress(conn: Connection) -> dict | None:
    value = conn.execute(text("SELECT value FROM setting WHERE key = :k"), {"k": PROGRESS_SETTING}).scalar()
    return orjson.loads(value) if value else None


def _save_progress(conn: Connection, state: dict) -> None:
    value = orjson.dumps(state).decode()
    if not conn.execute(
        text("UPDATE setting SET value = :v WHERE key = :k"), {"k": PROGRESS_SETTING, "v": value}
    ).rowcount:
        conn.execute(text("INSERT INTO setting (key, value) VALUES (:k, :v)"), {"k": PROGRESS_SETTING, "v": value})


def _finish(conn: Connection) -> None:
    """The last batch: the store is of the keyed scheme, and the map from old ids goes (it would
    let anyone who reads it reverse the new ids)."""
    conn.execute(text("DELETE FROM setting WHERE key = :k"), {"k": PROGRESS_SETTING})
    conn.execute(text("DELETE FROM patient_rekey"))
    conn.execute(text("DELETE FROM setting WHERE key = :k"), {"k": SCHEME_SETTING})
    conn.execute(text("INSERT INTO setting (key, value) VALUES (:k, :v)"), {"k": SCHEME_SETTING, "v": SCHEME})
