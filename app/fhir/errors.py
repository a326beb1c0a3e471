"""Every error leaves the API as an OperationOutcome, rendered in one place: the typed errors
raised below (app/errors.py), Werkzeug's HTTP errors, and anything unexpected (500, logged
without its message, which may quote what was being processed). Nothing is redirected."""

from __future__ import annotations

import logging

from flask import Flask, Response, request
from werkzeug.exceptions import HTTPException, MethodNotAllowed
from werkzeug.routing import RequestRedirect

from app.api.outcome import outcome_response
from app.errors import FhirError
from app.logsafe import describe

log = logging.getLogger(__name__)

_HTTP_CODES: dict[int | None, str] = {
    400: "invalid",
    401: "login",
    403: "forbidden",
    404: "not-found",
    405: "not-supported",
    406: "not-supported",
    410: "deleted",
    413: "too-costly",
    415: "not-supported",
}


def init_app(app: Flask) -> None:
    @app.before_request
    def _no_redirects() -> None:
        """A path the router would tidy (`//` merged, a slash added) is not found rather than
        redirected: the redirect's address is built from the request's `Host` header, which
        is the client's word, and would send a client wherever a forged header said."""
        if isinstance(request.routing_exception, RequestRedirect):
            raise FhirError(404, "not-found", "nothing is served at this path (check its slashes)")

    @app.errorhandler(FhirError)
    def _fhir_error(err: FhirError) -> Response:
        return outcome_response(err.status, err.code, err.diagnostics, err.headers)

    @app.errorhandler(HTTPException)
    def _http_error(err: HTTPException) -> Response:
        headers = {}
        if isinstance(err, MethodNotAllowed) and err.valid_methods:
            headers["Allow"] = ", ".join(err.valid_methods)
        message = err.description or err.name
        if err.code == 405:
            message = "this server is read-only: only GET (and POST to _search and Patient/$match) are supported"
        return outcome_response(err.code or 500, _HTTP_CODES.get(err.code, "processing"), message, headers)

    @app.errorhandler(Exception)
    def _unexpected(err: Exception) -> Response:
        log.error("unexpected error while answering a request: %s", describe(err))
        return outcome_response(500, "exception", "internal error; the server log has the details")
