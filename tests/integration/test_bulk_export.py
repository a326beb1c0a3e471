"""Bulk Data export (Bulk Data Access IG v2.0.0) of an open server, on SQLite and PostgreSQL:
kick-off, status polling, the manifest, the ndjson files against what the store holds, the
kick-off parameters, cancelling, expiry, and one node at a time per job. Data: the people of
tests/support/access.py (five patients, seven studies, two endpoints) held by source `pacs`, and
one more patient held by source `other` only. Access control: tests/security/test_bulk_export.py.
"""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime
from urllib.parse import quote

import orjson
import pytest
from fhir.resources.R4B.endpoint import Endpoint
from fhir.resources.R4B.imagingstudy import ImagingStudy
from fhir.resources.R4B.patient import Patient
from sqlalchemy import text

from app.export.worker import ExportWorker
from app.search.params import RESOURCE_TYPES
from app.store.repository import Store
from app.web import create_app
from tests.support.access import PEOPLE, _patient, _study, load
from tests.support.bulk import download, kickoff, local, stored, wait, worker

MODELS = {"ImagingStudy": ImagingStudy, "Patient": Patient, "Endpoint": Endpoint}


@pytest.fixture
def store_and_config(store_url, tmp_path, write_config):
    for name in ("pacs", "other"):
        (tmp_path / name).mkdir()
    config = write_config(
        {
            "store": store_url,
            "server": {"base_url": "http://testserver/fhir"},
            "security": {"open": True},
            "sources": [{"name": n, "type": "folder", "path": str(tmp_path / n)} for n in ("pacs", "other")],
            "export": {"poll_interval": 0.05, "directory": str(tmp_path / "exports"), "page_size": 2},
        }
    )
    store = Store.from_config(config)
    load(store)
    store.studies.put(_study("9.1", "zed", "CT", ("pacs",)), _patient("zed", "999", "Zimmer"), "other")
    yield store, config
    store.close()


@pytest.fixture
def app(store_and_config):
    store, config = store_and_config
    app = create_app(config, store)
    yield app
    worker(app).stop()


@pytest.fixture
def client(app):
    return app.test_client()


def export(client, url: str) -> tuple[dict, dict[str, list[dict]]]:
    done = wait(client, kickoff(client, url))
    assert done.status_code == 200, done.get_data(as_text=True)
    manifest = done.get_json()
    return manifest, download(client, manifest)


def test_a_system_export_writes_exactly_what_the_store_holds(app, client, store_and_config):
    store, _ = store_and_config
    before = datetime.now(UTC)
    location = kickoff(client, "/fhir/$export")
    done = wait(client, location)
    after = datetime.now(UTC)
    assert done.status_code == 200 and done.mimetype == "application/json"
    manifest = done.get_json()
    assert set(manifest) == {"transactionTime", "request", "requiresAccessToken", "output", "error"}
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", manifest["transactionTime"])
    moment = datetime.fromisoformat(manifest["transactionTime"].replace("Z", "+00:00"))
    assert before.replace(microsecond=before.microsecond // 1000 * 1000) <= moment <= after
    assert manifest["request"] == "http://testserver/fhir/$export"
    assert manifest["requiresAccessToken"] is False  # open: the files need no token either (IG)
    assert manifest["error"] == []
    expires = datetime.strptime(done.headers["Expires"], "%a, %d %b %Y %H:%M:%S GMT").replace(tzinfo=UTC)
    assert 86000 < (expires - after).total_seconds() <= 86401  # export.retention's default: a day

    files = download(client, manifest)
    for rtype in RESOURCE_TYPES:
        expected = stored(store, rtype)
        assert expected, rtype
        exported = files[rtype]
        assert sorted(r["id"] for r in exported) == sorted(expected), rtype  # each once, none missing
        assert {r["id"]: r for r in exported} == expected, rtype  # as stored, byte for byte in JSON
        for resource in exported:
            MODELS[rtype].model_validate(resource)  # each line a valid R4 resource
        counts = [item["count"] for item in manifest["output"] if item["type"] == rtype]
        assert sum(counts) == len(expected)


def test_status_says_202_with_progress_until_a_node_has_run_the_job(app, client, monkeypatch):
    monkeypatch.setattr(ExportWorker, "start", lambda self: None)  # no thread: the test runs the job
    location = kickoff(client, "/fhir/$export?_type=Patient")
    queued = client.get(local(location))
    assert queued.status_code == 202
    assert queued.headers["X-Progress"] == "queued" and queued.headers["Retry-After"] == "2"
    assert worker(app).step() is True
    assert worker(app).step() is False  # nothing left to claim
    done = client.get(local(location))
    assert done.status_code == 200
    assert [item["type"] for item in done.get_json()["output"]] == ["Patient"]


def test_files_are_split_beyond_the_configured_size(store_and_config, write_config, tmp_path):
    store, config = store_and_config
    data = {
        "store": config.store,
        "server": {"base_url": "http://testserver/fhir"},
        "security": {"open": True},
        "export": {"max_file_resources": 2, "directory": str(tmp_path / "small"), "poll_interval": 0.05},
    }
    app = create_app(write_config(data, name="small.yaml"), store)
    try:
        client = app.test_client()
        manifest, files = export(client, "/fhir/$export?_type=ImagingStudy")
        assert [item["count"] for item in manifest["output"]] == [2, 2, 2, 2]  # 8 studies
        assert len({item["url"] for item in manifest["output"]}) == 4
        assert sorted(r["id"] for r in files["ImagingStudy"]) == sorted(stored(store, "ImagingStudy"))
    finally:
        worker(app).stop()


def test_type_exports_only_the_types_named(client, store_and_config):
    store, _ = store_and_config
    manifest, files = export(client, "/fhir/Patient/$export?_type=Patient&_type=Endpoint")
    assert set(files) == {"Patient", "Endpoint"}
    assert {r["id"] for r in files["Patient"]} == set(stored(store, "Patient"))
    assert {r["id"] for r in files["Endpoint"]} == set(stored(store, "Endpoint"))
    assert manifest["request"] == "http://testserver/fhir/Patient/$export?_type=Patient&_type=Endpoint"


def test_since_exports_what_changed_after_it(client, store_and_config):
    store, _ = store_and_config
    time.sleep(0.01)
    since = datetime.now(UTC)
    time.sleep(0.01)
    changed = _study("2.1", "bob", "MR", ("pacs",))
    changed["description"] = "re-read"
    store.studies.put(changed, _patient("bob", "222", "Baker"), "pacs")
    instant = since.strftime("%Y-%m-%dT%H:%M:%S.%f") + "Z"
    manifest, files = export(client, f"/fhir/$export?_since={instant.replace('+', '%2B')}")
    micros = int(since.timestamp() * 1_000_000)
    for rtype in RESOURCE_TYPES:
        expected = set(stored(store, rtype, "last_updated > :t", {"t": micros}))
        assert {r["id"] for r in files.get(rtype, [])} == expected, rtype
    assert {r["id"] for r in files["ImagingStudy"]} == {"2.1"}
    assert files["ImagingStudy"][0]["description"] == "re-read"
    assert len(stored(store, "ImagingStudy")) > 1  # the others were left out, not missing


def test_type_filter_exports_what_one_of_its_queries_matches(client, store_and_config):
    by_modality: dict[str, set[str]] = {}
    for _, (_, _, _, studies) in PEOPLE.items():
        for uid, modality, _ in studies:
            by_modality.setdefault(modality, set()).add(uid)
    by_modality["CT"].add("9.1")
    _, files = export(client, "/fhir/$export?_type=ImagingStudy&_typeFilter=ImagingStudy%3Fmodality%3DMR")
    assert {r["id"] for r in files["ImagingStudy"]} == by_modality["MR"]
    # two queries of one type are ORed; repeated parameters count as comma-separated ones (IG)
    # bob's studies: 2.1 (MR, matched by both queries) and 2.2 (CT)
    url = (
        "/fhir/$export?_type=ImagingStudy,Patient&_typeFilter=ImagingStudy%3Fmodality%3DMR,"
        "ImagingStudy%3Fpatient%3Dbob&_typeFilter=Patient%3Fname%3Danders"
    )
    _, files = export(client, url)
    assert {r["id"] for r in files["ImagingStudy"]} == by_modality["MR"] | {"2.1", "2.2"}
    assert len(files["ImagingStudy"]) == len(by_modality["MR"] | {"2.1", "2.2"})  # 2.1 once
    assert {r["id"] for r in files["Patient"]} == {"alice", "alice-b", "dora"}


def test_a_group_export_writes_the_patients_of_one_source_and_their_data(client, store_and_config):
    store, _ = store_and_config
    group = client.get("/fhir/Group/other").get_json()
    assert group["quantity"] == 1 and group["member"] == [{"entity": {"reference": "Patient/zed"}}]
    manifest, files = export(client, "/fhir/Group/other/$export")
    assert manifest["request"] == "http://testserver/fhir/Group/other/$export"
    assert {r["id"] for r in files["Patient"]} == {"zed"}
    assert {r["id"] for r in files["ImagingStudy"]} == {"9.1"}
    assert {r["id"] for r in files["Endpoint"]} == {"pacs"}  # what zed's study points at
    _, files = export(client, "/fhir/Group/pacs/$export?_type=Patient")
    assert {r["id"] for r in files["Patient"]} == set(PEOPLE)


def test_groups_are_read_and_searched(client):
    found = client.get("/fhir/Group?name=PA").get_json()
    assert found["type"] == "searchset" and [e["resource"]["id"] for e in found["entry"]] == ["pacs"]
    assert found["entry"][0]["resource"]["quantity"] == len(PEOPLE)
    both = client.get("/fhir/Group").get_json()
    assert sorted(e["resource"]["id"] for e in both["entry"]) == ["other", "pacs"]
    by_id = client.get("/fhir/Group?_id=other").get_json()
    assert [e["resource"]["id"] for e in by_id["entry"]] == ["other"]
    by_identifier = client.get("/fhir/Group?identifier=urn:imaging-facade:source|pacs").get_json()
    assert [e["resource"]["id"] for e in by_identifier["entry"]] == ["pacs"]
    assert client.get("/fhir/Group/nowhere").status_code == 404
    strict = client.get("/fhir/Group?member=x", headers={"Prefer": "handling=strict"})
    assert strict.status_code == 400 and "member" in strict.get_json()["issue"][0]["diagnostics"]
    statement = client.get("/fhir/metadata").get_json()
    rest = statement["rest"][0]
    group = next(r for r in rest["resource"] if r["type"] == "Group")
    assert [i["code"] for i in group["interaction"]] == ["read", "search-type"]
    assert group["operation"][0]["definition"] == "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/group-export"
    assert rest["operation"][0]["definition"] == "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/export"
    patient = next(r for r in rest["resource"] if r["type"] == "Patient")
    assert "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/patient-export" in [
        o["definition"] for o in patient["operation"]
    ]
    assert statement["instantiates"] == ["http://hl7.org/fhir/uv/bulkdata/CapabilityStatement/bulk-data"]


@pytest.mark.parametrize(
    "query, named",
    [
        ("_elements=id", "_elements"),
        ("patient=Patient/alice", "patient"),
        ("_outputFormat=text/csv", "_outputFormat"),
        ("_outputFormat=ndjson&_outputFormat=ndjson", "_outputFormat"),
        ("_since=yesterday", "_since"),
        ("_since=2024-01-01", "_since"),
        ("_type=Observation", "_type"),
        ("_typeFilter=Observation%3Fcode%3Dx", "_typeFilter"),
        ("_typeFilter=ImagingStudy%3F_sort%3Did", "_typeFilter"),
        ("_typeFilter=ImagingStudy%3Fnot-a-parameter%3D1", "_typeFilter"),
        ("_type=Patient&_typeFilter=ImagingStudy%3Fmodality%3DMR", "_typeFilter"),
    ],
)
def test_a_bad_parameter_is_a_400_naming_it(client, store_and_config, query, named):
    store, _ = store_and_config
    response = client.get(f"/fhir/$export?{query}", headers={"Prefer": "respond-async"})
    assert response.status_code == 400, response.get_data(as_text=True)
    body = response.get_json()
    assert body["resourceType"] == "OperationOutcome"
    assert named in body["issue"][0]["diagnostics"]
    with store.engine.connect() as conn:
        assert conn.execute(text("SELECT COUNT(*) FROM export_job")).scalar_one() == 0  # no job made


def test_kickoff_needs_respond_async_and_a_known_group(client):
    response = client.get("/fhir/$export")
    assert response.status_code == 400 and "Prefer" in response.get_json()["issue"][0]["diagnostics"]
    assert client.get("/fhir/Group/nowhere/$export", headers={"Prefer": "respond-async"}).status_code == 404
    lenient = client.get("/fhir/$export?_elements=id", headers={"Prefer": "respond-async, handling=lenient"})
    assert lenient.status_code == 202  # unknown parameters ignored when asked (IG)
    for fmt in ("application/fhir+ndjson", "application/ndjson", "ndjson"):
        accepted = client.get(f"/fhir/$export?_outputFormat={quote(fmt)}", headers={"Prefer": "respond-async"})
        assert accepted.status_code == 202, fmt


def test_delete_cancels_a_finished_export_and_removes_its_files(app, client):
    location = kickoff(client, "/fhir/$export")
    manifest = wait(client, location).get_json()
    directory = worker(app).job_directory(location.rsplit("/", 1)[1])
    names = sorted(i["url"].rsplit("/", 1)[1] for i in manifest["output"])
    assert sorted(p.name for p in directory.rglob("*.ndjson")) == names
    deleted = client.delete(local(location))
    assert deleted.status_code == 202
    assert not directory.exists()
    assert client.get(local(location)).status_code == 404
    assert client.get(local(manifest["output"][0]["url"])).status_code == 404
    assert client.delete(local(location)).status_code == 404


def test_delete_cancels_a_queued_export_before_it_runs(app, client, monkeypatch, store_and_config):
    store, _ = store_and_config
    monkeypatch.setattr(ExportWorker, "start", lambda self: None)
    location = kickoff(client, "/fhir/$export")
    assert client.delete(local(location)).status_code == 202
    assert worker(app).step() is False  # nothing to run: the cancelled job is not claimed
    assert client.get(local(location)).status_code == 404
    with store.engine.connect() as conn:  # and its row is gone at the next sweep
        assert conn.execute(text("SELECT COUNT(*) FROM export_job")).scalar_one() == 0


def test_delete_stops_a_running_export(app, client, monkeypatch):
    """A cancel while a node writes: its next renewal fails and it stops, its files removed."""
    monkeypatch.setattr(ExportWorker, "start", lambda self: None)
    location = kickoff(client, "/fhir/$export")
    job_id = location.rsplit("/", 1)[1]
    run = worker(app)
    renewals = []
    from app.store import export_jobs

    real_renew = export_jobs.renew

    def renew(*args, **kwargs):
        renewals.append(args)
        if len(renewals) == 2:  # between pages: the client cancels
            assert client.delete(local(location)).status_code == 202
        return real_renew(*args, **kwargs)

    monkeypatch.setattr(export_jobs, "renew", renew)
    assert run.step() is True
    assert len(renewals) == 2  # it stopped at the renewal that failed
    assert not run.job_directory(job_id).exists()
    assert client.get(local(location)).status_code == 404


def test_files_expire_and_are_removed(app, client, store_and_config):
    store, _ = store_and_config
    location = kickoff(client, "/fhir/$export?_type=Endpoint")
    manifest = wait(client, location).get_json()
    job_id = location.rsplit("/", 1)[1]
    with client.get(local(manifest["output"][0]["url"])) as served:
        assert served.status_code == 200
    with store.engine.begin() as conn:  # its retention is over
        conn.execute(text("UPDATE export_job SET expires = :t WHERE id = :id"), {"t": 1, "id": job_id})
    assert client.get(local(location)).status_code == 404
    assert client.get(local(manifest["output"][0]["url"])).status_code == 404
    worker(app).sweep()
    assert not worker(app).job_directory(job_id).exists()
    with store.engine.connect() as conn:
        assert conn.execute(text("SELECT COUNT(*) FROM export_job")).scalar_one() == 0


def test_a_job_is_run_by_one_node_and_taken_over_when_its_node_dies(store_and_config, monkeypatch):
    """Two API nodes on one store: a job is claimed once; a claim that ran out (its node died)
    is taken over by the other node, which starts afresh."""
    store, config = store_and_config
    monkeypatch.setattr(ExportWorker, "start", lambda self: None)
    first, second = create_app(config, store), create_app(config, store)
    location = kickoff(first.test_client(), "/fhir/$export?_type=Patient")
    job_id = location.rsplit("/", 1)[1]
    from app.store import export_jobs

    now = time.time_ns() // 1000
    claimed = export_jobs.claim(store.engine, worker(first).node, now, 10_000_000)
    assert claimed is not None and claimed.id == job_id
    assert export_jobs.claim(store.engine, worker(second).node, now, 10_000_000) is None  # held
    dead_run = worker(first).job_directory(job_id) / "deadrun"  # what the first node wrote before it died
    dead_run.mkdir(parents=True)
    (dead_run / "Patient-1.ndjson").write_bytes(b"partial\n")
    monkeypatch.setattr("app.export.worker.now_micros", lambda: now + 11_000_000)  # the claim ran out
    assert worker(second).step() is True
    done = second.test_client().get(local(location)).get_json()
    files = download(second.test_client(), done)  # every line parses: none of the dead run's
    assert sorted(r["id"] for r in files["Patient"]) == sorted(stored(store, "Patient"))
    assert export_jobs.renew(store.engine, job_id, worker(first).node, now, "late") is False  # the first lost it
    row = export_jobs.get(store.engine, job_id)
    assert row is not None and row.node == worker(second).node and orjson.loads(row.manifest)["output"]


def test_a_large_group_is_read_a_slice_of_members_at_a_time(client, store_and_config, monkeypatch):
    """Members beyond one statement's parameters: slices of 2 here, merged by id, each resource once."""
    store, _ = store_and_config
    monkeypatch.setattr("app.export.run.MEMBERS_PER_QUERY", 2)
    _, files = export(client, "/fhir/Group/pacs/$export")
    studies = {uid for _, (_, _, _, held) in PEOPLE.items() for uid, _, _ in held}
    assert sorted(r["id"] for r in files["Patient"]) == sorted(PEOPLE)
    assert sorted(r["id"] for r in files["ImagingStudy"]) == sorted(studies)
    assert sorted(r["id"] for r in files["Endpoint"]) == sorted(stored(store, "Endpoint"))  # pacs once, bob-pacs
