"""The Flask application factory: each module registers its own part."""
from __future__ import annotations

from flask import Flask
from flask_compress import Compress
from werkzeug.middleware.proxy_fix import ProxyFix

from app import health, security
from app.admin import identity as admin_identity
from app.config import Config
from app.fhir import errors
from app.fhir.routes import ApiState, bp as fhir_bp
from app.security import audit, audit_search, gateway
from app.store.repository import Store


def create_app(config: Config, store: Store | None = None) -> Flask:
    app = Flask("imaging-facade")
    store = store or Store.from_config(config)
    state = app.extensions["imaging-facade"] = ApiState(config, store)
    errors.init_app(app)
    security.init_app(app, config)
    audit_search.init_app(app)
    app.register_blueprint(fhir_bp, url_prefix="/fhir")
    gateway.init_app(app, config)
    if config.security.audit:
        audit.init_app(app)
    health.init_app(app, config, state.reader, state.audit_log if config.security.audit else None)
    admin_identity.init_app(app)
    _compress(app)
    if config.server.trusted_proxies:
        # X-Forwarded-For from exactly that many proxies; a client cannot forge its address past them
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=config.server.trusted_proxies)
    return app


def _compress(app: Flask) -> None:
    """gzip (or deflate) when the client sends Accept-Encoding; Bundles of JSON shrink ~10x."""
    app.config.update(
        COMPRESS_MIMETYPES=["application/fhir+json", "application/json"],
        COMPRESS_ALGORITHM=["gzip", "deflate"],
        COMPRESS_LEVEL=5,
        COMPRESS_MIN_SIZE=1024,
    )
    Compress(app)
