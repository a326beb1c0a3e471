"""The Flask application factory: it owns the state every request shares and wires each room in.

The routes (fhir, wado, admin, health) never call security, audit or on-demand: those plug
into the request path here, through Flask's before/after-request hooks and the hooks of
app/api/hooks.py, in their own init_app.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import orjson
from flask import Flask, Response, request
from flask_compress import Compress
from werkzeug.middleware.proxy_fix import ProxyFix

from app import health, security
from app.admin import identity as admin_identity
from app.api import request_log
from app.api.state import EXTENSION, ApiState
from app.config import Config
from app.fhir import definitions, errors, formats, routes
from app.fhir.capability import capability_statement
from app.security import audit
from app.store.audit_log import AuditLog
from app.store.repository import Store
from app.sync import ondemand
from app.wado import gateway


class _Flask(Flask):
    """Flask, asking once per function whether it is a coroutine: Flask asks on every call of
    every hook and view (a dozen per request), and the answer never changes."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._sync: dict[Callable[..., Any], Callable[..., Any]] = {}

    def ensure_sync(self, func: Callable[..., Any]) -> Callable[..., Any]:
        known = self._sync.get(func)
        if known is None:
            known = super().ensure_sync(func)
            if len(self._sync) < 1000:  # the app's registered functions; never one per request
                self._sync[func] = known
        return known


def create_app(config: Config, store: Store | None = None) -> Flask:
    # no `static/` folder served from wherever the server happens to run
    app = _Flask("imaging-facade", static_folder=None)
    # Werkzeug would answer `//` in a path with a redirect to the merged path on the request's
    # own Host header, sending a client wherever that header says; such paths are not found
    app.url_map.merge_slashes = False
    store = store or Store.from_config(config)
    spool = config.security.audit_spool
    assert spool is not None  # load_config places the spool (app/config.py _audit_spool)
    state = app.extensions[EXTENSION] = ApiState(config, store, AuditLog(store.url, spool))
    request_log.init_app(app)  # first: every later hook's log lines carry the request's id
    formats.init_choice(app, config.security.max_body_bytes)  # JSON or XML, before anything may refuse
    errors.init_app(app)
    security.init_app(app, state)  # tokens and scopes before the routes; the Guard on every read
    audit.init_app(app, state)  # one AuditEvent per answered request
    ondemand.init_app(state.hooks, config.sources, store, state.reader)  # archives asked before a search
    routes.init_app(app, state)
    definitions.init_app(app, state.base_url)
    gateway.init_app(app, state)
    health.init_app(app, state)
    admin_identity.init_app(app, state)
    released = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    state.capability = orjson.dumps(capability_statement(state.base_url, released, state.rest_security))
    _compress(app)
    formats.init_render(app)  # registered after compression, so it runs before it
    if config.server.tls is not None and config.server.tls.hsts_max_age:
        _strict_transport(app, config.server.tls.hsts_max_age)
    if config.server.trusted_proxies:
        # X-Forwarded-For from exactly that many proxies; a client cannot forge its address past them
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=config.server.trusted_proxies)  # type: ignore[method-assign]
    return app


def _strict_transport(app: Flask, max_age: int) -> None:
    """Tell browsers (a SMART app's, an operator's) to use HTTPS only, from then on (RFC 6797;
    sent over HTTPS only, as §7.2 requires)."""
    value = f"max-age={max_age}"

    @app.after_request
    def _hsts(response: Response) -> Response:
        if request.is_secure:
            response.headers["Strict-Transport-Security"] = value
        return response


def _compress(app: Flask) -> None:
    """gzip (or deflate) when the client sends Accept-Encoding; Bundles of JSON shrink ~10x."""
    app.config.update(
        COMPRESS_MIMETYPES=["application/fhir+json", "application/json"],
        COMPRESS_ALGORITHM=["gzip", "deflate"],
        COMPRESS_LEVEL=5,
        COMPRESS_MIN_SIZE=1024,
    )
    Compress(app)
