"""The counters every process keeps for Prometheus: requests, token checks, studies synced.

What can be counted where it happens is counted here; what the store already knows (a
source's lag, its quarantine, the identity review queue) is read from it when Prometheus
scrapes (app/metrics.py), so that every host and process reports the same figures.

Under gunicorn each worker is a process of its own: prometheus_client's multiprocess mode
keeps each process's values in files under `PROMETHEUS_MULTIPROC_DIR`, which `serve` sets
before any worker starts, and the scrape adds them up. No label ever carries patient data:
labels are interaction names, resource types, status codes, source names and outcomes.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import Counter, Histogram

#: seconds; a FHIR search answers in milliseconds, an on-demand fetch from an archive in seconds
LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

REQUESTS = Counter(
    "facade_http_requests",
    "Requests answered, by interaction, resource type and HTTP status",
    ["interaction", "type", "status"],
)
LATENCY = Histogram(
    "facade_http_request_duration_seconds",
    "Time to answer a request, by interaction and resource type",
    ["interaction", "type"],
    buckets=LATENCY_BUCKETS,
)
TOKEN_CHECKS = Counter(
    "facade_token_checks",
    "Access tokens checked, by outcome (accepted, or refused with 401)",
    ["outcome"],
)
SYNCED = Counter(
    "facade_sync_studies",
    "Studies a sync or poll handled, by source and outcome (new, updated, unchanged, failed, deleted)",
    ["source", "outcome"],
)
SYNC_RUNS = Counter(
    "facade_sync_runs",
    "Syncs and polls of a source, by result (ok, failed)",
    ["source", "result"],
)

_OUTCOMES = ("new", "updated", "unchanged", "failed", "deleted")


#: (interaction, type, status) -> its request counter and latency histogram: looked up once, since
#: every request counts (the labels are few: interactions, types and statuses the server answers)
_REQUEST_SERIES: dict[tuple[str, str, int], tuple[Any, Any]] = {}


def count_request(interaction: str, rtype: str, status: int, seconds: float) -> None:
    series = _REQUEST_SERIES.get((interaction, rtype, status))
    if series is None:
        series = (REQUESTS.labels(interaction, rtype, str(status)), LATENCY.labels(interaction, rtype))
        _REQUEST_SERIES[(interaction, rtype, status)] = series
    series[0].inc()
    series[1].observe(seconds)


def counting_tokens() -> None:
    """Export both outcomes from the start (at 0), so that a rate of refusals has a first value."""
    TOKEN_CHECKS.labels("accepted")
    TOKEN_CHECKS.labels("refused")


def count_token(accepted: bool) -> None:
    TOKEN_CHECKS.labels("accepted" if accepted else "refused").inc()


def count_run(source: str, counts: dict[str, int], failed: bool) -> None:
    """One sync or poll of `source`: its studies by outcome (`counts`), and whether it failed."""
    for outcome in _OUTCOMES:
        if counts.get(outcome):
            SYNCED.labels(source, outcome).inc(counts[outcome])
    SYNC_RUNS.labels(source, "failed" if failed else "ok").inc()
