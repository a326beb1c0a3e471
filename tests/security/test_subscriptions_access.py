"""Subscriptions under SMART (App Launch v2 scopes on Subscription), with tokens of the real test
authorization server over a store synced from real DICOM files (conftest): creating needs `c` on
Subscription, reading `r`, searching and `$status` `s`, deleting `d`; a token bound to a patient
subscribes only to its own patient; a Subscription is its creator's alone; every create, read,
search, `$status` and delete is an AuditEvent."""

from __future__ import annotations

import orjson
import pytest
from sqlalchemy import text

from app.notify.worker import NotifyWorker
from app.store.audit_record import render_event
from tests.integration.test_subscriptions_api import subscription
from tests.support.smart_auth import bearer

JSON = {"Content-Type": "application/fhir+json"}


@pytest.fixture(autouse=True)
def _no_sending(monkeypatch):
    """These tests are about the API alone: the node's notification worker does not start (sending
    is tested in tests/integration/test_subscription_delivery.py)."""
    monkeypatch.setattr(NotifyWorker, "start", lambda self: None)


def token(auth_server, scope: str, client_id: str = "ehr-a", sub: str | None = None, **claims) -> dict:
    return {
        **bearer(auth_server.sign({"scope": scope, "client_id": client_id, "sub": sub or client_id, **claims})),
        **JSON,
    }


def engine(app):
    return app.extensions["imaging-facade"].store.engine


def stored(app) -> int:
    with engine(app).connect() as conn:
        return conn.execute(text("SELECT COUNT(*) FROM subscription")).scalar_one()


def post(client, who, **kwargs):
    base = client.application.extensions["imaging-facade"].base_url
    sent = subscription(topic=f"{base}/SubscriptionTopic/imagingstudy-available", **kwargs)
    return client.post("/fhir/Subscription", json=sent, headers=who)


@pytest.mark.parametrize(
    "scope", ["user/ImagingStudy.rs", "user/Subscription.rs", "system/*.rs", "user/Subscription.rs?status=active"]
)
def test_creating_without_a_create_scope_on_subscription_is_refused(app, auth_server, scope):
    refused = post(app.test_client(), token(auth_server, scope))
    assert refused.status_code == 403
    assert "Subscription.c" in refused.get_json()["issue"][0]["diagnostics"]
    assert stored(app) == 0


@pytest.mark.parametrize(
    "scope", ["user/Subscription.c", "system/Subscription.cruds", "user/*.write", "system/Subscription.*"]
)
def test_a_create_scope_creates(app, auth_server, scope):
    made = post(app.test_client(), token(auth_server, scope))
    assert made.status_code == 201, made.get_data(as_text=True)
    assert stored(app) == 1


def test_no_token_no_subscription(app):
    assert post(app.test_client(), JSON).status_code == 401
    assert app.test_client().get("/fhir/Subscription").status_code == 401


def test_a_patient_bound_token_subscribes_only_to_its_own_patient(app, auth_server, patients):
    own, other = patients[0], patients[1]
    who = token(auth_server, "patient/Subscription.cruds patient/ImagingStudy.rs", patient=own)
    client = app.test_client()
    assert post(client, who).status_code == 403  # no patient filter: every patient's studies
    assert post(client, who, filters=[f"ImagingStudy?patient=Patient/{other}"]).status_code == 403
    both = [f"ImagingStudy?patient=Patient/{own}", f"ImagingStudy?patient=Patient/{other}"]
    assert post(client, who, filters=both).status_code == 403
    assert stored(app) == 0
    made = post(client, who, filters=[f"ImagingStudy?patient=Patient/{own}&modality=MR"])
    assert made.status_code == 201, made.get_data(as_text=True)
    made = post(client, who, filters=[f"ImagingStudy?patient={own}"])
    assert made.status_code == 201


def test_a_subscription_is_its_creators_alone(app, auth_server):
    client = app.test_client()
    scope = "user/Subscription.cruds"
    mine, other_app, other_user = (
        token(auth_server, scope),
        token(auth_server, scope, client_id="ehr-b"),
        token(auth_server, scope, sub="someone-else"),
    )
    rid = post(client, mine).get_json()["id"]
    for them in (other_app, other_user):
        assert client.get(f"/fhir/Subscription/{rid}", headers=them).status_code == 404
        assert client.get("/fhir/Subscription", headers=them).get_json()["total"] == 0
        assert client.get(f"/fhir/Subscription/{rid}/$status", headers=them).status_code == 404
        assert client.get("/fhir/Subscription/$status", headers=them).get_json()["entry"] == []
        assert client.delete(f"/fhir/Subscription/{rid}", headers=them).status_code == 404
    assert stored(app) == 1
    assert client.get(f"/fhir/Subscription/{rid}", headers=mine).status_code == 200
    assert client.get("/fhir/Subscription", headers=mine).get_json()["total"] == 1
    assert client.delete(f"/fhir/Subscription/{rid}", headers=mine).status_code == 200
    assert stored(app) == 0


def test_each_interaction_needs_its_own_permission(app, auth_server):
    client = app.test_client()
    rid = post(client, token(auth_server, "user/Subscription.c")).get_json()["id"]
    only_create = token(auth_server, "user/Subscription.c")
    assert client.get(f"/fhir/Subscription/{rid}", headers=only_create).status_code == 403
    assert client.get("/fhir/Subscription", headers=only_create).status_code == 403
    assert client.get("/fhir/Subscription/$status", headers=only_create).status_code == 403
    assert client.delete(f"/fhir/Subscription/{rid}", headers=only_create).status_code == 403
    read_only = token(auth_server, "user/Subscription.rs")
    assert client.get(f"/fhir/Subscription/{rid}", headers=read_only).status_code == 200
    assert client.delete(f"/fhir/Subscription/{rid}", headers=read_only).status_code == 403
    assert stored(app) == 1


def test_every_create_read_search_status_and_delete_is_audited(app, auth_server):
    client = app.test_client()
    who = token(auth_server, "user/Subscription.cruds")
    rid = post(client, who).get_json()["id"]
    client.get(f"/fhir/Subscription/{rid}", headers=who)
    client.get("/fhir/Subscription?status=requested", headers=who)
    client.get(f"/fhir/Subscription/{rid}/$status", headers=who)
    client.delete(f"/fhir/Subscription/{rid}", headers=who)
    post(client, token(auth_server, "user/ImagingStudy.rs", client_id="ehr-b"))  # refused, audited too

    app.extensions["imaging-facade"].audit_log.flush()
    with engine(app).connect() as conn:
        rows = conn.execute(text("SELECT id, recorded, content FROM audit_event ORDER BY recorded, id")).all()
    events = [orjson.loads(render_event(*row)) for row in rows]
    seen = [
        (e["subtype"][0]["code"], e["action"], e["outcome"], e["agent"][0]["who"]["identifier"]["value"])
        for e in events
        if "Subscription" in e["entity"][0].get("description", "") or e["subtype"][0]["code"] == "create"
    ]
    assert seen == [
        ("create", "C", "0", "ehr-a"),
        ("read", "R", "0", "ehr-a"),
        ("search-type", "E", "0", "ehr-a"),
        ("operation", "E", "0", "ehr-a"),
        ("delete", "D", "0", "ehr-a"),
        ("create", "C", "4", "ehr-b"),
    ]
