"""A WADO-RS gateway: images only for studies the access token may see (`server.wado_gateway`).

Apps follow `ImagingStudy.endpoint` to the images. With the gateway on, each source's
Endpoint points at `<gateway>/<source>` instead of the archive, and the Endpoint says
`requires-access-token: true` (SMART Imaging Access): the app presents the same token it
searched with. The gateway applies the same scopes and compartment as a read of the
ImagingStudy (404 outside them, 403 without an ImagingStudy scope), then forwards the
request to the archive that holds the study, with the archive's own credentials and TLS keys (none of the
app's: neither its Authorization header nor a token it put in the query string), and
streams the answer back as it arrives (status, Content-Type with its multipart boundary,
and the bytes unchanged), never holding a study in memory.

Paths (PS3.18 WADO-RS, under the gateway): `studies/{study}`, `…/metadata`,
`…/series/{series}`, `…/series/{series}/metadata`, `…/instances/{instance}`,
`…/instances/{instance}/metadata`, `…/instances/{instance}/frames/{frames}`.
`/wado-rs/studies/…` (without a source) uses the first archive that holds the study.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator

import orjson
import requests
from flask import Blueprint, Flask, Response, request, stream_with_context

from app.api.hooks import note_served
from app.api.interactions import IMAGES, serves
from app.api.state import ApiState, current_state
from app.errors import FhirError
from app.ids import valid_id
from app.sources.https import mount_tls
from app.sources.settings import SourceSettings
from app.sources.tls import TlsSettings, tls_reason
from app.store.audit_record import is_credential
from app.store.resources import read_current
from app.store.studies import holders_of

log = logging.getLogger(__name__)
bp = Blueprint("wado", __name__)
CHUNK = 64 * 1024
#: request headers passed on to the archive (content negotiation); never the app's token
FORWARDED_REQUEST = ("Accept", "Accept-Charset")
#: response headers passed back to the app
FORWARDED_RESPONSE = (
    "Content-Type",
    "Content-Length",
    "Content-Encoding",
    "Content-Location",
    "ETag",
    "Last-Modified",
    "Warning",
)
#: one session per set of TLS keys (a source's `tls`; None: none), made on first use
_sessions: dict[TlsSettings | None, requests.Session] = {}
_sessions_lock = threading.Lock()


def _session_for(tls: TlsSettings | None) -> requests.Session:
    """The session whose https:// requests carry these keys (sessions are reused across requests
    for their connection pools)."""
    with _sessions_lock:
        session = _sessions.get(tls)
        if session is None:
            session = _sessions[tls] = mount_tls(requests.Session(), tls)
        return session


def _source(name: str | None, study: str) -> SourceSettings:
    """The configured source to ask for `study`: the named one if it holds the study, else
    the first that holds it and has a WADO-RS URL."""
    state = current_state()
    holders = holders_of(state.reader, study)
    by_name = {src.name: src for src in state.config.sources if src.wado_url}
    candidates = [h for h in holders if h in by_name and (name is None or h == name)]
    if not candidates:
        raise FhirError(
            404,
            "not-found",
            f"no archive reachable through this gateway holds study {study}" + (f" as source {name}" if name else ""),
        )
    return by_name[candidates[0]]


def _forward(
    source_name: str | None, study: str, rest: str, check_parts: Callable[[], None] = lambda: None
) -> Response:
    if not valid_id(study):
        raise FhirError(404, "not-found", "not a valid Study Instance UID")
    current_state().hooks.guard.before_read("ImagingStudy", study)
    check_parts()
    note_served([("ImagingStudy", study)])
    src = _source(source_name, study)
    url = f"{src.wado_url}/studies/{study}{rest}"
    headers = {h: request.headers[h] for h in FORWARDED_REQUEST if h in request.headers}
    headers["Accept-Encoding"] = "identity"
    headers.update(src.wado_credentials.headers())
    try:
        upstream = _session_for(src.wado_tls).get(
            url,
            # each name's first value; never a credential of the app's (RFC 6750 2.3 access_token…)
            params={name: value for name, value in request.args.items() if not is_credential(name, value)},
            headers=headers,
            auth=src.wado_credentials.auth(),
            stream=True,
            timeout=src.wado_timeout,
        )
    except requests.Timeout:
        raise FhirError(504, "timeout", f"archive {src.name} did not answer in time") from None
    except requests.RequestException as exc:
        # the reason for the operator (a certificate problem says which); the app learns only that
        # the archive could not be reached
        log.warning(
            "WADO-RS gateway: archive %s could not be reached: %s",
            src.name,
            tls_reason(exc, client_cert=bool(src.wado_tls and src.wado_tls.certfile)) or type(exc).__name__,
        )
        raise FhirError(502, "transient", f"archive {src.name} could not be reached") from None

    def body() -> Iterator[bytes]:
        try:
            yield from upstream.raw.stream(CHUNK, decode_content=False)
        finally:
            upstream.close()

    passed = {h: upstream.headers[h] for h in FORWARDED_RESPONSE if h in upstream.headers}
    response = Response(
        stream_with_context(body()), status=upstream.status_code, headers=passed, direct_passthrough=True
    )
    if "Content-Type" not in passed:
        del response.headers["Content-Type"]
    return response


_PATHS = {
    "study": ("/studies/<study>", ""),
    "study_metadata": ("/studies/<study>/metadata", "/metadata"),
    "series": ("/studies/<study>/series/<series>", "/series/{series}"),
    "series_metadata": ("/studies/<study>/series/<series>/metadata", "/series/{series}/metadata"),
    "instance": ("/studies/<study>/series/<series>/instances/<instance>", "/series/{series}/instances/{instance}"),
    "instance_metadata": (
        "/studies/<study>/series/<series>/instances/<instance>/metadata",
        "/series/{series}/instances/{instance}/metadata",
    ),
    "frames": (
        "/studies/<study>/series/<series>/instances/<instance>/frames/<frames>",
        "/series/{series}/instances/{instance}/frames/{frames}",
    ),
}


def _check_parts(study: str, series: str | None, instance: str | None) -> None:
    """The series (and instance) must be the study's, as its ImagingStudy lists them.

    Access is decided on the study; an archive that did not check the hierarchy itself
    would otherwise hand out another patient's series named under an allowed study.
    """
    if series is None:
        return
    found = read_current(current_state().reader, "ImagingStudy", study)
    listed = orjson.loads(found[2]).get("series", []) if found else []
    match = next((s for s in listed if s.get("uid") == series), None)
    if match is None or (instance is not None and not any(i.get("uid") == instance for i in match.get("instance", []))):
        raise FhirError(404, "not-found", "no such series or instance in this study")


def _route(name: str, rule: str, rest: str) -> None:
    def handler(study: str, source: str | None = None, **parts: str) -> Response:
        for value in parts.values():
            if not all(c in "0123456789.," for c in value) or len(value) > 1024:
                raise FhirError(404, "not-found", "not a valid UID or frame list")
        response = _forward(
            source, study, rest.format(**parts), lambda: _check_parts(study, parts.get("series"), parts.get("instance"))
        )
        return response

    view = serves(IMAGES)(handler)
    bp.add_url_rule(rule, f"{name}", view, methods=["GET"])
    bp.add_url_rule(f"/<source>{rule}", f"{name}_of_source", view, methods=["GET"])


for _name, (_rule, _rest) in _PATHS.items():
    _route(_name, _rule, _rest)


def init_app(app: Flask, state: ApiState) -> None:
    if state.config.server.wado_gateway:
        app.register_blueprint(bp, url_prefix="/wado-rs")
