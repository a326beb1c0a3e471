"""What happened to an ImagingStudy, for the subscription topics (app/fhir/topics.py), recorded in
the transaction that stores the change (table `study_change`): nothing is lost when a node
stops after the commit, and nothing is recorded for a change that rolled back.

- `available`: the study is new (or served again after it was removed);
- `changed`: a series was added, or its status or its patient changed (other differences, such
  as a description, are no event);
- `removed`: no archive holds the study any more.

Each change keeps what the topics' filters match on (the patient, the identifiers, the
modalities, the Endpoints), of the study before and after the change: a study that moved
from one patient to another is an event for subscribers to either. The API nodes hand each
change to the subscriptions that match it (app/store/subscriptions.py `dispatch`) and delete
it. Without a live subscription nothing is recorded.
"""

from __future__ import annotations

import orjson
from sqlalchemy import text
from sqlalchemy.engine import Connection

from app.clock import instant_now_ms

AVAILABLE, CHANGED, REMOVED = "available", "changed", "removed"
_ANY_LIVE = text("SELECT 1 FROM subscription WHERE status IN ('requested', 'active', 'error') LIMIT 1")
_INSERT = text("INSERT INTO study_change (recorded, kind, study, keys) VALUES (:recorded, :kind, :study, :keys)")


def _series(study: dict) -> set[str]:
    return {s.get("uid", "") for s in study.get("series", [])}


def _subject(study: dict) -> str | None:
    reference = (study.get("subject") or {}).get("reference")
    return reference if isinstance(reference, str) else None


def kind_of(before: dict | None, after: dict | None) -> str | None:
    """The topic event of a study going from `before` to `after` (None: absent), or None."""
    if after is None:
        return REMOVED if before is not None else None
    if before is None:
        return AVAILABLE
    if (
        _series(after) - _series(before)
        or after.get("status") != before.get("status")
        or _subject(after) != _subject(before)
    ):
        return CHANGED
    return None


def _codes(codings: list) -> list[str]:
    """`code` and `system|code` of each Coding, as a token filter matches them."""
    found = []
    for coding in codings:
        if isinstance(coding, dict) and coding.get("code"):
            found.append(coding["code"])
            if coding.get("system"):
                found.append(f"{coding['system']}|{coding['code']}")
    return found


def filter_keys(study: dict) -> dict[str, list[str]]:
    """What the topics' filters match on (app/fhir/topics.py FILTERS): the ids of the patient and
    Endpoints, identifier values (`value` and `system|value`) and modality codes."""
    patient = _subject(study)
    identifiers = []
    for identifier in study.get("identifier", []):
        if isinstance(identifier, dict) and identifier.get("value"):
            identifiers.append(identifier["value"])
            if identifier.get("system"):
                identifiers.append(f"{identifier['system']}|{identifier['value']}")
    modalities = _codes(study.get("modality", []))
    for series in study.get("series", []):
        modalities += _codes([series.get("modality")])
    endpoints = [
        ref["reference"].split("/", 1)[1]
        for ref in study.get("endpoint", [])
        if isinstance(ref, dict) and isinstance(ref.get("reference"), str) and "/" in ref["reference"]
    ]
    return {
        "patient": [patient.split("/", 1)[1]] if patient and "/" in patient else [],
        "identifier": identifiers,
        "modality": modalities,
        "endpoint": endpoints,
    }


def record(conn: Connection, uid: str, before: dict | None, after: dict | None) -> None:
    """Record the study's change in `conn`'s transaction, if it is a topic event."""
    kind = kind_of(before, after)
    if kind is None or conn.execute(_ANY_LIVE).first() is None:  # nobody to tell: nothing to keep
        return
    keys: dict[str, set[str]] = {}
    for study in (before, after):
        if study is not None:
            for name, values in filter_keys(study).items():
                keys.setdefault(name, set()).update(values)
    micros, _ = instant_now_ms()
    content = orjson.dumps({name: sorted(values) for name, values in keys.items()})
    conn.execute(_INSERT, {"recorded": micros, "kind": kind, "study": uid, "keys": content})
