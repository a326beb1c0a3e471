"""Resource dict -> search index rows, driven by the parameter registry.

Rows are computed once, when a resource version is stored; a search is then plain SQL over
four narrow tables (token, string, date, reference) and never parses stored JSON.
"""
from __future__ import annotations

import unicodedata
from dataclasses import dataclass, field

from app.search.dates import DateFormatError, date_range
from app.search.params import indexed


@dataclass
class IndexRows:
    tokens: list[tuple[str, str | None, str]] = field(default_factory=list)  # param, system, code
    strings: list[tuple[str, str, str]] = field(default_factory=list)  # param, normalized, original
    dates: list[tuple[str, int, int]] = field(default_factory=list)  # param, low, high
    refs: list[tuple[str, str, str]] = field(default_factory=list)  # param, target type, target id


def normalize(text: str) -> str:
    """Case- and accent-insensitive form used for string search (FHIR R4 search 3.1.1.5.13)."""
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()


def walk(node, path: str):
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


def _tokens(value):
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


def _strings(value):
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


def _reference(value, base_url: str | None):
    ref = value.get("reference") if isinstance(value, dict) else None
    if not ref or ref.startswith("#"):
        return None
    if base_url and ref.startswith(base_url + "/"):
        ref = ref[len(base_url) + 1:]
    parts = ref.split("/")
    if "://" in ref or len(parts) < 2:
        return None
    if len(parts) >= 4 and parts[-2] == "_history":
        parts = parts[:-2]
    return parts[-2], parts[-1]


def index_rows(resource: dict, default_zone: str = "UTC", base_url: str | None = None) -> IndexRows:
    rows = IndexRows()
    for param in indexed(resource["resourceType"]):
        seen: set = set()
        for path in param.paths:
            for value in walk(resource, path):
                if param.type == "token":
                    for system, code in _tokens(value):
                        if system is None and isinstance(value, str):
                            system = param.code_system
                        key = (param.name, system, code)
                        if key not in seen:
                            seen.add(key)
                            rows.tokens.append(key)
                elif param.type == "string":
                    for text in _strings(value):
                        key = (param.name, normalize(text), text)
                        if key not in seen:
                            seen.add(key)
                            rows.strings.append(key)
                elif param.type == "date":
                    try:
                        low, high = date_range(value, default_zone)
                    except (DateFormatError, TypeError):
                        continue
                    rows.dates.append((param.name, low, high))
                elif param.type == "reference":
                    target = _reference(value, base_url)
                    if target and (not param.targets or target[0] in param.targets) and (param.name, *target) not in seen:
                        seen.add((param.name, *target))
                        rows.refs.append((param.name, *target))
    return rows
