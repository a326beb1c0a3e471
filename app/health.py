"""`GET /health`: is the API up, and how fresh is each source's data.

Per configured source: when a sync last succeeded, how many seconds ago that was (the
lag: data changed in the archive since then may not be served yet), when the last full
reconciliation ran, and the last error if it came after the last success. No patient data:
errors name archives and HTTP statuses, never studies or patients. Public, like /metadata,
so a load balancer or monitor can read it without a token.
"""
from __future__ import annotations

import orjson
from flask import Flask, Response

from app.search.dates import instant_now_ms, micros_to_instant


def _instant(micros):
    return micros_to_instant(micros) if micros is not None else None


def source_health(rows: dict[str, tuple], names: list[str], now: int) -> list[dict]:
    out = []
    for name in names:
        last_success, last_full, last_error, last_error_at = rows.get(name, (None, None, None, None))
        failing = last_error_at is not None and (last_success is None or last_error_at > last_success)
        out.append({
            "name": name,
            "status": "never-synced" if last_success is None and not failing else "failing" if failing else "ok",
            "lastSuccess": _instant(last_success),
            "lagSeconds": round((now - last_success) / 1_000_000, 1) if last_success is not None else None,
            "lastFullSync": _instant(last_full),
            "lastError": last_error if failing else None,
            "lastErrorAt": _instant(last_error_at) if failing else None,
        })
    return out


def init_app(app: Flask, config, reader) -> None:
    names = [src.name for src in config.sources]

    @app.get("/health")
    def health():
        rows = {r[0]: r[1:] for r in reader.all(
            "SELECT source, last_success, last_full, last_error, last_error_at FROM source_state")}
        sources = source_health(rows, names, instant_now_ms()[0])
        status = "degraded" if any(s["status"] == "failing" for s in sources) else "ok"
        return Response(orjson.dumps({"status": status, "sources": sources}), content_type="application/json")
