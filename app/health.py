"""`GET /health`: is the API up, and how fresh is each source's data.

Per configured source: when a sync last succeeded, how many seconds ago that was (the
lag: data changed in the archive since then may not be served yet), when the last full
reconciliation ran, and the last error if it came after the last success. With audit on,
the audit trail's backlog on this host: events spooled but not yet in the store (they are
moved every half second, so an old one means the database refuses them). No patient data:
errors name archives and HTTP statuses, never studies or patients. Public, like /metadata,
so a load balancer or monitor can read it without a token; the last error itself, which
names the archives' internal addresses, only to an operator (the request path's Guard says
who is one: an administrator's token, or a request made on this host).
"""

from __future__ import annotations

from typing import Any

import orjson
from flask import Flask, Response

from app.api.interactions import HEALTH, serves
from app.api.state import ApiState
from app.clock import instant_now_ms, micros_to_instant
from app.store.audit_spool import AuditSpool
from app.store.bookkeeping import health_rows


def _instant(micros: int | None) -> str | None:
    return micros_to_instant(micros) if micros is not None else None


def source_health(rows: dict[str, tuple], names: list[str], now: int, details: bool = True) -> list[dict]:
    """Each source's freshness; `details`: with its last error's text (else without the key)."""
    out = []
    for name in names:
        last_success, last_full, last_error, last_error_at = rows.get(name, (None, None, None, None))
        failing = last_error_at is not None and (last_success is None or last_error_at > last_success)
        out.append(
            {
                "name": name,
                "status": "never-synced" if last_success is None and not failing else "failing" if failing else "ok",
                "lastSuccess": _instant(last_success),
                "lagSeconds": round((now - last_success) / 1_000_000, 1) if last_success is not None else None,
                "lastFullSync": _instant(last_full),
                "lastError": last_error if failing else None,
                "lastErrorAt": _instant(last_error_at) if failing else None,
            }
        )
        if not details:
            del out[-1]["lastError"]
    return out


#: an audit event waiting this long to be stored marks the server degraded
AUDIT_BACKLOG_SECONDS = 60


def audit_health(spool: AuditSpool, now: int) -> dict:
    segments, oldest = spool.backlog()
    age = round((now - oldest) / 1_000_000, 1) if oldest is not None else None
    return {
        "status": "behind" if age is not None and age > AUDIT_BACKLOG_SECONDS else "ok",
        "spooledSegments": segments,
        "oldestSpooledSeconds": age,
    }


def init_app(app: Flask, state: ApiState) -> None:
    names = [src.name for src in state.config.sources]
    reader = state.reader
    audit_log = state.audit_log if state.config.security.audit else None

    @app.get("/health")
    @serves(HEALTH)
    def health() -> Response:
        rows = health_rows(reader)
        now = instant_now_ms()[0]
        details = state.hooks.guard.sees_operations()
        body: dict[str, Any] = {"status": "ok", "sources": source_health(rows, names, now, details)}
        if audit_log is not None:
            body["audit"] = audit_health(audit_log.spool, now)
        if any(s["status"] == "failing" for s in body["sources"]) or body.get("audit", {}).get("status") == "behind":
            body["status"] = "degraded"
        return Response(orjson.dumps(body), content_type="application/json")
