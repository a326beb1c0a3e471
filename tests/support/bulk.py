"""Helpers of the Bulk Data export tests: a client's side of the asynchronous pattern (Bulk Data
Access IG v2.0.0), and what the store holds, read straight from its tables to compare with."""

from __future__ import annotations

import time

import orjson
from sqlalchemy import text

from app.fhir.bulk import EXTENSION

ASYNC = {"Prefer": "respond-async", "Accept": "application/fhir+json"}
BASE = "http://testserver"


def local(url: str) -> str:
    """A URL the server gave, as the test client asks for it."""
    assert url.startswith(BASE), url
    return url[len(BASE) :]


def kickoff(client, url: str, headers: dict | None = None) -> str:
    """Start an export; the status URL (Content-Location), after checking the 202."""
    response = client.get(url, headers={**ASYNC, **(headers or {})})
    assert response.status_code == 202, response.get_data(as_text=True)
    location = response.headers["Content-Location"]
    assert location.startswith(f"{BASE}/fhir/$export-status/")
    return location


def wait(client, location: str, headers: dict | None = None, timeout: float = 60.0):
    """Poll the status URL until it is no longer 202, as a client would; that answer."""
    deadline = time.monotonic() + timeout
    while True:
        response = client.get(local(location), headers={"Accept": "application/json", **(headers or {})})
        if response.status_code != 202:
            return response
        assert response.headers["Retry-After"].isdigit() and response.headers["X-Progress"]
        assert time.monotonic() < deadline, "the export did not finish in time"
        time.sleep(0.05)


def download(client, manifest: dict, headers: dict | None = None) -> dict[str, list[dict]]:
    """Every output file, parsed line by line: type -> resources, in file order; checks each
    file's type, media type and count against the manifest."""
    found: dict[str, list[dict]] = {}
    for item in manifest["output"]:
        response = client.get(local(item["url"]), headers={"Accept": "application/fhir+ndjson", **(headers or {})})
        assert response.status_code == 200, response.get_data(as_text=True)
        assert response.mimetype == "application/fhir+ndjson"
        body = response.get_data()
        response.close()  # the file it streamed
        assert body.endswith(b"\n")
        lines = [orjson.loads(line) for line in body.split(b"\n")[:-1]]
        assert len(lines) == item["count"]
        assert {r["resourceType"] for r in lines} == {item["type"]}
        found.setdefault(item["type"], []).extend(lines)
    return found


def stored(store, rtype: str, where: str = "", params: dict | None = None) -> dict[str, dict]:
    """id -> resource of every stored current `rtype` resource (a condition on its columns, if given)."""
    sql = "SELECT id, content FROM resource WHERE rtype = :rtype" + (f" AND {where}" if where else "")
    with store.engine.connect() as conn:
        rows = conn.execute(text(sql), {"rtype": rtype, **(params or {})}).all()
    return {rid: orjson.loads(bytes(content)) for rid, content in rows}


def worker(app):
    return app.extensions[EXTENSION]
