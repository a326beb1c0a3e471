"""Bundles assembled from stored JSON bytes (orjson.Fragment): no resource is re-parsed
unless the client asked for a `_summary` or `_elements` subset."""

from __future__ import annotations

import uuid
from typing import Any
from urllib.parse import urlencode

import orjson

from app.clock import instant_now_ms, micros_to_instant
from app.search.elements import select_elements, summarize
from app.store.history import Version
from app.store.search_sql import SearchResult


def search_url(base_url: str, rtype: str, params: list[tuple[str, str]]) -> str:
    query = urlencode(params, safe=":|,/")
    return f"{base_url}/{rtype}" + (f"?{query}" if query else "")


def subset(content: bytes, summary: str = "false", elements: frozenset[str] | None = None) -> bytes:
    """The stored bytes as they are, or the `_summary` / `_elements` subset a client asked for.

    Only a subset request parses the stored JSON; the plain path never does.
    """
    if elements is not None:
        return orjson.dumps(select_elements(orjson.loads(content), elements))
    if summary in ("true", "text", "data"):
        return orjson.dumps(summarize(orjson.loads(content), summary))
    return content


def _bundle(kind: str, links: list[dict], entries: list[dict], total: int | None = None) -> bytes:
    bundle: dict[str, Any] = {
        "resourceType": "Bundle",
        "id": str(uuid.uuid4()),
        "meta": {"lastUpdated": instant_now_ms()[1]},
        "type": kind,
    }
    if total is not None:
        bundle["total"] = total
    bundle["link"] = links
    if entries:
        bundle["entry"] = entries
    return orjson.dumps(bundle)


def match_bundle(entries: list[dict], self_url: str) -> bytes:
    """The searchset an operation such as `Patient/$match` answers with (entries carry scores)."""
    return _bundle("searchset", [{"relation": "self", "url": self_url}], entries, len(entries))


def searchset(
    base_url: str,
    rtype: str,
    result: SearchResult,
    self_url: str,
    next_url: str | None,
    summary: str = "false",
    elements: frozenset[str] | None = None,
) -> bytes:
    """`_elements` subsets the matches only (it names elements of the searched type);
    `_summary` applies to included resources too."""
    entries = [
        {
            "fullUrl": f"{base_url}/{rtype}/{rid}",
            "resource": orjson.Fragment(subset(content, summary, elements)),
            "search": {"mode": "match"},
        }
        for rid, content in result.matches
    ]
    entries.extend(
        {
            "fullUrl": f"{base_url}/{itype}/{iid}",
            "resource": orjson.Fragment(subset(content, summary)),
            "search": {"mode": "include"},
        }
        for itype, iid, content in result.includes
    )
    links = [{"relation": "self", "url": self_url}]
    if next_url:
        links.append({"relation": "next", "url": next_url})
    return _bundle("searchset", links, entries, result.total)


def _history_entry(base_url: str, v: Version) -> dict:
    """One version as a history entry (FHIR R4 http 3.1.0.12): the resource with the request that
    would have made it; a deletion has request.method DELETE and no resource."""
    response = {"etag": f'W/"{v.version}"', "lastModified": micros_to_instant(v.last_updated)}
    entry: dict[str, Any] = {"fullUrl": f"{base_url}/{v.rtype}/{v.rid}"}
    if v.deleted:
        entry["request"] = {"method": "DELETE", "url": f"{v.rtype}/{v.rid}"}
        entry["response"] = {"status": "204 No Content", **response}
        return entry
    entry["resource"] = orjson.Fragment(v.content)
    if v.version == 1:
        entry["request"] = {"method": "POST", "url": v.rtype}
        entry["response"] = {"status": "201 Created", **response}
    else:
        entry["request"] = {"method": "PUT", "url": f"{v.rtype}/{v.rid}"}
        entry["response"] = {"status": "200 OK", **response}
    return entry


def history(
    base_url: str, versions: list[Version], self_url: str, next_url: str | None, total: int | None = None
) -> bytes:
    """A history Bundle, newest version first as `versions` come."""
    links = [{"relation": "self", "url": self_url}]
    if next_url:
        links.append({"relation": "next", "url": next_url})
    return _bundle("history", links, [_history_entry(base_url, v) for v in versions], total)
