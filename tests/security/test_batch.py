"""A batch Bundle (FHIR R4 http 3.1.0.11) with real tokens: each GET entry is checked (scopes,
compartment) and audited as the same request sent alone would be, whatever the other entries;
a transaction is refused with 405; `AuditEvent/{id}` is read with the permission that searches
the trail, and nobody else reads it."""

from __future__ import annotations

import orjson
import pytest
from sqlalchemy import text

from app.store.audit_record import render_event
from tests.support.smart_auth import bearer

JSON = {"Content-Type": "application/fhir+json"}


@pytest.fixture
def studies(app, auth_server):
    """(study id, its patient id) of each synced study, read with a system token."""
    token = auth_server.sign({"scope": "system/*.rs"})
    bundle = app.test_client().get("/fhir/ImagingStudy", headers=bearer(token)).get_json()
    found = [(e["resource"]["id"], e["resource"]["subject"]["reference"].split("/")[1]) for e in bundle["entry"]]
    assert len({patient for _, patient in found}) >= 2, "the sample archive has studies of several patients"
    return found


@pytest.fixture
def trail(app):
    state = app.extensions["imaging-facade"]

    def events() -> list[dict]:
        state.audit_log.flush()
        with state.store.engine.connect() as conn:
            rows = conn.execute(text("SELECT id, recorded, content FROM audit_event ORDER BY recorded, id")).all()
        return [orjson.loads(render_event(*r)) for r in rows]

    return events


def _batch(*requests: dict) -> dict:
    return {"resourceType": "Bundle", "type": "batch", "entry": [{"request": r} for r in requests]}


def _post(app, token: str, bundle: dict):
    return app.test_client().post("/fhir", data=orjson.dumps(bundle), headers={**bearer(token), **JSON})


def _statuses(response) -> list[str]:
    assert response.status_code == 200, response.get_data(as_text=True)
    body = response.get_json()
    assert body["resourceType"] == "Bundle" and body["type"] == "batch-response"
    return [e["response"]["status"] for e in body.get("entry", [])]


def test_each_entry_is_checked_as_if_sent_alone(app, auth_server, studies):
    (own, patient), (foreign, other) = studies[0], next(s for s in studies if s[1] != studies[0][1])
    token = auth_server.sign({"scope": "patient/ImagingStudy.rs", "patient": patient})
    requests = [
        {"method": "GET", "url": f"ImagingStudy/{own}"},
        {"method": "GET", "url": f"ImagingStudy/{foreign}"},  # another patient's: 404, as alone
        {"method": "GET", "url": f"ImagingStudy?patient={other}"},  # names another patient: 403
        {"method": "GET", "url": "ImagingStudy?_count=50"},
        {"method": "GET", "url": "Patient"},  # no Patient scope: 403
        {"method": "GET", "url": f"{app.extensions['imaging-facade'].base_url}/ImagingStudy/{own}/_history/1"},
        {"method": "DELETE", "url": f"ImagingStudy/{own}"},  # read-only: its own 405
        {"method": "GET", "url": "ImagingStudy?started=yesterday"},  # 400, as alone
        {"method": "GET", "url": "../admin/identity/links"},  # not under the base
        {"method": "GET", "url": "http://elsewhere.example/fhir/Patient"},
    ]
    alone = []
    for r in requests[:6] + requests[7:8]:
        path = r["url"].removeprefix(app.extensions["imaging-facade"].base_url + "/")
        alone.append(app.test_client().get(f"/fhir/{path}", headers=bearer(token)))
    response = _post(app, token, _batch(*requests))
    statuses = _statuses(response)
    assert [int(s.split()[0]) for s in statuses[:6] + statuses[7:8]] == [r.status_code for r in alone]
    assert statuses == [
        "200 OK",
        "404 Not Found",
        "403 Forbidden",
        "200 OK",
        "403 Forbidden",
        "200 OK",
        "405 Method Not Allowed",
        "400 Bad Request",
        "400 Bad Request",
        "400 Bad Request",
    ]
    entries = response.get_json()["entry"]
    assert entries[0]["resource"] == alone[0].get_json()
    assert entries[0]["response"]["etag"] == alone[0].headers["ETag"]
    searched = entries[3]["resource"]
    assert {e["resource"]["subject"]["reference"] for e in searched["entry"]} == {f"Patient/{patient}"}
    for failed in (entries[1], entries[2], entries[4], entries[6], entries[7]):
        assert "resource" not in failed
        assert failed["response"]["outcome"]["resourceType"] == "OperationOutcome"


def test_conditional_entries(app, auth_server, studies):
    """An entry's ifNoneMatch / ifModifiedSince act as the headers of the request alone would."""
    own = studies[0][0]
    token = auth_server.sign({"scope": "system/*.rs"})
    etag = app.test_client().get(f"/fhir/ImagingStudy/{own}", headers=bearer(token)).headers["ETag"]
    response = _post(
        app,
        token,
        _batch(
            {"method": "GET", "url": f"ImagingStudy/{own}", "ifNoneMatch": etag},
            {"method": "GET", "url": f"ImagingStudy/{own}", "ifNoneMatch": 'W/"999"'},
        ),
    )
    assert _statuses(response) == ["304 Not Modified", "200 OK"]
    unchanged, changed = response.get_json()["entry"]
    assert "resource" not in unchanged and unchanged["response"]["etag"] == etag
    assert changed["resource"]["id"] == own


def test_each_entry_is_audited_as_if_sent_alone(app, auth_server, studies, trail):
    (own, patient), (foreign, _) = studies[0], next(s for s in studies if s[1] != studies[0][1])
    token = auth_server.sign({"scope": "patient/ImagingStudy.rs", "patient": patient})
    before = len(trail())
    _post(
        app,
        token,
        _batch(
            {"method": "GET", "url": f"ImagingStudy/{own}"},
            {"method": "GET", "url": f"ImagingStudy/{foreign}"},
            {"method": "GET", "url": "ImagingStudy?modality=CT,MR,OT,RTPLAN"},
        ),
    )
    events = trail()[before:]
    by_subtype = [(e["subtype"][0]["code"], e["outcome"]) for e in events]
    assert by_subtype == [("read", "0"), ("read", "4"), ("search-type", "0"), ("batch", "0")]
    patients = [sorted(x["what"]["reference"] for x in e["entity"] if x["role"]["code"] == "1") for e in events]
    assert patients[0] == [f"Patient/{patient}"] and patients[1] == [] and patients[3] == []
    assert set(patients[2]) <= {f"Patient/{patient}"}


def test_a_bad_token_refuses_the_batch_before_any_entry(app, auth_server, trail):
    before = len(trail())
    response = app.test_client().post(
        "/fhir", data=orjson.dumps(_batch({"method": "GET", "url": "Patient"})), headers={**bearer("x.y.z"), **JSON}
    )
    assert response.status_code == 401
    events = trail()[before:]
    assert [(e["subtype"][0]["code"], e["outcome"]) for e in events] == [("batch", "4")]


def test_a_transaction_is_refused_with_405(app, auth_server):
    token = auth_server.sign({"scope": "system/*.rs"})
    bundle = {**_batch({"method": "GET", "url": "Patient"}), "type": "transaction"}
    response = _post(app, token, bundle)
    assert response.status_code == 405
    outcome = response.get_json()
    assert outcome["resourceType"] == "OperationOutcome" and "transaction" in outcome["issue"][0]["diagnostics"]


@pytest.mark.parametrize(
    "body, status",
    [
        (b"{", 400),
        (b'{"resourceType": "Patient"}', 400),
        (b'{"resourceType": "Bundle", "type": "collection"}', 400),
        (b'{"resourceType": "Bundle", "type": "batch", "entry": 7}', 400),
        (orjson.dumps(_batch(*[{"method": "GET", "url": "metadata"}] * 101)), 400),
    ],
)
def test_bad_batches_are_400(app, auth_server, body, status):
    token = auth_server.sign({"scope": "system/*.rs"})
    response = app.test_client().post("/fhir", data=body, headers={**bearer(token), **JSON})
    assert response.status_code == status
    assert response.get_json()["resourceType"] == "OperationOutcome"


def test_an_empty_batch_answers_an_empty_batch_response(app, auth_server):
    token = auth_server.sign({"scope": "system/*.rs"})
    assert _statuses(_post(app, token, _batch())) == []


@pytest.mark.parametrize(
    "claims, status",
    [
        ({"scope": "system/AuditEvent.rs"}, 200),
        ({"scope": "user/AuditEvent.rs"}, 200),
        ({"scope": "system/AuditEvent.s"}, 200),  # the permission of AuditEvent search
        ({"scope": "system/ImagingStudy.rs"}, 403),
        ({"scope": "patient/*.rs", "patient": "x"}, 403),  # the trail names every patient
        ({"scope": "patient/AuditEvent.rs", "patient": "x"}, 403),
    ],
)
def test_audit_event_read_has_the_permission_of_its_search(app, auth_server, trail, claims, status):
    reader = bearer(auth_server.sign({"scope": "system/*.rs"}))
    app.test_client().get("/fhir/Patient", headers=reader)
    event = trail()[-1]
    client = app.test_client()
    response = client.get(f"/fhir/AuditEvent/{event['id']}", headers=bearer(auth_server.sign(claims)))
    assert response.status_code == status, response.get_data(as_text=True)
    if status == 200:
        assert response.get_json() == event
        auditor = bearer(auth_server.sign({"scope": "system/AuditEvent.rs"}))
        listed = client.get("/fhir/AuditEvent?_count=50", headers=auditor).get_json()
        full_url = next(e["fullUrl"] for e in listed["entry"] if e["resource"]["id"] == event["id"])
        assert (
            client.get(full_url.split("://", 1)[1].split("/", 1)[1].join(["/", ""]), headers=auditor).status_code == 200
        )
        assert client.get("/fhir/AuditEvent/no-such-event", headers=auditor).status_code == 404
