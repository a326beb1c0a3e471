"""What a browser may do and how much a request may carry.

CORS (for SMART apps running in a browser) is answered only for the origins listed in
`security.cors_origins`; any other origin gets no CORS header, so its browser blocks the
answer. A request body (POST _search) larger than `security.max_body_bytes` gets 413.
Header size is limited by gunicorn (`limit_request_field_size`, app/server.py), which
answers 431 before the request reaches the app.
"""

from __future__ import annotations

from flask import Flask, Response
from flask_cors import CORS
from werkzeug.exceptions import RequestEntityTooLarge

from app.api.outcome import outcome_response
from app.config import SecurityConfig

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
