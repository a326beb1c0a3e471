"""Topic-based Subscriptions (Subscriptions R5 Backport IG v1.1.0, R4 profiles) on an open
server, on SQLite and PostgreSQL: the topics announced in the CapabilityStatement, create with
every rule of the body checked, read, search, delete and `$status` at both levels.
Access control: tests/security/test_subscriptions_access.py."""

from __future__ import annotations

import copy

import pytest
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.parameters import Parameters
from fhir.resources.R4B.subscription import Subscription
from sqlalchemy import text

from app.notify.worker import NotifyWorker
from app.store.repository import Store
from app.web import create_app

BASE = "http://testserver/fhir"
SD = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition"
AVAILABLE = f"{BASE}/SubscriptionTopic/imagingstudy-available"
TOPICS = {
    f"{BASE}/SubscriptionTopic/{t}" for t in ("imagingstudy-available", "imagingstudy-changed", "imagingstudy-removed")
}
JSON = {"Content-Type": "application/fhir+json"}


def subscription(topic: str = AVAILABLE, content: str = "id-only", filters=(), **channel) -> dict:
    """A Subscription as the IG's R4 examples write one."""
    return {
        "resourceType": "Subscription",
        "meta": {"profile": [f"{SD}/backport-subscription"]},
        "status": "requested",
        "reason": "link studies to their orders",
        "criteria": topic,
        "_criteria": {"extension": [{"url": f"{SD}/backport-filter-criteria", "valueString": f} for f in filters]},
        "channel": {
            "extension": [
                {"url": f"{SD}/backport-heartbeat-period", "valueUnsignedInt": 60},
                {"url": f"{SD}/backport-timeout", "valueUnsignedInt": 30},
                {"url": f"{SD}/backport-max-count", "valuePositiveInt": 5},
            ],
            "type": "rest-hook",
            "endpoint": "https://ehr.example.org/notify",
            "payload": "application/fhir+json",
            "_payload": {"extension": [{"url": f"{SD}/backport-payload-content", "valueCode": content}]},
            "header": ["Authorization: Bearer secret-of-the-ehr"],
            **channel,
        },
    }


@pytest.fixture(autouse=True)
def _no_sending(monkeypatch):
    """These tests are about the API alone: the node's notification worker does not start (sending
    is tested in tests/integration/test_subscription_delivery.py)."""
    monkeypatch.setattr(NotifyWorker, "start", lambda self: None)


@pytest.fixture
def app(store_url, tmp_path, write_config):
    config = write_config({"store": store_url, "server": {"base_url": BASE}, "security": {"open": True}})
    store = Store.from_config(config)
    yield create_app(config, store)
    store.close()


@pytest.fixture
def client(app):
    return app.test_client()


def rows(app) -> int:
    with app.extensions["imaging-facade"].store.engine.connect() as conn:
        return conn.execute(text("SELECT COUNT(*) FROM subscription")).scalar_one()


def test_the_topics_are_announced_on_the_subscription_entry_of_the_capability_statement(client):
    statement = client.get("/fhir/metadata").get_json()
    entry = next(r for r in statement["rest"][0]["resource"] if r["type"] == "Subscription")
    announced = {
        e["valueCanonical"]
        for e in entry["extension"]
        if e["url"] == f"{SD}/capabilitystatement-subscriptiontopic-canonical"
    }
    assert announced == TOPICS
    assert {i["code"] for i in entry["interaction"]} == {"create", "read", "search-type", "delete"}
    assert [o["name"] for o in entry["operation"]] == ["status", "events"]


@pytest.mark.parametrize("content", ["empty", "id-only", "full-resource"])
def test_a_created_subscription_is_stored_requested_and_read_back(app, client, content):
    sent = subscription(content=content, filters=["ImagingStudy?patient=Patient/p1&modality=MR"])
    created = client.post("/fhir/Subscription", json=sent, headers=JSON)
    assert created.status_code == 201, created.get_data(as_text=True)
    body = created.get_json()
    Subscription.model_validate(body)  # a valid R4 Subscription
    assert body["status"] == "requested" and body["criteria"] == AVAILABLE
    assert body["meta"]["profile"] == [f"{SD}/backport-subscription"]
    assert body["channel"]["_payload"] == sent["channel"]["_payload"]
    assert body["_criteria"] == sent["_criteria"]
    assert created.headers["Location"] == f"{BASE}/Subscription/{body['id']}/_history/1"
    read = client.get(f"/fhir/Subscription/{body['id']}")
    assert read.status_code == 200 and read.get_json() == body
    assert rows(app) == 1


def test_a_client_id_is_not_kept(client):
    sent = {**subscription(), "id": "mine"}
    body = client.post("/fhir/Subscription", json=sent, headers=JSON).get_json()
    assert body["id"] != "mine" and len(body["id"]) == 32


def _broken(change) -> dict:
    sent = copy.deepcopy(subscription())
    change(sent)
    return sent


BROKEN = [
    (lambda s: s.update(resourceType="Patient"), "resourceType"),
    (lambda s: s.update(status="active"), "Subscription.status"),
    (lambda s: s.pop("reason"), "Subscription.reason"),
    (lambda s: s.update(end="2030-01-01T00:00:00Z"), "Subscription.end"),
    (lambda s: s.update(criteria="ImagingStudy?modality=MR"), "Subscription.criteria"),
    (lambda s: s.update(criteria=f"{BASE}/SubscriptionTopic/encounter-start"), "Subscription.criteria"),
    (
        lambda s: s["_criteria"]["extension"].append(
            {"url": f"{SD}/backport-filter-criteria", "valueString": "ImagingStudy?bodysite=head"}
        ),
        "bodysite",
    ),
    (
        lambda s: s["_criteria"]["extension"].append(
            {"url": f"{SD}/backport-filter-criteria", "valueString": "Patient?name=x"}
        ),
        "ImagingStudy?name=value",
    ),
    (
        lambda s: s["_criteria"]["extension"].append(
            {"url": f"{SD}/backport-filter-criteria", "valueString": "ImagingStudy?patient=Group/1"}
        ),
        "patient",
    ),
    (lambda s: s["channel"].update(type="websocket"), "Subscription.channel.type"),
    (lambda s: s["channel"].update(endpoint="ftp://ehr.example.org/x"), "Subscription.channel.endpoint"),
    (lambda s: s["channel"].update(endpoint="https://user:pw@ehr.example.org/x"), "credentials"),
    (lambda s: s["channel"].pop("endpoint"), "Subscription.channel.endpoint"),
    (lambda s: s["channel"].update(payload="application/fhir+xml"), "Subscription.channel.payload"),
    (lambda s: s["channel"].pop("_payload"), "backport-payload-content"),
    (lambda s: s["channel"]["_payload"]["extension"][0].update(valueCode="full"), "backport-payload-content"),
    (lambda s: s["channel"].update(header=["no colon here"]), "Subscription.channel.header[0]"),
    (lambda s: s["channel"].update(header=["Content-Type: text/plain"]), "Subscription.channel.header[0]"),
    (lambda s: s["channel"]["extension"][2].update(valuePositiveInt=0), "backport-max-count"),
    (lambda s: s["channel"]["extension"][0].update(valueUnsignedInt="60"), "backport-heartbeat-period"),
]


@pytest.mark.parametrize("change, named", BROKEN)
def test_a_subscription_that_breaks_a_rule_is_refused_naming_it(app, client, change, named):
    refused = client.post("/fhir/Subscription", json=_broken(change), headers=JSON)
    assert refused.status_code == 400, refused.get_data(as_text=True)
    body = refused.get_json()
    assert body["resourceType"] == "OperationOutcome" and body["issue"][0]["code"] == "invalid"
    assert named in body["issue"][0]["diagnostics"]
    assert rows(app) == 0


def test_a_body_that_is_not_a_fhir_resource_is_refused(client):
    assert client.post("/fhir/Subscription", data=b"{", headers=JSON).status_code == 400
    plain = client.post("/fhir/Subscription", data=b"subscribe me", headers={"Content-Type": "text/plain"})
    assert plain.status_code == 415


def test_search_by_id_status_and_url(client):
    made = [
        client.post(
            "/fhir/Subscription", json=subscription(endpoint=f"https://ehr.example.org/{n}"), headers=JSON
        ).get_json()["id"]
        for n in range(3)
    ]
    everything = client.get("/fhir/Subscription").get_json()
    Bundle.model_validate(everything)
    assert everything["type"] == "searchset" and everything["total"] == 3
    assert sorted(e["resource"]["id"] for e in everything["entry"]) == sorted(made)
    by_id = client.get(f"/fhir/Subscription?_id={made[0]},{made[2]}").get_json()
    assert sorted(e["resource"]["id"] for e in by_id["entry"]) == sorted([made[0], made[2]])
    by_url = client.get("/fhir/Subscription?url=https://ehr.example.org/1").get_json()
    assert [e["resource"]["id"] for e in by_url["entry"]] == [made[1]]
    assert client.get("/fhir/Subscription?status=requested").get_json()["total"] == 3
    assert client.get("/fhir/Subscription?status=active").get_json()["total"] == 0
    wrong = client.get("/fhir/Subscription?status=running")
    assert wrong.status_code == 400 and "status" in wrong.get_json()["issue"][0]["diagnostics"]
    strict = client.get("/fhir/Subscription?topic=x", headers={"Prefer": "handling=strict"})
    assert strict.status_code == 400 and "topic" in strict.get_json()["issue"][0]["diagnostics"]


def test_delete_removes_it(app, client):
    rid = client.post("/fhir/Subscription", json=subscription(), headers=JSON).get_json()["id"]
    assert client.delete(f"/fhir/Subscription/{rid}").status_code == 200
    assert client.get(f"/fhir/Subscription/{rid}").status_code == 404
    assert client.delete(f"/fhir/Subscription/{rid}").status_code == 404
    assert rows(app) == 0


def test_status_at_instance_and_type_level(client):
    first = client.post("/fhir/Subscription", json=subscription(), headers=JSON).get_json()["id"]
    second = client.post(
        "/fhir/Subscription", json=subscription(topic=f"{BASE}/SubscriptionTopic/imagingstudy-removed"), headers=JSON
    ).get_json()["id"]
    one = client.get(f"/fhir/Subscription/{first}/$status")
    assert one.status_code == 200
    bundle = one.get_json()
    Bundle.model_validate(bundle)
    assert bundle["type"] == "searchset" and len(bundle["entry"]) == 1
    status = bundle["entry"][0]["resource"]
    Parameters.model_validate(status)
    assert status["meta"]["profile"] == [f"{SD}/backport-subscription-status-r4"]
    values = {p["name"]: p for p in status["parameter"]}
    assert values["subscription"]["valueReference"]["reference"] == f"{BASE}/Subscription/{first}"
    assert values["topic"]["valueCanonical"] == AVAILABLE
    assert values["status"]["valueCode"] == "requested"
    assert values["type"]["valueCode"] == "query-status"
    assert values["events-since-subscription-start"]["valueString"] == "0"
    every = client.get("/fhir/Subscription/$status").get_json()
    refs = {
        p["valueReference"]["reference"]
        for e in every["entry"]
        for p in e["resource"]["parameter"]
        if p["name"] == "subscription"
    }
    assert refs == {f"{BASE}/Subscription/{first}", f"{BASE}/Subscription/{second}"}
    only = client.get(f"/fhir/Subscription/$status?id={second}").get_json()
    assert len(only["entry"]) == 1
    assert client.get("/fhir/Subscription/$status?status=off").get_json()["entry"] == []
    assert client.get("/fhir/Subscription/0123456789abcdef0123456789abcdef/$status").status_code == 404
