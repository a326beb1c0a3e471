"""What every request handler shares, built once per process by the app factory (app/web.py),
never per request."""

from __future__ import annotations

from flask import current_app

from app.api.hooks import Hooks
from app.config import Config
from app.search.paging import PageTokens
from app.store.audit_log import AuditLog
from app.store.reader import Reader
from app.store.repository import Store

#: where the state hangs on the Flask app (`app.extensions`)
EXTENSION = "imaging-facade"


class ApiState:
    def __init__(self, config: Config, store: Store, audit_log: AuditLog):
        self.config = config
        self.store = store
        #: the read path: plain SQL on one connection per thread (app/store/reader.py)
        self.reader = Reader(store.url, statement_timeout=config.server.statement_timeout)
        self.audit_log = audit_log
        self.base_url = config.server.base_url
        self.page_tokens = PageTokens(config.server.secret or store.settings.paging_secret(), config.server.page_ttl)
        self.hooks = Hooks()
        #: CapabilityStatement.rest.security, as the security room describes what it enforces
        self.rest_security: dict = {}
        #: the CapabilityStatement, serialized once the rooms are in place
        self.capability: bytes = b""


def current_state() -> ApiState:
    return current_app.extensions[EXTENSION]
