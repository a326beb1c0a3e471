"""Bundles assembled from stored JSON bytes (orjson.Fragment): no resource is re-parsed."""
from __future__ import annotations

import uuid
from urllib.parse import urlencode

import orjson

from app.search.dates import instant_now_ms


def search_url(base_url: str, rtype: str, params: list[tuple[str, str]]) -> str:
    query = urlencode(params, safe=":|,/")
    return f"{base_url}/{rtype}" + (f"?{query}" if query else "")


def searchset(base_url: str, rtype: str, result, self_url: str, next_url: str | None) -> bytes:
    entries = [
        {"fullUrl": f"{base_url}/{rtype}/{rid}", "resource": orjson.Fragment(content), "search": {"mode": "match"}}
        for rid, content in result.matches
    ]
    entries.extend(
        {"fullUrl": f"{base_url}/{itype}/{iid}", "resource": orjson.Fragment(content), "search": {"mode": "include"}}
        for itype, iid, content in result.includes
    )
    links = [{"relation": "self", "url": self_url}]
    if next_url:
        links.append({"relation": "next", "url": next_url})
    bundle = {
        "resourceType": "Bundle",
        "id": str(uuid.uuid4()),
        "meta": {"lastUpdated": instant_now_ms()[1]},
        "type": "searchset",
    }
    if result.total is not None:
        bundle["total"] = result.total
    bundle["link"] = links
    if entries:
        bundle["entry"] = entries
    return orjson.dumps(bundle)
