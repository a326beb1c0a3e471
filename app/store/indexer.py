"""Resource dict -> search index rows, driven by the parameter registry, and their writing.

Rows are computed once, when a resource version is stored; a search is then plain SQL over
four narrow tables (token, string, date, reference) and never parses stored JSON.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import delete, insert
from sqlalchemy.engine import Connection
from sqlmodel import col

from app.search.dates import DateFormatError, date_range
from app.search.params import SearchParam, indexed
from app.search.references import external_reference
from app.search.text import normalize, phonetic_codes
from app.store import batch
from app.store import tables as t
from app.store.batch import TableRows


@dataclass(frozen=True)
class Indexing:
    """How a store indexes values: dates without a zone are in `zone` (FHIR R4 search: a date
    without one is in the server's zone); references under `base_url` are local ones."""

    zone: str = "UTC"
    base_url: str | None = None


INDEX_TABLES = (t.TokenIndex, t.StringIndex, t.DateIndex, t.ReferenceIndex)


@dataclass
class IndexRows:
    tokens: list[tuple[str, str | None, str]] = field(default_factory=list)  # param, system, code
    strings: list[tuple[str, str, str]] = field(default_factory=list)  # param, normalized, original
    dates: list[tuple[str, int, int]] = field(default_factory=list)  # param, low, high
    refs: list[tuple[str, str, str]] = field(default_factory=list)  # param, target type, target id


#: index rows for modifiers live under the parameter's name with the modifier appended
TEXT, OF_TYPE, IDENTIFIER = ":text", ":of-type", ":identifier"
#: a row saying a reference parameter's element is there, for those that may hold a display
#: name alone (no target to index): `:missing` counts it (FHIR R4 search 3.1.1.5.2)
PRESENT = ":present"


def walk(node: Any, path: str) -> list[Any]:
    """Yield every value at a dotted element path, flattening lists at each step."""
    values = [node]
    for step in path.split("."):
        nxt = []
        for value in values:
            child = value.get(step) if isinstance(value, dict) else None
            if child is None:
                continue
            if isinstance(child, list):
                nxt.extend(child)
            else:
                nxt.append(child)
        values = nxt
    return values


def _tokens(value: Any) -> Iterator[tuple[str | None, str]]:
    if isinstance(value, bool):
        yield None, "true" if value else "false"
    elif isinstance(value, str):
        yield None, value
    elif isinstance(value, dict):
        if "coding" in value or "text" in value and "value" not in value and "code" not in value:
            for coding in value.get("coding", []):
                if coding.get("code") is not None:
                    yield coding.get("system"), coding["code"]
        elif "code" in value:  # Coding
            yield value.get("system"), value["code"]
        elif "value" in value:  # Identifier
            yield value.get("system"), value["value"]


def _token_texts(value: Any) -> Iterator[str]:
    """The text a token's `:text` modifier searches: CodeableConcept.text, Coding.display,
    Identifier.type.text (FHIR R4 search 3.1.1.5.10)."""
    if not isinstance(value, dict):
        return
    if isinstance(value.get("text"), str):
        yield value["text"]
    for coding in value.get("coding", []) if isinstance(value.get("coding"), list) else [value]:
        if isinstance(coding.get("display"), str):
            yield coding["display"]
    kind = value.get("type")
    if "value" in value and isinstance(kind, dict) and isinstance(kind.get("text"), str):
        yield kind["text"]


def _identifier_types(value: Any) -> Iterator[tuple[str | None, str]]:
    """(type system, type code) of an Identifier, for `:of-type`."""
    kind = value.get("type") if isinstance(value, dict) else None
    if isinstance(kind, dict) and value.get("value") is not None:
        for coding in kind.get("coding", []):
            if coding.get("code") is not None:
                yield coding.get("system"), coding["code"]


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):  # HumanName (or Address): every string part
        for key in ("text", "family"):
            if isinstance(value.get(key), str):
                yield value[key]
        for key in ("given", "prefix", "suffix"):
            for part in value.get(key, []) or []:
                if isinstance(part, str):
                    yield part


def _reference(value: Any, base_url: str | None) -> tuple[str, str] | None:
    ref = value.get("reference") if isinstance(value, dict) else None
    if not ref or ref.startswith("#"):
        return None
    if base_url and ref.startswith(base_url + "/"):
        ref = ref[len(base_url) + 1 :]
    if "://" in ref:
        return external_reference(ref)
    parts = ref.split("/")
    if len(parts) < 2:
        return None
    if len(parts) >= 4 and parts[-2] == "_history":
        parts = parts[:-2]
    return parts[-2], parts[-1]


def _may_target(param: SearchParam, target: tuple[str, str] | None, value: dict) -> bool:
    """Whether a reference can point at one of the parameter's types, judged by its literal
    reference or its `type` (`patient:identifier` must not match a Group subject)."""
    if not param.targets:
        return True
    kind = target[0] if target else (value.get("type") or "").rsplit("/", 1)[-1] or None
    return kind is None or kind in param.targets


class _Collector:
    """Index rows of one resource, each distinct row once."""

    def __init__(self) -> None:
        self.rows = IndexRows()
        self._seen: set = set()

    def _add(self, table: list, row: tuple) -> None:
        if (id(table), row) not in self._seen:
            self._seen.add((id(table), row))
            table.append(row)

    def token(self, param: str, system: str | None, code: str) -> None:
        self._add(self.rows.tokens, (param, system, code))

    def string(self, param: str, text: str, norm: str | None = None) -> None:
        self._add(self.rows.strings, (param, normalize(text) if norm is None else norm, text))

    def date(self, param: str, low: int, high: int) -> None:
        self._add(self.rows.dates, (param, low, high))

    def ref(self, param: str, target_type: str, target_id: str) -> None:
        self._add(self.rows.refs, (param, target_type, target_id))


def index_rows(resource: dict, default_zone: str = "UTC", base_url: str | None = None) -> IndexRows:
    out = _Collector()
    for param in indexed(resource["resourceType"]):
        name = param.name
        for path in param.paths:
            for value in walk(resource, path):
                if param.matcher == "phonetic":
                    for text in _strings(value):
                        for code in phonetic_codes(text):
                            out.string(name, code, code)
                elif param.type == "token":
                    for system, code in _tokens(value):
                        if system is None and isinstance(value, str):
                            system = param.code_system
                        out.token(name, system, code)
                    for text in _token_texts(value):
                        out.string(name + TEXT, text)
                    if param.identifiers:
                        for system, code in _identifier_types(value):
                            out.token(name + OF_TYPE, system, f"{code}|{value['value']}")
                elif param.type == "string":
                    for text in _strings(value):
                        out.string(name, text)
                elif param.type == "date":
                    try:
                        low, high = date_range(value, default_zone)
                    except (DateFormatError, TypeError):
                        continue
                    out.date(name, low, high)
                elif param.type == "reference":
                    target = _reference(value, base_url)
                    if target and (not param.targets or target[0] in param.targets):
                        out.ref(name, *target)
                    ident = value.get("identifier") if isinstance(value, dict) else None
                    if isinstance(ident, dict) and ident.get("value") is not None and _may_target(param, target, value):
                        out.token(name + IDENTIFIER, ident.get("system"), ident["value"])
                    if param.bare_display:
                        out.string(name + PRESENT, "", "")
    return out.rows


def index_values(body: dict, indexing: Indexing) -> list[TableRows]:
    """The index rows of a resource, per table, as column -> value dicts."""
    rows = index_rows(body, indexing.zone, indexing.base_url)
    owner = {"rtype": body["resourceType"], "rid": body["id"]}
    return [
        (table, values)
        for table, values in (
            (t.TokenIndex, [dict(owner, param=p, system=s, code=c) for p, s, c in rows.tokens]),
            (t.StringIndex, [dict(owner, param=p, norm=n, value=v) for p, n, v in rows.strings]),
            (t.DateIndex, [dict(owner, param=p, low=lo, high=hi) for p, lo, hi in rows.dates]),
            (t.ReferenceIndex, [dict(owner, param=p, target_type=tt, target_id=ti) for p, tt, ti in rows.refs]),
        )
        if values
    ]


def write_index(conn: Connection, body: dict, indexing: Indexing) -> None:
    """Index a stored resource; inside a batch the rows wait for its end (app/store/batch.py)."""
    pending = batch.pending(conn)
    if pending is not None:
        pending[(body["resourceType"], body["id"])] = index_values(body, indexing)
        return
    for table, values in index_values(body, indexing):
        conn.execute(insert(table), values)


def drop_index(conn: Connection, rtype: str, rid: str) -> None:
    """A resource's index rows go (it changed, or left the store)."""
    for table in INDEX_TABLES:
        conn.execute(delete(table).where(col(table.rtype) == rtype, col(table.rid) == rid))
    pending = batch.pending(conn)
    if pending is not None:
        pending.pop((rtype, rid), None)
