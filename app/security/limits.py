"""What a browser may do and how much a request may carry.

CORS (for SMART apps running in a browser) is answered only for the origins listed in
`security.cors_origins`; any other origin gets no CORS header, so its browser blocks the
answer. A request body (POST _search) larger than `security.max_body_bytes` gets 413.
Header size is limited by gunicorn (`limit_request_field_size`, app/server.py), which
answers 431 before the request reaches the app. A body the WSGI server cannot decode (a
chunked body with a bad chunk size, RFC 9112 §7.1) gets 400.
"""

from __future__ import annotations

from flask import Flask, Response, request
from flask_cors import CORS
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from app.api.outcome import outcome_response
from app.config import SecurityConfig
from app.errors import FhirError

#: headers a SMART app sends and reads across origins
ALLOW_HEADERS = ["Authorization", "Content-Type", "Accept", "Prefer", "If-None-Match", "If-Modified-Since"]
EXPOSE_HEADERS = ["ETag", "Last-Modified", "Location", "WWW-Authenticate", "Retry-After", "Content-Location"]


def init_app(app: Flask, security: SecurityConfig) -> None:
    app.config["MAX_CONTENT_LENGTH"] = security.max_body_bytes

    @app.errorhandler(RequestEntityTooLarge)
    def _too_large(_err: RequestEntityTooLarge) -> Response:
        return outcome_response(
            413,
            "too-costly",
            f"the request body is larger than the {security.max_body_bytes} bytes this server accepts",
        )

    @app.before_request
    def _read_body() -> None:
        """Read a POST's body whole before any route: gunicorn decodes a chunked body while it is
        read, and a malformed one raises its own parser's errors from inside the route."""
        if request.method != "POST":
            return
        try:
            request.get_data(cache=True)  # the routes' request.form and get_data() read this copy
        except HTTPException:
            raise  # too large: 413 above
        except Exception:  # noqa: BLE001 - whatever the WSGI server raises (gunicorn: InvalidChunkSize…)
            raise FhirError(
                400, "invalid", "the request body could not be read: its chunked transfer coding is malformed"
            ) from None

    if security.cors_origins:
        CORS(
            app,
            resources={r"/fhir/*": {"origins": list(security.cors_origins)}},
            allow_headers=ALLOW_HEADERS,
            expose_headers=EXPOSE_HEADERS,
            methods=["GET", "POST", "OPTIONS"],
            supports_credentials=False,
            max_age=600,
        )
