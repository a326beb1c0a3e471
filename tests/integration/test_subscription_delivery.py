"""Notifications of topic-based Subscriptions (Subscriptions R5 Backport IG v1.1.0, R4), on SQLite
and PostgreSQL: a real HTTP receiver on a loopback port records what the node's worker POSTs
while real DICOM files (pydicom's test data) are synced into the store. Handshake, event
notifications per payload type, contiguous event numbers, filters, `error` then `active` again
after the receiver failed, delivery of what was recorded while no node ran, and `$events`."""

from __future__ import annotations

import shutil
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import orjson
import pydicom
import pytest
from fhir.resources.R4B.bundle import Bundle
from pydicom.data import get_testdata_file
from sqlalchemy import text

from app.store.repository import Store
from app.sync import sync_source
from app.web import create_app
from tests.integration.test_subscriptions_api import subscription

BASE = "http://testserver/fhir"
FILES = ("CT_small.dcm", "MR_small.dcm")
JSON = {"Content-Type": "application/fhir+json"}


class Receiver:
    """A subscriber's endpoint: records each POST (headers, Bundle) and answers `self.answer`."""

    def __init__(self):
        self.received: list[tuple[dict, dict]] = []
        self.answer = 200
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with outer.lock:
                    outer.received.append((dict(self.headers), orjson.loads(body)))
                    answer = outer.answer
                self.send_response(answer)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/notify"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def bundles(self, kind: str | None = None) -> list[dict]:
        with self.lock:
            found = [body for _, body in self.received]
        return [b for b in found if kind is None or _status(b)["type"]["valueCode"] == kind]

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


def _status(bundle: dict) -> dict:
    return {p["name"]: p for p in bundle["entry"][0]["resource"]["parameter"]}


def _events(bundle: dict) -> list[dict]:
    status = bundle["entry"][0]["resource"]["parameter"]
    return [{q["name"]: q for q in p["part"]} for p in status if p["name"] == "notification-event"]


def wait_for(condition, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError("timed out")


@pytest.fixture
def receiver():
    found = Receiver()
    yield found
    found.stop()


@pytest.fixture
def setup(store_url, tmp_path, write_config):
    archive = tmp_path / "archive"
    archive.mkdir()
    config = write_config(
        {
            "store": store_url,
            "server": {"base_url": BASE},
            "security": {"open": True},
            "sources": [{"name": "archive", "type": "folder", "path": str(archive), "timezone": "UTC"}],
            "subscriptions": {"poll_interval": 0.05, "retry_base": 0.05, "retry_max": 0.2, "max_failures": 2},
        }
    )
    store = Store.from_config(config)
    apps = []

    def app():
        made = create_app(config, store)
        apps.append(made)
        return made

    yield config, store, archive, app
    for made in apps:
        made.extensions["imaging-facade-notify"].stop()
    store.close()


def sync(config, store, archive, names=FILES):
    for name in names:
        shutil.copyfile(get_testdata_file(name), archive / name)
    sync_source(store, config.sources[0])


def studies(store) -> dict[str, bytes]:
    with store.engine.connect() as conn:
        rows = conn.execute(text("SELECT id, content FROM resource WHERE rtype = 'ImagingStudy'")).all()
    return {rid: bytes(content) for rid, content in rows}


def create(client, receiver, **kwargs) -> str:
    made = client.post(
        "/fhir/Subscription",
        json=subscription(endpoint=receiver.url, header=["X-Ehr-Key: k-123"], **kwargs),
        headers=JSON,
    )
    assert made.status_code == 201, made.get_data(as_text=True)
    return made.get_json()["id"]


def test_handshake_then_one_numbered_event_per_new_study(setup, receiver):
    config, store, archive, app = setup
    client = app().test_client()
    rid = create(client, receiver)
    handshake = wait_for(lambda: receiver.bundles("handshake"))[0]
    Bundle.model_validate(handshake)
    assert handshake["type"] == "history"
    assert _status(handshake)["subscription"]["valueReference"]["reference"] == f"{BASE}/Subscription/{rid}"
    assert wait_for(lambda: client.get(f"/fhir/Subscription/{rid}").get_json()["status"] == "active")

    sync(config, store, archive)
    stored = studies(store)
    assert len(stored) == len(FILES)
    sent = wait_for(
        lambda: (b := receiver.bundles("event-notification")) and sum(len(_events(x)) for x in b) >= 2 and b
    )
    numbers, focus = [], []
    for bundle in sent:
        Bundle.model_validate(bundle)
        assert bundle["type"] == "history" and bundle["entry"][0]["resource"]["resourceType"] == "Parameters"
        for event in _events(bundle):
            numbers.append(int(event["event-number"]["valueString"]))
            focus.append(event["focus"]["valueReference"]["reference"])
        # id-only: an entry per focus with its fullUrl, no resource
        assert all("resource" not in e and e["request"]["method"] == "POST" for e in bundle["entry"][1:])
    assert numbers == [1, 2]
    assert sorted(focus) == sorted(f"{BASE}/ImagingStudy/{sid}" for sid in stored)
    assert _status(sent[-1])["events-since-subscription-start"]["valueString"] == "2"
    headers = [h for h, _ in receiver.received]
    assert all(h["X-Ehr-Key"] == "k-123" and h["Content-Type"] == "application/fhir+json" for h in headers)
    status = client.get(f"/fhir/Subscription/{rid}/$status").get_json()["entry"][0]["resource"]
    assert {p["name"]: p for p in status["parameter"]}["events-since-subscription-start"]["valueString"] == "2"


@pytest.mark.parametrize("content", ["empty", "full-resource"])
def test_the_payload_is_what_the_subscription_asked_for(setup, receiver, content):
    config, store, archive, app = setup
    client = app().test_client()
    create(client, receiver, content=content)
    wait_for(lambda: receiver.bundles("handshake"))
    sync(config, store, archive)
    stored = studies(store)
    sent = wait_for(
        lambda: (b := receiver.bundles("event-notification")) and sum(len(_events(x)) for x in b) >= 2 and b
    )
    for bundle in sent:
        Bundle.model_validate(bundle)
        if content == "empty":
            assert len(bundle["entry"]) == 1 and all("focus" not in e for e in _events(bundle))
        else:
            for entry in bundle["entry"][1:]:
                sid = entry["fullUrl"].rsplit("/", 1)[1]
                assert entry["resource"] == orjson.loads(stored[sid])


def test_filters_narrow_the_events(setup, receiver):
    config, store, archive, app = setup
    client = app().test_client()
    create(client, receiver, filters=["ImagingStudy?modality=MR"])
    wait_for(lambda: receiver.bundles("handshake"))
    sync(config, store, archive)
    mr = [sid for sid, content in studies(store).items() if b'"MR"' in content]
    assert len(mr) == 1
    sent = wait_for(lambda: receiver.bundles("event-notification"))
    time.sleep(0.5)  # a second, wrong, notification would come now
    sent = receiver.bundles("event-notification")
    assert [e["focus"]["valueReference"]["reference"] for b in sent for e in _events(b)] == [
        f"{BASE}/ImagingStudy/{mr[0]}"
    ]


def test_a_patient_change_is_a_changed_event_and_a_removal_a_removed_one(setup, receiver, tmp_path):
    config, store, archive, app = setup
    client = app().test_client()
    sync(config, store, archive, names=("CT_small.dcm",))
    changed = create(client, receiver, topic=f"{BASE}/SubscriptionTopic/imagingstudy-changed")
    removed = create(client, receiver, topic=f"{BASE}/SubscriptionTopic/imagingstudy-removed")
    wait_for(lambda: len(receiver.bundles("handshake")) == 2)
    moved = pydicom.dcmread(archive / "CT_small.dcm")
    moved.PatientID = "SOMEONE-ELSE"
    moved.save_as(archive / "CT_small.dcm")
    sync_source(store, config.sources[0])
    got = wait_for(lambda: receiver.bundles("event-notification"))
    assert [_status(b)["subscription"]["valueReference"]["reference"] for b in got] == [
        f"{BASE}/Subscription/{changed}"
    ]
    assert got[0]["entry"][1]["request"]["method"] == "PUT"
    (archive / "CT_small.dcm").unlink()
    sync_source(store, config.sources[0])
    got = wait_for(lambda: len(receiver.bundles("event-notification")) == 2 and receiver.bundles("event-notification"))
    assert _status(got[1])["subscription"]["valueReference"]["reference"] == f"{BASE}/Subscription/{removed}"
    assert got[1]["entry"][1]["request"]["method"] == "DELETE"


def test_a_failing_endpoint_puts_the_subscription_in_error_then_active_again(setup, receiver):
    config, store, archive, app = setup
    client = app().test_client()
    rid = create(client, receiver)
    wait_for(lambda: receiver.bundles("handshake"))
    receiver.answer = 500
    sync(config, store, archive)

    def status() -> str:
        return client.get(f"/fhir/Subscription/{rid}").get_json()["status"]

    assert wait_for(lambda: status() == "error")
    error = client.get(f"/fhir/Subscription/{rid}").get_json()["error"]
    assert "500" in error
    receiver.answer = 200
    assert wait_for(lambda: status() == "active")
    ok = [b for h, b in receiver.received]
    # every event reached the receiver; a number sent again while it failed is the same event again
    numbers = sorted({int(e["event-number"]["valueString"]) for b in ok for e in _events(b)})
    assert numbers == [1, 2]


def test_what_was_recorded_while_no_node_ran_is_sent_after_a_restart(setup, receiver):
    config, store, archive, app = setup
    first = app()
    rid = create(first.test_client(), receiver)
    wait_for(lambda: receiver.bundles("handshake"))
    first.extensions["imaging-facade-notify"].stop()
    sync(config, store, archive)
    time.sleep(0.3)
    assert receiver.bundles("event-notification") == []
    second = app()  # a node starting on a store with live subscriptions sends what is left
    sent = wait_for(
        lambda: (b := receiver.bundles("event-notification")) and sum(len(_events(x)) for x in b) >= 2 and b
    )
    assert [int(e["event-number"]["valueString"]) for b in sent for e in _events(b)] == [1, 2]
    # $events hands the same events out again by number
    again = second.test_client().get(f"/fhir/Subscription/{rid}/$events?eventsSinceNumber=2")
    assert again.status_code == 200
    bundle = again.get_json()
    Bundle.model_validate(bundle)
    assert _status(bundle)["type"]["valueCode"] == "query-event"
    assert [e["event-number"]["valueString"] for e in _events(bundle)] == ["2"]


def test_heartbeats_come_every_heartbeat_period(setup, receiver):
    _, _, _, app = setup
    client = app().test_client()
    sent = subscription(endpoint=receiver.url)
    sent["channel"]["extension"][0]["valueUnsignedInt"] = 1  # backport-heartbeat-period: 1 second
    assert client.post("/fhir/Subscription", json=sent, headers=JSON).status_code == 201
    wait_for(lambda: receiver.bundles("handshake"))
    started = time.monotonic()
    beats = wait_for(lambda: len(receiver.bundles("heartbeat")) >= 2 and receiver.bundles("heartbeat"), timeout=10)
    assert time.monotonic() - started >= 1.5  # not sooner than the period
    for beat in beats:
        Bundle.model_validate(beat)
        assert len(beat["entry"]) == 1 and _events(beat) == []
        assert _status(beat)["status"]["valueCode"] == "active"


def test_with_two_nodes_each_event_is_sent_once(setup, receiver):
    config, store, archive, app = setup
    first, second = app(), app()  # two API nodes on one store, each with its sender
    second.extensions["imaging-facade-notify"].start()
    create(first.test_client(), receiver)
    wait_for(lambda: receiver.bundles("handshake"))
    for name in FILES:
        sync(config, store, archive, names=(name,))
    wait_for(lambda: sum(len(_events(b)) for b in receiver.bundles("event-notification")) >= 2)
    time.sleep(0.5)  # a repeat from the other node would come now
    assert len(receiver.bundles("handshake")) == 1
    numbers = [
        int(e["event-number"]["valueString"]) for b in receiver.bundles("event-notification") for e in _events(b)
    ]
    assert numbers == [1, 2]
    assert receiver.bundles("heartbeat") == []


def test_a_study_that_moved_to_another_patient_is_not_shown_to_the_first_patients_subscriber(setup, receiver):
    config, store, archive, app = setup
    client = app().test_client()
    sync(config, store, archive, names=("CT_small.dcm",))
    (content,) = studies(store).values()
    patient = orjson.loads(content)["subject"]["reference"]
    create(
        client,
        receiver,
        topic=f"{BASE}/SubscriptionTopic/imagingstudy-changed",
        content="full-resource",
        filters=[f"ImagingStudy?patient={patient}"],
    )
    wait_for(lambda: receiver.bundles("handshake"))
    moved = pydicom.dcmread(archive / "CT_small.dcm")
    moved.PatientID = "SOMEONE-ELSE"
    moved.save_as(archive / "CT_small.dcm")
    sync_source(store, config.sources[0])
    (got,) = wait_for(lambda: receiver.bundles("event-notification"))
    (entry,) = got["entry"][1:]
    assert orjson.loads(next(iter(studies(store).values())))["subject"]["reference"] != patient
    assert "resource" not in entry and entry["request"]["method"] == "PUT"  # id-only: no longer theirs
