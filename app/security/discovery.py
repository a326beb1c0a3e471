"""How apps find the authorization server: `/.well-known/smart-configuration` (SMART App
Launch 2, "Conformance") and the `rest.security` block of the CapabilityStatement.

Both are built from the config once. They state only what is true of this deployment: the
capabilities this resource server itself honours (`permission-v1`, `permission-v2`: both scope
grammars) plus those the configured authorization server offers (`security.capabilities`).
"""

from __future__ import annotations

from typing import Any

import orjson
from flask import Flask, Response

from app.api.interactions import SMART_CONFIGURATION, serves
from app.api.state import ApiState
from app.config import SecurityConfig
from app.errors import FhirError
from app.search.params import RESOURCE_TYPES

OWN_CAPABILITIES = ("permission-v1", "permission-v2")
OAUTH_URIS = "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris"
SECURITY_SERVICE = "http://terminology.hl7.org/CodeSystem/restful-security-service"
#: client authentication each SMART client profile uses at the token endpoint
_AUTH_METHODS = {
    "client-confidential-asymmetric": "private_key_jwt",
    "client-confidential-symmetric": "client_secret_basic",
}


def scopes_supported() -> list[str]:
    """The resource scopes this server honours, in SMART v2 form (v1 `.read` works as well)."""
    scopes = [f"{context}/*.rs" for context in ("patient", "user", "system")]
    scopes += [f"{context}/{rtype}.rs" for context in ("patient", "user", "system") for rtype in RESOURCE_TYPES]
    return scopes


def smart_configuration(security: SecurityConfig) -> dict | None:
    """The discovery document, or None when this server checks no tokens."""
    if not security.checks_tokens:
        return None
    capabilities = sorted(set(security.capabilities) | set(OWN_CAPABILITIES))
    grant_types = list(
        security.grant_types_supported
        or ((["authorization_code"] if security.authorization_endpoint else []) + ["client_credentials"])
    )
    document: dict[str, Any] = {}
    if security.issuer:
        document["issuer"] = security.issuer
    if security.jwks_uri:
        document["jwks_uri"] = security.jwks_uri
    if security.authorization_endpoint:
        document["authorization_endpoint"] = security.authorization_endpoint
        document["response_types_supported"] = ["code"]
    document["token_endpoint"] = security.token_endpoint
    methods = [_AUTH_METHODS[c] for c in capabilities if c in _AUTH_METHODS]
    if methods:
        document["token_endpoint_auth_methods_supported"] = methods
    document["grant_types_supported"] = grant_types
    document["scopes_supported"] = scopes_supported()
    document["code_challenge_methods_supported"] = ["S256"]
    document["capabilities"] = capabilities
    return document


def rest_security(security: SecurityConfig) -> dict:
    """`CapabilityStatement.rest.security`: CORS, the SMART service and its OAuth endpoints."""
    if security.open:
        return {
            "cors": bool(security.cors_origins),
            "description": "Open mode: no token is required (configured with security.open).",
        }
    if not security.checks_tokens:
        return {
            "cors": bool(security.cors_origins),
            "description": "Every request for data needs a bearer token; no token validator is configured, "
            "so this server answers 401 to each.",
        }
    uris = [{"url": "token", "valueUri": security.token_endpoint}]
    if security.authorization_endpoint:
        uris.insert(0, {"url": "authorize", "valueUri": security.authorization_endpoint})
    return {
        "extension": [{"url": OAUTH_URIS, "extension": uris}],
        "cors": bool(security.cors_origins),
        "service": [
            {
                "coding": [{"system": SECURITY_SERVICE, "code": "SMART-on-FHIR", "display": "SMART-on-FHIR"}],
                "text": "OAuth2 bearer tokens using the SMART App Launch profile",
            }
        ],
        "description": (
            "Every request for data needs a bearer token from the authorization server named in "
            "/.well-known/smart-configuration. Scopes: SMART v1 (.read) and v2 (.rs, granular ?param=value) "
            "with patient/, user/ or system/; read needs r, search needs s, also on each type a search "
            "chains into or includes (except _include=ImagingStudy:endpoint). Missing or invalid token: 401; "
            "insufficient scope: 403."
        ),
    }


def init_app(app: Flask, state: ApiState) -> None:
    """Serve the discovery document, and say in the CapabilityStatement what is enforced."""
    config = state.config
    state.rest_security = rest_security(config.security)
    document = smart_configuration(config.security)
    body = orjson.dumps(document) if document is not None else None

    @app.get("/fhir/.well-known/smart-configuration")
    @serves(SMART_CONFIGURATION)
    def smart_configuration_document() -> Response:
        if body is None:
            raise FhirError(
                404,
                "not-found",
                "this server checks no tokens, so it names no authorization server"
                if not config.security.open
                else "this server runs open (security.open): it takes no tokens",
            )
        return Response(body, content_type="application/json")
