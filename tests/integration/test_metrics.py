"""Prometheus metrics (`metrics.port`) of `imaging-facade serve` as it runs under gunicorn with
several workers: every request counted once whichever worker answered it, the sync's studies,
each source's freshness and quarantine, the identity review queue, export jobs and the audit backlog from
the store, token refusals; no label or value carries patient data."""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path

import pydicom
import pytest
import requests
import yaml
from prometheus_client.parser import text_string_to_metric_families
from pydicom.data import get_testdata_file

from testbed.orthanc import free_port
from tests.security.test_served import patient_words, serve, stop

pytestmark = [pytest.mark.server, pytest.mark.slow]

FILES = ("CT_small.dcm", "MR_small.dcm")
ROOT = Path(__file__).resolve().parents[2]


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    """(sample name, sorted labels) -> value."""
    body = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(body)
        for sample in family.samples
    }


@pytest.fixture
def served(tmp_path):
    archive = tmp_path / "archive"
    archive.mkdir()
    for name in FILES:
        shutil.copyfile(get_testdata_file(name), archive / name)
    broken = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    del broken.StudyInstanceUID
    broken.save_as(archive / "broken.dcm")  # quarantined
    port, metrics_port = free_port(), free_port()
    config = {
        "store": f"sqlite:///{tmp_path / 'facade.db'}",
        "server": {
            "base_url": f"http://127.0.0.1:{port}/fhir",
            "host": "127.0.0.1",
            "port": port,
            "workers": 3,
            "sync_on_start": True,
        },
        "security": {"open": True, "audit": True},
        "sources": [{"name": "sample", "type": "folder", "path": str(archive), "timezone": "UTC"}],
        "metrics": {"port": metrics_port},
    }
    proc, log = serve(config, tmp_path, port)
    yield f"http://127.0.0.1:{port}/fhir", metrics_port, tmp_path
    stop(proc, log)


def test_every_worker_counts_into_one_scrape_with_the_stores_figures(served):
    base, metrics_port, tmp_path = served
    searches, misses = 40, 7
    session = requests.Session()
    kickoff = session.get(f"{base}/$export", headers={"Prefer": "respond-async"})
    assert kickoff.status_code == 202, kickoff.text
    deadline = time.monotonic() + 60
    while session.get(kickoff.headers["Content-Location"]).status_code == 202:
        assert time.monotonic() < deadline, "the export did not finish"
        time.sleep(0.2)
    for _ in range(searches):
        assert session.get(f"{base}/ImagingStudy").status_code == 200
    for n in range(misses):
        assert session.get(f"{base}/Patient/no-such-{n}").status_code == 404
    assert session.get(f"{base}/Zebedee").status_code in (400, 404)  # what a client typed is no label
    found = scrape(metrics_port)

    def value(name: str, **labels: str) -> float:
        return found.get((name, tuple(sorted(labels.items()))), 0.0)

    search = {"interaction": "search-type", "type": "ImagingStudy"}
    assert value("facade_http_requests_total", **search, status="200") == searches
    assert value("facade_http_requests_total", interaction="read", type="Patient", status="404") == misses
    assert value("facade_http_request_duration_seconds_count", **search) == searches
    assert value("facade_http_request_duration_seconds_bucket", **search, le="+Inf") == searches
    assert value("facade_sync_studies_total", source="sample", outcome="new") == len(FILES)
    assert value("facade_sync_studies_total", source="sample", outcome="failed") == 1
    assert value("facade_source_studies", source="sample") == len(FILES)
    assert value("facade_source_quarantined_studies", source="sample") == 1
    assert value("facade_source_failing", source="sample") == 0
    assert 0 <= value("facade_source_lag_seconds", source="sample") < 300
    assert value("facade_source_last_success_timestamp_seconds", source="sample") > time.time() - 300
    assert value("facade_identity_review_queue") == 0
    assert value("facade_export_jobs", status="done") == 1 and value("facade_export_jobs", status="queued") == 0
    assert value("facade_store_up") == 1
    assert ("facade_audit_spooled_segments", ()) in found
    labels = {value for (_, pairs) in found for _, value in pairs}
    assert "Zebedee" not in labels and not any(v.startswith("no-such") for v in labels)
    assert not patient_words() & labels, "no label carries patient data"
    again = scrape(metrics_port)  # a scrape is not a request of the API: nothing more counted
    assert again[("facade_http_requests_total", tuple(sorted({**search, "status": "200"}.items())))] == searches


def test_metrics_are_served_on_loopback_apart_from_the_api(served):
    base, metrics_port, _ = served
    assert requests.get(f"{base.rsplit('/fhir', 1)[0]}/metrics").status_code == 404  # not on the API's port
    assert requests.get(f"http://127.0.0.1:{metrics_port}/metrics").headers["Content-Type"].startswith("text/plain")


def test_the_dashboard_and_alert_rules_name_only_metrics_the_server_exports(served):
    """docs/monitoring holds a Grafana dashboard and Prometheus alert rules; a renamed metric
    would leave them silently empty."""
    _, metrics_port, _ = served
    families = {family.name for family in text_string_to_metric_families(
        requests.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).text)}  # fmt: skip
    docs = ROOT / "docs" / "monitoring"
    rules = yaml.safe_load((docs / "alerts.yml").read_text())
    dashboard = json.loads((docs / "grafana-dashboard.json").read_text())
    exprs = [rule["expr"] for group in rules["groups"] for rule in group["rules"]]
    exprs += [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    named = {re.sub(r"_(total|bucket|count|sum)$", "", name) for e in exprs for name in re.findall(r"facade_\w+", e)}
    assert named, "the rules and the dashboard name metrics"
    only_with_tokens = {"facade_token_checks"}  # this server is open: it checks no token
    assert named - only_with_tokens <= families, f"not exported: {sorted(named - families)}"
    for group in rules["groups"]:
        for rule in group["rules"]:
            assert {"alert", "expr", "labels", "annotations"} <= set(rule)
