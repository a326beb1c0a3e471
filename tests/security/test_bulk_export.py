"""Bulk Data export under SMART Backend Services (Bulk Data Access IG v2.0.0): tokens of the
real test authorization server, over a store synced from real DICOM files (conftest).

Only system-level scopes may export, and only what they cover; a token bound to a patient, or
with user-level scopes alone, is refused with 403; status, files and cancel are the kick-off
client's only; every kick-off, status request, download and cancel is an AuditEvent.
"""

from __future__ import annotations

import base64

import orjson
import pytest
from sqlalchemy import text

from app.store.audit_record import render_event
from tests.support.bulk import ASYNC, download, kickoff, local, stored, wait, worker
from tests.support.smart_auth import bearer


@pytest.fixture
def exporting(app):
    yield app
    worker(app).stop()


def token(auth_server, scope: str, client_id: str = "backend-a", **claims) -> dict:
    return bearer(auth_server.sign({"scope": scope, "client_id": client_id, "sub": client_id, **claims}))


def store_of(app):
    return app.extensions["imaging-facade"].store


def test_a_system_token_exports_every_type_it_covers(exporting, auth_server):
    client = exporting.test_client()
    who = token(auth_server, "system/*.rs")
    done = wait(client, kickoff(client, "/fhir/$export", who), who)
    assert done.status_code == 200
    manifest = done.get_json()
    assert manifest["requiresAccessToken"] is True  # the files need the client's token (IG)
    files = download(client, manifest, who)
    for rtype in ("ImagingStudy", "Patient", "Endpoint"):
        assert {r["id"] for r in files[rtype]} == set(stored(store_of(exporting), rtype)), rtype
    assert client.get(local(manifest["output"][0]["url"])).status_code == 401  # no token, no file


@pytest.mark.parametrize(
    "scope, claims",
    [
        ("patient/*.rs", {"patient": "any"}),
        ("patient/ImagingStudy.rs system/*.rs", {"patient": "any"}),
        ("user/*.rs", {}),
        ("system/ImagingStudy.u", {}),
    ],
)
def test_a_token_without_system_read_scopes_is_refused(exporting, auth_server, scope, claims):
    client = exporting.test_client()
    response = client.get("/fhir/$export", headers={**ASYNC, **token(auth_server, scope, **claims)})
    assert response.status_code == 403
    body = response.get_json()
    assert body["resourceType"] == "OperationOutcome" and body["issue"][0]["code"] == "forbidden"
    with store_of(exporting).engine.connect() as conn:
        assert conn.execute(text("SELECT COUNT(*) FROM export_job")).scalar_one() == 0
    group = client.get("/fhir/Group/sample/$export", headers={**ASYNC, **token(auth_server, scope, **claims)})
    assert group.status_code == 403


def test_types_outside_the_scopes_are_not_exported_and_refused_when_named(exporting, auth_server):
    client = exporting.test_client()
    who = token(auth_server, "system/ImagingStudy.rs")
    manifest = wait(client, kickoff(client, "/fhir/Patient/$export", who), who).get_json()
    assert {item["type"] for item in manifest["output"]} == {"ImagingStudy"}
    files = download(client, manifest, who)
    assert {r["id"] for r in files["ImagingStudy"]} == set(stored(store_of(exporting), "ImagingStudy"))
    refused = client.get("/fhir/$export?_type=ImagingStudy,Patient", headers={**ASYNC, **who})
    assert refused.status_code == 403 and "Patient" in refused.get_json()["issue"][0]["diagnostics"]


def test_granular_scopes_narrow_the_export(exporting, auth_server):
    client = exporting.test_client()
    everything = token(auth_server, "system/*.rs")
    studies = client.get("/fhir/ImagingStudy?_count=100", headers=everything).get_json()["entry"]
    modalities = {e["resource"]["id"]: {m["code"] for m in e["resource"].get("modality", [])} for e in studies}
    wanted = {rid for rid, codes in modalities.items() if "CT" in codes}
    assert wanted and wanted != set(modalities)
    who = token(auth_server, "system/ImagingStudy.rs?modality=CT")
    manifest = wait(client, kickoff(client, "/fhir/$export", who), who).get_json()
    assert {r["id"] for r in download(client, manifest, who)["ImagingStudy"]} == wanted


def test_status_files_and_cancel_are_the_kickoff_clients_own(exporting, auth_server):
    client = exporting.test_client()
    mine, theirs = token(auth_server, "system/*.rs"), token(auth_server, "system/*.rs", client_id="backend-b")
    location = kickoff(client, "/fhir/$export?_type=Patient", mine)
    manifest = wait(client, location, mine).get_json()
    url = local(manifest["output"][0]["url"])
    assert client.get(local(location), headers=theirs).status_code == 404
    assert client.get(url, headers=theirs).status_code == 404
    assert client.delete(local(location), headers=theirs).status_code == 404
    with client.get(url, headers=mine) as served:
        assert served.status_code == 200  # untouched by the other client's tries
    patient_bound = token(auth_server, "patient/*.rs", patient="any")
    assert client.get(local(location), headers=patient_bound).status_code == 403
    assert client.delete(local(location), headers=mine).status_code == 202


def test_every_kickoff_status_download_and_cancel_is_audited(exporting, auth_server):
    client = exporting.test_client()
    mine, theirs = token(auth_server, "system/*.rs"), token(auth_server, "system/*.rs", client_id="backend-b")
    location = kickoff(client, "/fhir/$export?_type=Endpoint", mine)
    manifest = wait(client, location, mine).get_json()
    file_url = local(manifest["output"][0]["url"])
    with client.get(file_url, headers=mine):
        pass
    client.get(file_url, headers=theirs)
    client.delete(local(location), headers=mine)

    state = exporting.extensions["imaging-facade"]
    state.audit_log.flush()
    with store_of(exporting).engine.connect() as conn:
        rows = conn.execute(text("SELECT id, recorded, content FROM audit_event ORDER BY recorded, id")).all()
    events = [orjson.loads(render_event(*row)) for row in rows]
    seen = []
    for event in events:
        query = event["entity"][0]
        client_id = event["agent"][0]["who"]["identifier"]["value"]
        seen.append((query["description"], event["action"], event["outcome"], client_id))
        assert event["subtype"][0]["code"] == "operation"
    job = location.rsplit("/", 1)[1]
    status_path = f"/fhir/$export-status/{job}"
    assert seen[0] == ("/fhir/$export", "E", "0", "backend-a")
    assert base64.b64decode(events[0]["entity"][0]["query"]).decode() == "_type=Endpoint"
    assert (status_path, "R", "0", "backend-a") in seen  # polls
    assert (file_url, "R", "0", "backend-a") in seen
    assert (file_url, "R", "4", "backend-b") in seen  # refused, and recorded as such
    assert seen[-1] == (status_path, "D", "0", "backend-a")


@pytest.mark.parametrize(
    "scope, claims, status",
    [
        ("system/*.rs", {}, 200),
        ("user/Group.rs", {}, 200),
        ("system/ImagingStudy.rs", {}, 403),
        ("patient/*.rs", {"patient": "any"}, 403),
    ],
)
def test_groups_need_a_group_scope_and_no_patient(exporting, auth_server, scope, claims, status):
    client = exporting.test_client()
    who = token(auth_server, scope, **claims)
    assert client.get("/fhir/Group/sample", headers=who).status_code == status
    assert client.get("/fhir/Group", headers=who).status_code == status
