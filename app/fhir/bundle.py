"""Bundles assembled from stored JSON bytes (orjson.Fragment): no resource is re-parsed
unless the client asked for a `_summary` or `_elements` subset."""

from __future__ import annotations

import uuid
from typing import Any
from urllib.parse import urlencode

import orjson

from app.clock import instant_now_ms, micros_to_instant
from app.search.elements import select_elements, summarize
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


def history(base_url: str, rtype: str, rid: str, versions: list[tuple[int, int, bytes]], self_url: str) -> bytes:
    """The instance history, newest version first (FHIR R4 http 3.1.0.12)."""
    entries = [
        {
            "fullUrl": f"{base_url}/{rtype}/{rid}",
            "resource": orjson.Fragment(content),
            "request": {
                "method": "POST" if version == 1 else "PUT",
                "url": rtype if version == 1 else f"{rtype}/{rid}",
            },
            "response": {
                "status": "201 Created" if version == 1 else "200 OK",
                "etag": f'W/"{version}"',
                "lastModified": micros_to_instant(micros),
            },
        }
        for version, micros, content in versions
    ]
    return _bundle("history", [{"relation": "self", "url": self_url}], entries, len(entries))
