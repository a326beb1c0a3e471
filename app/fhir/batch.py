"""`POST [base]` with a `batch` Bundle (FHIR R4 http 3.1.0.11): its GET entries answered one by
one, as a `batch-response` Bundle in their order.

Each entry is dispatched as the request it stands for, through the whole request path of this
application: the same token (its Authorization header) is checked, the same scope and
compartment rules apply, and the same audit hook records it, so an entry can do and see
exactly what the same GET sent alone could, and leaves the same trail. Each runs in a context
of its own (nothing one entry's request notes is seen by the next). An entry that fails gets
its status and OperationOutcome in `response`; the others are answered all the same. This server
is read-only: an entry of another method gets 405, and a `transaction` (all or nothing, and
for writing) is refused as a whole with 405 and an OperationOutcome.
"""

from __future__ import annotations

import contextlib
from email.utils import parsedate_to_datetime
from http import HTTPStatus
from typing import Any
from urllib.parse import urlsplit

import orjson
from flask import Blueprint, Flask, Response, current_app, request
from werkzeug.test import EnvironBuilder

from app.api.interactions import BATCH, serves
from app.api.outcome import FHIR_JSON
from app.api.state import current_state
from app.errors import FhirError
from app.fhir.routes import _json, check_format

bp = Blueprint("fhir_batch", __name__)

#: entries one batch may hold: each is a request of its own
MAX_ENTRIES = 100
#: headers of the batch request each entry carries, as the client sent them (not Accept: the
#: batch-response is JSON, and so is each entry in it)
_CARRIED = ("Authorization", "Prefer")


@bp.before_request
def _negotiate() -> None:
    check_format()


@bp.post("")
@bp.post("/")
@serves(BATCH)
def batch() -> Response:
    if request.mimetype not in ("application/fhir+json", "application/json"):
        raise FhirError(415, "not-supported", "POST [base] takes a batch Bundle as JSON (application/fhir+json)")
    try:
        bundle = orjson.loads(request.get_data() or b"null")
    except orjson.JSONDecodeError:
        raise FhirError(400, "invalid", "the body is not valid JSON") from None
    if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
        raise FhirError(400, "invalid", "POST [base] takes a Bundle")
    kind = bundle.get("type")
    if kind == "transaction":
        raise FhirError(
            405,
            "not-supported",
            "this server is read-only and does not process transactions; send the GET requests as a batch Bundle",
            headers={"Allow": "POST"},
        )
    if kind != "batch":
        raise FhirError(400, "invalid", f"Bundle.type: {str(kind)[:32]!r} is not processed here; send a batch")
    entries = bundle.get("entry") or []
    if not isinstance(entries, list):
        raise FhirError(400, "invalid", "Bundle.entry: not a list")
    if len(entries) > MAX_ENTRIES:
        raise FhirError(400, "too-costly", f"Bundle.entry: a batch holds at most {MAX_ENTRIES} entries")
    app = current_app._get_current_object()  # type: ignore[attr-defined]  # the proxy's target
    answered = [_answer(app, entry, i) for i, entry in enumerate(entries)]
    return _json(
        orjson.dumps({"resourceType": "Bundle", "type": "batch-response", **({"entry": answered} if answered else {})})
    )


def _error(status: int, code: str, diagnostics: str) -> dict:
    outcome = {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": code, "diagnostics": diagnostics}],
    }
    return {"response": {"status": _status_line(status), "outcome": outcome}}


def _status_line(status: int) -> str:
    try:
        return f"{status} {HTTPStatus(status).phrase}"
    except ValueError:
        return str(status)


def _target(url: object, index: int) -> tuple[str, str] | dict:
    """(path under the base, query) of an entry's request.url, or the error entry refusing it."""
    if not isinstance(url, str) or not url:
        return _error(400, "invalid", f"Bundle.entry[{index}].request.url: missing")
    base = current_state().base_url
    if url.startswith(base + "/"):
        url = url[len(base) + 1 :]
    parts = urlsplit(url)
    if parts.scheme or parts.netloc or parts.fragment:
        return _error(400, "invalid", f"Bundle.entry[{index}].request.url: not a URL relative to this server's base")
    path = parts.path.lstrip("/")
    segments = path.split("/")
    if not path or any(s in ("", ".", "..") for s in segments):
        return _error(400, "invalid", f"Bundle.entry[{index}].request.url: not a resource, search or history URL")
    return path, parts.query


def _answer(app: Flask, entry: object, index: int) -> dict:
    req = entry.get("request") if isinstance(entry, dict) else None
    if not isinstance(req, dict):
        return _error(400, "invalid", f"Bundle.entry[{index}].request: missing")
    method = req.get("method")
    if method != "GET":
        return _error(
            405,
            "not-supported",
            f"Bundle.entry[{index}].request.method: {str(method)[:16]!r}; this server is read-only and answers "
            "GET entries only",
        )
    target = _target(req.get("url"), index)
    if isinstance(target, dict):
        return target
    headers = {name: request.headers[name] for name in _CARRIED if name in request.headers}
    for field, header in (("ifNoneMatch", "If-None-Match"), ("ifModifiedSince", "If-Modified-Since")):
        if isinstance(req.get(field), str):
            headers[header] = req[field]
    return _entry(_dispatch(app, target[0], target[1], headers))


def _dispatch(app: Flask, path: str, query: str, headers: dict[str, str]) -> Response:
    """The entry's GET through the whole request path (token, scopes, the route, audit), in an
    application context of its own: Flask keeps `g` there, and nothing of this request's own
    (its Access, what it served) may reach the entry's, nor the other way round."""
    builder = EnvironBuilder(
        path=f"/fhir/{path}",
        query_string=query,
        method="GET",
        headers=list(headers.items()),
        base_url=request.host_url,
        environ_overrides={"REMOTE_ADDR": request.remote_addr or ""},
    )
    try:
        environ = builder.get_environ()
    finally:
        builder.close()
    with app.app_context(), app.request_context(environ):
        response = app.full_dispatch_request()
        response.direct_passthrough = False  # its body is read below, inside the context that made it
        response.get_data()
        return response


def _entry(response: Response) -> dict:
    out: dict[str, Any] = {"status": _status_line(response.status_code)}
    for header, field in (("ETag", "etag"), ("Location", "location"), ("Content-Location", "location")):
        if header in response.headers and field not in out:
            out[field] = response.headers[header]
    modified = response.headers.get("Last-Modified")
    if modified:
        with contextlib.suppress(TypeError, ValueError):  # a date no route makes: left out
            out["lastModified"] = parsedate_to_datetime(modified).isoformat().replace("+00:00", "Z")
    body = response.get_data()
    entry: dict[str, Any] = {}
    if body and response.mimetype in (FHIR_JSON.split(";")[0], "application/json"):
        if response.status_code < 400:
            entry["resource"] = orjson.Fragment(body)
        else:
            out["outcome"] = orjson.Fragment(body)
    entry["response"] = out
    return entry
