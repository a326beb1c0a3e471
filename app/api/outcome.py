"""An error as the OperationOutcome every answer that is not data is (FHIR R4 RESTful API:
"servers SHOULD return an OperationOutcome" with the HTTP error status)."""

from __future__ import annotations

import orjson
from flask import Response

FHIR_JSON = "application/fhir+json; charset=utf-8"


def outcome(code: str, diagnostics: str, severity: str = "error") -> dict:
    return {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": severity, "code": code, "diagnostics": diagnostics}],
    }


def outcome_response(status: int, code: str, diagnostics: str, headers: dict | None = None) -> Response:
    return Response(
        orjson.dumps(outcome(code, diagnostics)), status=status, headers=headers or {}, content_type=FHIR_JSON
    )
