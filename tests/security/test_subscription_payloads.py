"""A `full-resource` Subscription carries the studies only to a subscriber whose SMART scopes let it
read them (Subscriptions R5 Backport IG v1.1.0, backport-payload-content: "the server is
responsible for ensuring that the content is appropriately secured"); otherwise its
notifications are `id-only`. Tokens of the real test authorization server; a real receiver on a
loopback port; real DICOM files synced after the subscriptions were made."""

from __future__ import annotations

import shutil

import pytest
from pydicom.data import get_testdata_file

from app.store.repository import Store
from app.sync import sync_source
from app.web import create_app
from tests.integration.test_subscription_delivery import Receiver, _events, wait_for
from tests.integration.test_subscriptions_api import subscription
from tests.support.smart_auth import AUDIENCE, SAMPLE_FILES, bearer, security_config


@pytest.fixture
def receiver():
    found = Receiver()
    yield found
    found.stop()


@pytest.fixture
def world(write_config, sqlite_url, auth_server, tmp_path):
    archive = tmp_path / "archive"
    archive.mkdir()
    config = write_config(
        {
            "store": sqlite_url,
            "server": {"base_url": AUDIENCE},
            "security": security_config(auth_server),
            "sources": [{"name": "sample", "type": "folder", "path": str(archive), "timezone": "UTC"}],
            "subscriptions": {"poll_interval": 0.05},
        }
    )
    store = Store.from_config(config)
    app = create_app(config, store)
    yield app, config, store, archive
    app.extensions["imaging-facade-notify"].stop()
    store.close()


@pytest.mark.parametrize(
    "scope, carries",
    [
        ("user/Subscription.cruds user/ImagingStudy.rs", True),
        ("user/Subscription.cruds", False),
        ("user/Subscription.cruds user/ImagingStudy.rs?modality=MR", False),
    ],
)
def test_full_resource_only_for_what_the_scopes_let_the_subscriber_read(world, receiver, auth_server, scope, carries):
    app, config, store, archive = world
    who = bearer(auth_server.sign({"scope": scope, "client_id": "ehr", "sub": "ehr"}))
    sent = subscription(topic=f"{AUDIENCE}/SubscriptionTopic/imagingstudy-available", content="full-resource")
    sent["channel"]["endpoint"] = receiver.url
    made = app.test_client().post(
        "/fhir/Subscription", json=sent, headers={**who, "Content-Type": "application/fhir+json"}
    )
    assert made.status_code == 201
    wait_for(lambda: receiver.bundles("handshake"))
    for name in SAMPLE_FILES:
        shutil.copyfile(get_testdata_file(name), archive / name)
    sync_source(store, config.sources[0])
    got = wait_for(lambda: (b := receiver.bundles("event-notification")) and sum(len(_events(x)) for x in b) >= 2 and b)
    entries = [e for bundle in got for e in bundle["entry"][1:]]
    assert len(entries) == len(SAMPLE_FILES)
    assert all(("resource" in e) == carries for e in entries)
    assert all(e["fullUrl"].startswith(f"{AUDIENCE}/ImagingStudy/") for e in entries)
