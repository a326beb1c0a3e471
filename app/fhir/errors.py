"""Every error leaves the API as an OperationOutcome, rendered in one place."""
from __future__ import annotations

import orjson
from flask import Flask, Response
from werkzeug.exceptions import HTTPException

from app.logsafe import describe

FHIR_JSON = "application/fhir+json; charset=utf-8"

_HTTP_CODES = {400: "invalid", 401: "login", 403: "forbidden", 404: "not-found", 405: "not-supported",
               406: "not-supported", 410: "deleted", 413: "too-costly", 415: "not-supported"}


class FhirError(Exception):
    """An error with its HTTP status and OperationOutcome issue code (FHIR R4 IssueType)."""

    def __init__(self, status: int, code: str, diagnostics: str, headers: dict | None = None):
        super().__init__(diagnostics)
        self.status = status
        self.code = code
        self.diagnostics = diagnostics
        self.headers = headers or {}


def outcome(code: str, diagnostics: str, severity: str = "error") -> dict:
    return {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": severity, "code": code, "diagnostics": diagnostics}],
    }


def outcome_response(status: int, code: str, diagnostics: str, headers: dict | None = None) -> Response:
    return Response(orjson.dumps(outcome(code, diagnostics)), status=status, headers=headers or {},
                    content_type=FHIR_JSON)


def init_app(app: Flask) -> None:
    @app.errorhandler(FhirError)
    def _fhir_error(err: FhirError):
        return outcome_response(err.status, err.code, err.diagnostics, err.headers)

    @app.errorhandler(HTTPException)
    def _http_error(err: HTTPException):
        headers = {}
        if err.code == 405 and err.valid_methods:
            headers["Allow"] = ", ".join(err.valid_methods)
        message = err.description or err.name
        if err.code == 405:
            message = "this server is read-only: only GET (and POST to _search and Patient/$match) are supported"
        return outcome_response(err.code or 500, _HTTP_CODES.get(err.code, "processing"), message, headers)

    @app.errorhandler(Exception)
    def _unexpected(err: Exception):
        app.logger.error("unexpected error while answering a request: %s", describe(err))
        return outcome_response(500, "exception", "internal error; the server log has the details")
