"""Each request's id, its one log line and its count: route, status and time taken, never its
content.

The line names the route as written in the code (`/fhir/<rtype>/<rid>`), not the URL asked
for: URLs carry search values (names, identifiers) that must not reach a log. With it the
operator finds slow and failing requests; the id ties the line to the caller's own logs and to
any line logged while the request was served (app/logs.py).
"""

from __future__ import annotations

import logging
import time

from flask import Flask, Response, g, request

from app.api.interactions import current_interaction
from app.logs import REQUEST_ID, request_id_from
from app.search.params import RESOURCE_TYPES
from app.telemetry import count_request

log = logging.getLogger("imaging_facade.request")
#: the resource types a request's metrics are labelled with; any other path segment is "-"
LABELLED_TYPES = frozenset((*RESOURCE_TYPES, "AuditEvent"))
HEADER = "X-Request-ID"


def init_app(app: Flask) -> None:
    @app.before_request
    def _begin() -> None:
        g.request_id = request_id_from(request.headers.get(HEADER))
        g.request_token = REQUEST_ID.set(g.request_id)
        g.request_started = time.perf_counter()

    @app.after_request
    def _end(response: Response) -> Response:
        request_id = g.get("request_id")
        if request_id is None:  # a request refused before the hooks ran
            return response
        response.headers[HEADER] = request_id
        rule = request.url_rule
        seconds = time.perf_counter() - g.request_started
        interaction = current_interaction()
        rtype = (request.view_args or {}).get("rtype")
        rtype = rtype if rtype in LABELLED_TYPES else "-"  # a label never takes what a client typed
        name = interaction.name if interaction else request.endpoint or "-"
        count_request(name, rtype, response.status_code, seconds)
        if not log.isEnabledFor(logging.INFO):  # the line's fields are not worth building for nobody
            return response
        log.info(
            "%s %s %d",
            request.method,
            rule.rule if rule is not None else "(no route)",
            response.status_code,
            extra={
                "method": request.method,
                "route": rule.rule if rule is not None else None,
                "type": None if rtype == "-" else rtype,
                "status": response.status_code,
                "duration_ms": round(seconds * 1000, 2),
            },
        )
        return response

    @app.teardown_request
    def _forget(_exc: BaseException | None) -> None:
        token = g.pop("request_token", None)
        if token is not None:
            REQUEST_ID.reset(token)
