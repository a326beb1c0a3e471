"""`GET /metrics` in the Prometheus text format, on a port of its own (`metrics.port`).

A port of its own, bound to loopback unless configured otherwise, keeps the figures of the
service out of the FHIR API's security model: Prometheus scrapes without a SMART token, and
the network (or the host's firewall) decides who may. The figures are the counters every
process keeps (app/telemetry.py, added up across gunicorn's workers by prometheus_client's
multiprocess mode) and what the store knows when the scrape comes, read with one short
connection: each source's freshness, studies held and quarantined, the identity review queue,
the Bulk Data export jobs by status, and this host's audit backlog. Source names are labels; nothing about a patient is.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from sqlalchemy import create_engine, text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import NullPool

from app.clock import instant_now_ms
from app.config import Config
from app.logsafe import describe
from app.store.audit_spool import AuditSpool
from app.store.export_jobs import CANCELLED, DONE, FAILED, QUEUED, RUNNING

log = logging.getLogger(__name__)
#: prometheus_client reads this when it is imported: `serve` sets it before anything imports it
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
#: the states of an export job, each a series even when no job is in it
EXPORT_STATUSES = (QUEUED, RUNNING, DONE, FAILED, CANCELLED)


class StoreCollector(Collector):
    """What the store says at scrape time, for every configured source."""

    def __init__(self, config: Config):
        self.names = [src.name for src in config.sources]
        self.engine = create_engine(config.store, poolclass=NullPool)  # no connection kept between scrapes
        spool = config.security.audit_spool
        self.spool = AuditSpool(spool, config.store, _never) if spool and config.security.audit else None

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("facade_store_up", "Whether the store answered this scrape (1) or not (0)")
        try:
            rows = self._read()
        except SQLAlchemyError as exc:
            log.warning("metrics: the store did not answer: %s", describe(exc))
            up.add_metric([], 0)
            yield up
            yield from self._audit()
            return
        up.add_metric([], 1)
        yield up
        state, held, quarantined, review, exports = rows
        yield from self._sources(state, held, quarantined, review)
        yield from self._exports(exports)
        yield from self._audit()

    def _read(self) -> tuple[dict[str, tuple], dict[str, int], dict[str, int], int, dict[str, int]]:
        with self.engine.connect() as conn:
            state = {
                r[0]: tuple(r[1:])
                for r in conn.execute(text("SELECT source, last_success, last_full, last_error_at FROM source_state"))
            }
            held: dict[str, int] = {
                r[0]: r[1] for r in conn.execute(text("SELECT source, count(*) FROM study_copy GROUP BY source"))
            }
            quarantined: dict[str, int] = {
                r[0]: r[1] for r in conn.execute(text("SELECT source, count(*) FROM quarantine GROUP BY source"))
            }
            review = conn.execute(text("SELECT count(*) FROM patient_link WHERE status = 'review'")).scalar_one()
            exports: dict[str, int] = {
                r[0]: r[1] for r in conn.execute(text("SELECT status, count(*) FROM export_job GROUP BY status"))
            }
        return state, held, quarantined, review, exports

    def _sources(
        self, state: dict[str, tuple], held: dict[str, int], quarantined: dict[str, int], review: int
    ) -> Iterator[Metric]:
        now = instant_now_ms()[0]
        success = GaugeMetricFamily(
            "facade_source_last_success_timestamp_seconds",
            "When a sync or poll of the source last succeeded",
            labels=["source"],
        )
        lag = GaugeMetricFamily(
            "facade_source_lag_seconds",
            "Seconds since the last successful sync or poll: archive changes since then may not be served yet",
            labels=["source"],
        )
        full = GaugeMetricFamily(
            "facade_source_last_full_sync_timestamp_seconds",
            "When a full sync of the source last completed",
            labels=["source"],
        )
        failing = GaugeMetricFamily(
            "facade_source_failing", "1 when the source's last attempt failed after its last success", labels=["source"]
        )
        studies = GaugeMetricFamily("facade_source_studies", "Studies of the source in the store", labels=["source"])
        held_back = GaugeMetricFamily(
            "facade_source_quarantined_studies",
            "Studies of the source a sync could not map (quarantine)",
            labels=["source"],
        )
        for name in self.names:
            last_success, last_full, last_error_at = state.get(name, (None, None, None))
            if last_success is not None:
                success.add_metric([name], last_success / 1e6)
                lag.add_metric([name], (now - last_success) / 1e6)
            if last_full is not None:
                full.add_metric([name], last_full / 1e6)
            bad = last_error_at is not None and (last_success is None or last_error_at > last_success)
            failing.add_metric([name], 1 if bad else 0)
            studies.add_metric([name], held.get(name, 0))
            held_back.add_metric([name], quarantined.get(name, 0))
        queue = GaugeMetricFamily("facade_identity_review_queue", "Pairs of Patient records waiting for review")
        queue.add_metric([], review)
        yield from (success, lag, full, failing, studies, held_back, queue)

    def _exports(self, exports: dict[str, int]) -> Iterator[Metric]:
        jobs = GaugeMetricFamily(
            "facade_export_jobs",
            "Bulk Data export jobs kept in the store, by status (queued, running, done, failed, cancelled)",
            labels=["status"],
        )
        for status in EXPORT_STATUSES:
            jobs.add_metric([status], exports.get(status, 0))
        yield jobs

    def _audit(self) -> Iterator[Metric]:
        if self.spool is None:
            return
        segments, oldest = self.spool.backlog()
        spooled = GaugeMetricFamily(
            "facade_audit_spooled_segments", "Audit spool segments on this host not yet moved into the store"
        )
        spooled.add_metric([], segments)
        age = GaugeMetricFamily(
            "facade_audit_oldest_spooled_seconds", "Age of the oldest audit event on this host not yet in the store"
        )
        age.add_metric([], (instant_now_ms()[0] - oldest) / 1e6 if oldest is not None else 0)
        yield from (spooled, age)


def _never(_events: Any, _may_exist: bool) -> None:
    raise RuntimeError("the metrics only read the audit spool's backlog")  # pragma: no cover


def registry(config: Config) -> CollectorRegistry:
    """The counters of every process sharing this server's multiprocess directory (or of this
    process alone), and the store's figures."""
    directory = os.environ.get(MULTIPROC_ENV)
    found = CollectorRegistry() if directory else REGISTRY
    if directory:
        MultiProcessCollector(found, path=directory)
    found.register(StoreCollector(config))
    return found


def serve_metrics(config: Config) -> None:
    """Answer scrapes on `metrics.host:metrics.port` from a thread of this process."""
    settings = config.metrics
    assert settings.port is not None  # only called when the config enables the metrics
    start_http_server(settings.port, addr=settings.host, registry=registry(config))
    log.info("metrics: Prometheus scrapes http://%s:%d/metrics", settings.host, settings.port)
