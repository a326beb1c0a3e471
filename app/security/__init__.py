"""Access control around the FHIR API: no token, no data, unless the config says open.

Token validation (SMART on FHIR) plugs in here; until a token validator is configured a
closed server answers every data request with 401, and only the CapabilityStatement is public.
"""
from __future__ import annotations

import ipaddress

from flask import Flask, request

from app.fhir.errors import FhirError
from app.security.access import OPEN, set_access

PUBLIC_ENDPOINTS = {"fhir.metadata", "health"}


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_open_mode(config, host: str) -> str | None:
    """Refuse to serve open on a network address unless explicitly allowed; return a warning."""
    if not config.security.open:
        return None
    if not is_loopback(host) and not config.security.allow_open_on_network:
        raise SystemExit(
            f"security.open: refusing to serve patient data without tokens on {host}; bind to 127.0.0.1 "
            "or set security.allow_open_on_network: true"
        )
    return "security.open is true: the FHIR API answers without any token"


def init_app(app: Flask, config) -> None:
    if config.security.open:
        app.before_request(lambda: set_access(OPEN))
        return

    @app.before_request
    def _require_token():
        if request.endpoint in PUBLIC_ENDPOINTS or request.endpoint is None:
            return None
        raise FhirError(
            401, "login", "this server needs a bearer token and has no token validator configured; "
                          "set security.open: true only for a local demo",
            headers={"WWW-Authenticate": 'Bearer realm="imaging-facade"'},
        )
