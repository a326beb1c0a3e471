"""The errors a request can end in, as typed exceptions: raised anywhere below the HTTP edge,
rendered as an OperationOutcome in one place (app/fhir/errors.py)."""

from __future__ import annotations


class FhirError(Exception):
    """An error with its HTTP status and OperationOutcome issue code (FHIR R4 IssueType)."""

    def __init__(self, status: int, code: str, diagnostics: str, headers: dict | None = None):
        super().__init__(diagnostics)
        self.status = status
        self.code = code
        self.diagnostics = diagnostics
        self.headers = headers or {}
