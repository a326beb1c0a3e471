"""Access control around the FHIR API: no token, no data, unless the config says open.

Closed (the default), every data request needs a bearer token, checked against the
authorization server configured in `security` (its JWKS, or token introspection); its scopes
must cover the interaction the route declares (app/api/interactions.py) before any query
runs, and the request's `Access` (who, scopes, patient in context) is set for the Guard and
audit to read via `current_access()`. The Guard (app/security/scope.py), registered on the
request path's hooks, is the one place that says what a scope lets a request see. Without a
validator configured, a closed server answers every data request with 401. The public
interactions (`/fhir/metadata`, `/fhir/.well-known/smart-configuration`, `/health`) need no
token; a token sent to `/health` is checked all the same, since an operator's token shows
the details there (app/security/operators.py), and one that fails is merely not counted.
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING, cast

from flask import Flask, Request, request

from app.api.interactions import HEALTH, current_interaction
from app.api.state import ApiState
from app.errors import FhirError
from app.security import bulk, discovery, limits, subscriptions
from app.security.access import OPEN, set_access
from app.security.authorize import access_from_claims, bearer_token, challenge, enforce, unauthorized
from app.security.operators import is_loopback
from app.security.scope import ScopeGuard
from app.security.tokens import AuthServerUnavailable, InvalidToken, TokenChecker
from app.telemetry import count_token, counting_tokens

if TYPE_CHECKING:
    from werkzeug.local import LocalProxy

    from app.config import Config


class OpenModeRefused(Exception):
    """The config would serve patient data without tokens on a network address."""


def check_open_mode(config: Config, host: str) -> str | None:
    """Refuse (OpenModeRefused) to serve open on a network address unless explicitly allowed;
    return a warning for the log, if any."""
    if not config.security.open:
        if not config.security.checks_tokens:
            return (
                "security: no token validator configured (security.jwks_uri or security.introspection): "
                "every data request gets 401"
            )
        return None
    if not is_loopback(host) and not config.security.allow_open_on_network:
        raise OpenModeRefused(
            f"security.open: refusing to serve patient data without tokens on {host}; bind to 127.0.0.1 "
            "or set security.allow_open_on_network: true"
        )
    return "security.open is true: the FHIR API answers without any token"


def _public(req: Request) -> bool:
    if req.method == "OPTIONS" or req.endpoint is None:
        return True
    interaction = current_interaction()
    return interaction is not None and interaction.public


def init_app(app: Flask, state: ApiState) -> None:
    """Check every request's token before its route runs, and guard what the routes read."""
    config = state.config
    security = config.security
    limits.init_app(app, security)
    discovery.init_app(app, state)
    state.hooks.guard = ScopeGuard()
    state.hooks.bulk_grant = bulk.grant  # who may export what (Bulk Data, SMART Backend Services)
    state.hooks.subscription_grant = subscriptions.grant  # who may subscribe, and to what
    if security.open:
        app.before_request(lambda: set_access(OPEN))
        return

    if not security.checks_tokens:

        @app.before_request
        def _require_token() -> None:
            if _public(request):
                return None
            raise FhirError(
                401,
                "login",
                "this server needs a bearer token and has no token validator configured; "
                "set security.jwks_uri or security.introspection (security.open: true only for "
                "a local demo)",
                headers={"WWW-Authenticate": challenge(security.realm)},
            )

        return

    checker = TokenChecker(security, partial(access_from_claims, security))
    counting_tokens()

    @app.before_request
    def _authorize() -> None:
        # flask types `request` as the Request it stands for, not as the proxy it is
        req = cast("LocalProxy[Request]", request)._get_current_object()
        if _public(req):
            if current_interaction() is HEALTH and "Authorization" in req.headers:
                _operator_token(req)
            return None
        token = bearer_token(req.headers, security.realm)
        try:
            access = checker.check(token)
        except InvalidToken as err:
            count_token(accepted=False)
            raise unauthorized(security.realm, str(err)) from None
        except AuthServerUnavailable as err:
            raise FhirError(503, "transient", f"{err}; try again shortly", headers={"Retry-After": "5"}) from None
        count_token(accepted=True)
        enforce(access, req, security.realm)
        set_access(access)

    def _operator_token(req: Request) -> None:
        """The Access of a token sent where none is needed; none when it does not check out
        (a health check answers whatever its token, only without the details)."""
        try:
            set_access(checker.check(bearer_token(req.headers, security.realm)))
        except (FhirError, InvalidToken, AuthServerUnavailable):
            return
