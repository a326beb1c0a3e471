"""The audit trail (IHE Basic Audit Log Patterns, FHIR R4 AuditEvent), on SQLite and PostgreSQL.

Each read, vread, history, search and refused request writes exactly one AuditEvent, read
back here straight from its table; `GET /fhir/AuditEvent` searches them with a user- or
system-level AuditEvent scope only. Data: see conftest.
"""

from __future__ import annotations

import base64
import shutil
from datetime import UTC, datetime, timedelta
from urllib.parse import urlencode

import orjson
import pytest
from fhir.resources.R4B.auditevent import AuditEvent
from sqlalchemy import text

from app.store.audit_log import AuditLog
from app.store.audit_record import render_event
from app.store.audit_spool import SUFFIX, encode, store_digest
from app.store.repository import Store
from app.store.tables import AuditIndexRow
from app.web import create_app
from tests.support.access import grant, load, patient_access, system_access
from tests.support.bundles import next_link

ACCESSES = {
    "alice": patient_access("alice", subject="user-1", client_id="viewer"),
    "auditor": system_access(grant("system", "AuditEvent"), client_id="audit-tool"),
    "user-auditor": system_access(grant("user", "AuditEvent"), client_id="audit-ui"),
    "studies-only": system_access(grant("system", "ImagingStudy"), client_id="backend"),
    "alice-audit": patient_access("alice", grant("patient", "AuditEvent")),
}


@pytest.fixture
def audited(people_app):
    people_app.accesses.update(ACCESSES)
    store = people_app.extensions["imaging-facade"].store
    client = people_app.test_client()

    def events() -> list[dict]:
        people_app.extensions["imaging-facade"].audit_log.flush()  # the spool into the tables
        with store.engine.connect() as conn:
            rows = conn.execute(text("SELECT id, recorded, content FROM audit_event ORDER BY recorded, id")).all()
        return [orjson.loads(render_event(*r)) for r in rows]

    def one(method, url, who=None, **kwargs):
        """Run one request; return it and the one AuditEvent it wrote (asserting exactly one)."""
        before = len(events())
        headers = {"X-Test-Access": who} if who else {}
        response = client.open(url, method=method, headers=headers, **kwargs)
        after = events()
        assert len(after) == before + 1, f"{url} wrote {len(after) - before} AuditEvents"
        return response, after[-1]

    one.events = events
    one.client = client
    return one


def _patients(event) -> list[str]:
    return sorted(e["what"]["reference"] for e in event["entity"] if e["role"]["code"] == "1")


def _query(event) -> str:
    entity = next(e for e in event["entity"] if e["role"]["code"] == "24")
    assert entity["type"]["code"] == "2"
    return base64.b64decode(entity["query"]).decode()


def _check_common(event, who, client_id, outcome):
    AuditEvent.model_validate(event)  # a valid R4 AuditEvent
    assert event["type"] == {
        "system": "http://terminology.hl7.org/CodeSystem/audit-event-type",
        "code": "rest",
        "display": "RESTful Operation",
    }
    assert event["outcome"] == outcome
    requestor = next(a for a in event["agent"] if a["requestor"])
    assert requestor["who"]["identifier"]["value"] == who
    assert requestor.get("altId") == client_id
    assert requestor["network"]["address"] == "127.0.0.1"
    assert event["source"]["site"] == "http://testserver/fhir"
    recorded = datetime.fromisoformat(event["recorded"])
    assert abs(datetime.now(UTC) - recorded) < timedelta(minutes=1)


@pytest.mark.parametrize(
    "url, subtype, action, patients",
    [
        ("/fhir/ImagingStudy/1.3", "read", "R", ["Patient/alice-b"]),
        ("/fhir/ImagingStudy/1.1/_history/1", "vread", "R", ["Patient/alice"]),
        ("/fhir/Patient/dora/_history", "history-instance", "R", ["Patient/dora"]),
        ("/fhir/ImagingStudy?modality=CT&_count=10", "search-type", "E", ["Patient/alice", "Patient/alice-b"]),
        ("/fhir/Patient?_id=alice&_revinclude=ImagingStudy:patient", "search-type", "E", ["Patient/alice"]),
        (
            "/fhir/Endpoint?_revinclude=ImagingStudy:endpoint&_count=10",
            "search-type",
            "E",
            ["Patient/alice", "Patient/alice-b", "Patient/dora"],
        ),
        ("/fhir/Endpoint/pacs", "read", "R", []),
        (
            "/fhir/ImagingStudy/_history?_count=50",
            "history-type",
            "E",
            ["Patient/alice", "Patient/alice-b", "Patient/dora"],
        ),
        ("/fhir/_history?_count=50", "history-system", "E", ["Patient/alice", "Patient/alice-b", "Patient/dora"]),
    ],
)
def test_each_interaction_writes_one_event(audited, url, subtype, action, patients):
    response, event = audited("GET", url, "alice")
    assert response.status_code == 200
    _check_common(event, "user-1", "viewer", "0")
    assert event["subtype"][0]["code"] == subtype and event["action"] == action
    assert _patients(event) == patients  # the patients whose data the answer carried
    assert _query(event) == url.partition("?")[2]


def test_post_search_records_the_form_body(audited):
    response, event = audited("POST", "/fhir/ImagingStudy/_search", "alice", data={"modality": "US"})
    assert response.status_code == 200
    assert event["subtype"][0]["code"] == "search-type"
    assert _query(event) == "modality=US"
    assert _patients(event) == ["Patient/dora"]


@pytest.mark.parametrize(
    "url, status",
    [
        ("/fhir/ImagingStudy?patient=bob", 403),
        ("/fhir/ImagingStudy/2.1", 404),
        ("/fhir/ImagingStudy?started=yesterday", 400),
    ],
)
def test_refused_requests_are_audited(audited, url, status):
    response, event = audited("GET", url, "alice")
    assert response.status_code == status
    _check_common(event, "user-1", "viewer", "4")
    assert event["outcomeDesc"] == f"HTTP {status}"
    assert _patients(event) == []  # nothing was returned
    assert _query(event) == url.partition("?")[2]


def test_unauthenticated_requests_are_audited(store_url, write_config):
    config = write_config(
        {"store": store_url, "server": {"base_url": "http://testserver/fhir"}, "security": {"open": False}}
    )
    store = Store.from_config(config)
    load(store)
    app = create_app(config, store)
    client = app.test_client()
    assert client.get("/fhir/ImagingStudy?patient=alice").status_code == 401
    assert client.get("/fhir/AuditEvent").status_code == 401
    app.extensions["imaging-facade"].audit_log.flush()
    with store.engine.connect() as conn:
        rows = [
            orjson.loads(render_event(*r))
            for r in conn.execute(text("SELECT id, recorded, content FROM audit_event ORDER BY recorded"))
        ]
    store.close()
    assert len(rows) == 2
    event = rows[0]
    AuditEvent.model_validate(event)
    assert event["outcome"] == "4" and event["outcomeDesc"] == "HTTP 401"
    assert event["subtype"][0]["code"] == "search-type"
    assert next(a for a in event["agent"] if a["requestor"])["who"] == {"display": "unknown (no valid access token)"}
    assert base64.b64decode(event["entity"][0]["query"]) == b"patient=alice"


#: a signed JWT's shape (header.payload.signature, base64url of JSON), and opaque credentials
JWT = "eyJhbGciOiJSUzM4NCIsInR5cCI6ImF0K2p3dCJ9.eyJzdWIiOiJ1c2VyLTEiLCJwYXRpZW50IjoiYWxpY2UifQ.c2lnbmVkLWJ5LWFz"
CREDENTIALS = [
    ("access_token", JWT),  # RFC 6750 2.2 (form body) and 2.3 (URI query)
    ("access_token", "opaque-7f3a9c"),
    ("ACCESS_TOKEN", "opaque-4b1e"),
    ("id_token", "opaque-id-5d2c"),
    ("refresh_token", "opaque-refresh-88aa"),
    ("token", "opaque-introspected-3c3c"),
    ("code", "auth-code-91ff"),
    ("client_secret", "client-secret-6e6e"),
    ("client_assertion", "assertion-0b0b"),
    ("name", f"Bearer {JWT[:20]}"),  # an Authorization header's value, wherever it is put
    ("identifier", JWT),  # a JWT under any name
]


def _trail(app, store) -> tuple[bytes, list[str]]:
    """Everything the trail holds (the spool segments on disk, then the stored rows, their
    index and the AuditEvents made of them), and the queries its events record."""
    audit_log = app.extensions["imaging-facade"].audit_log
    spooled = b"".join(path.read_bytes() for path in audit_log.spool.directory.iterdir() if path.is_file())
    audit_log.flush()
    with store.engine.connect() as conn:
        rows = conn.execute(text("SELECT id, recorded, content FROM audit_event ORDER BY recorded")).all()
        index = conn.execute(text("SELECT value FROM audit_index")).scalars().all()
    events = [render_event(*r) for r in rows]
    queries = [_query(orjson.loads(event)) for event in events]
    stored = b"".join(bytes(r.content) for r in rows) + b"".join(events) + "".join(index).encode()
    return spooled + stored + "".join(queries).encode(), queries


@pytest.mark.parametrize("where", ["query", "form"])
def test_tokens_sent_as_parameters_are_never_stored(store_url, write_config, where):
    """RFC 6750 2.2/2.3 tokens (and other OAuth credentials) in the URL or a form body are
    refused (only the Authorization header counts), and the trail records the request with
    their values replaced: whoever may search AuditEvent must not find a usable token."""
    config = write_config(
        {"store": store_url, "server": {"base_url": "http://testserver/fhir"}, "security": {"open": False}}
    )
    store = Store.from_config(config)
    load(store)
    app = create_app(config, store)
    client = app.test_client()
    params = [("patient", "alice"), *CREDENTIALS]
    if where == "query":
        response = client.get("/fhir/ImagingStudy", query_string=params)
    else:
        response = client.post(
            "/fhir/ImagingStudy/_search", data=urlencode(params), content_type="application/x-www-form-urlencoded"
        )
    assert response.status_code == 401
    trail, queries = _trail(app, store)
    store.close()
    for _, value in CREDENTIALS:
        secret = value.removeprefix("Bearer ")
        assert secret[:12].encode() not in trail, secret
    # the request is recorded, what is not a credential as sent, and which parameters were sent
    assert queries == [
        "patient=alice&access_token=REDACTED&access_token=REDACTED&ACCESS_TOKEN=REDACTED&id_token=REDACTED"
        "&refresh_token=REDACTED&token=REDACTED&code=REDACTED&client_secret=REDACTED&client_assertion=REDACTED"
        "&name=REDACTED&identifier=REDACTED"
    ]


@pytest.mark.parametrize(
    "proxies, forwarded, recorded",
    [
        (0, "203.0.113.7", "127.0.0.1"),  # no proxy configured: the header is the client's word only
        (1, "203.0.113.7", "203.0.113.7"),  # the load balancer's entry
        (1, "198.51.100.1, 203.0.113.7", "203.0.113.7"),  # what the client put before it is not believed
        (2, "198.51.100.1, 203.0.113.7", "198.51.100.1"),
    ],
)
def test_audit_records_the_client_address_behind_trusted_proxies(store_url, write_config, proxies, forwarded, recorded):
    config = write_config({"store": store_url, "server": {"trusted_proxies": proxies}, "security": {"open": True}})
    store = Store.from_config(config)
    load(store)
    app = create_app(config, store)
    response = app.test_client().get(
        "/fhir/ImagingStudy?patient=alice",
        headers={"X-Forwarded-For": forwarded},
        environ_base={"REMOTE_ADDR": "127.0.0.1"},
    )
    assert response.status_code == 200
    app.extensions["imaging-facade"].audit_log.flush()
    with store.engine.connect() as conn:
        event = orjson.loads(render_event(*conn.execute(text("SELECT id, recorded, content FROM audit_event")).one()))
    store.close()
    assert next(a for a in event["agent"] if a["requestor"])["network"] == {"address": recorded, "type": "2"}


def test_audit_can_be_off_only_in_open_mode(store_url, write_config):
    from app.config import ConfigError

    with pytest.raises(ConfigError) as refused:
        write_config({"store": store_url, "security": {"open": False, "audit": False}})
    assert "security.audit" in str(refused.value)
    config = write_config(
        {
            "store": store_url,
            "server": {"base_url": "http://testserver/fhir"},
            "security": {"open": True, "audit": False},
        }
    )
    store = Store.from_config(config)
    load(store)
    app = create_app(config, store)
    client = app.test_client()
    assert client.get("/fhir/ImagingStudy?patient=alice").status_code == 200
    app.extensions["imaging-facade"].audit_log.flush()
    with store.engine.connect() as conn:
        count = conn.execute(text("SELECT COUNT(*) FROM audit_event")).scalar()
    store.close()
    assert count == 0


def test_open_mode_is_audited_as_anonymous(audited):
    response, event = audited("GET", "/fhir/Patient/alice")
    assert response.status_code == 200
    assert next(a for a in event["agent"] if a["requestor"])["who"] == {"display": "anonymous"}
    assert _patients(event) == ["Patient/alice"]


def test_metadata_and_health_are_not_audited(audited):
    before = len(audited.events())
    assert audited.client.get("/fhir/metadata").status_code == 200
    assert audited.client.get("/health").status_code == 200
    assert len(audited.events()) == before


def _search(audited, query, who="auditor"):
    response, _ = audited("GET", f"/fhir/AuditEvent?{query}", who)
    assert response.status_code == 200, response.get_data(as_text=True)
    return response.get_json()


def test_audit_event_search(audited):
    audited("GET", "/fhir/ImagingStudy/1.1", "alice")  # alice
    audited("GET", "/fhir/ImagingStudy?patient=bob", "alice")  # refused
    audited("GET", "/fhir/ImagingStudy/2.2", "studies-only")  # bob, another client
    events = audited.events()
    assert [e["outcome"] for e in events] == ["0", "4", "0"]

    by_patient = _search(audited, "patient=alice")
    assert by_patient["total"] == 1 and by_patient["entry"][0]["resource"]["id"] == events[0]["id"]
    assert _search(audited, "patient=Patient/bob")["entry"][0]["resource"]["id"] == events[2]["id"]
    assert _search(audited, "patient=alice,bob")["total"] == 2
    assert _search(audited, "outcome=4")["entry"][0]["resource"]["id"] == events[1]["id"]
    assert _search(audited, "outcome=http://hl7.org/fhir/audit-event-outcome|0")["total"] >= 2
    assert _search(audited, "agent=user-1")["total"] == 2  # the subject…
    assert _search(audited, "agent=viewer")["total"] == 2  # …and the client both find them
    assert _search(audited, "agent=backend")["total"] == 1
    assert _search(audited, "entity-type=1&agent=viewer")["total"] == 1  # only the read returned a patient
    assert _search(audited, "entity-type=2&agent=viewer")["total"] == 2  # every event has its query
    assert _search(audited, "entity-type=1,2&agent=viewer")["total"] == 2
    assert _search(audited, "entity-type=3&agent=viewer")["total"] == 0
    today = datetime.now(UTC).date().isoformat()
    assert _search(audited, f"date=ge{today}&agent=viewer,backend")["total"] == 3
    assert _search(audited, "date=lt2000-01-01")["total"] == 0
    # newest first, paged; the searches of the trail are in it as well
    first = _search(audited, "_count=2")
    assert first["entry"][0]["resource"]["recorded"] >= first["entry"][1]["resource"]["recorded"]
    seen, url = [], "/fhir/AuditEvent?_count=2"
    while url:
        response = audited.client.get(url, headers={"X-Test-Access": "auditor"})
        seen += [e["resource"]["id"] for e in response.get_json()["entry"]]
        url = next_link(response.get_json())
    assert len(seen) == len(set(seen)) and set(e["id"] for e in events) <= set(seen)


@pytest.mark.parametrize("query", ["date=yesterday", "outcome=urn:other|0", "patient=Device/x/y", "_count=x"])
def test_audit_event_search_bad_values_are_400(audited, query):
    response, _ = audited("GET", f"/fhir/AuditEvent?{query}", "auditor")
    assert response.status_code == 400
    assert query.split("=")[0] in response.get_json()["issue"][0]["diagnostics"]


@pytest.mark.parametrize(
    "who, status",
    [
        ("alice", 403),
        ("alice-audit", 403),
        ("studies-only", 403),
        ("auditor", 200),
        ("user-auditor", 200),
    ],
)
def test_audit_event_search_needs_a_user_or_system_scope(audited, who, status):
    response, event = audited("GET", "/fhir/AuditEvent", who)
    assert response.status_code == status
    assert event["outcome"] == ("0" if status == 200 else "4")


def test_audit_events_stay_out_of_resource_searches(audited):
    audited("GET", "/fhir/ImagingStudy/1.1", "alice")
    event_id = audited.events()[-1]["id"]
    # readable by id with the trail's own permission only (tests/security/test_batch.py)
    assert audited.client.get(f"/fhir/AuditEvent/{event_id}", headers={"X-Test-Access": "alice"}).status_code == 403
    assert audited.client.get(f"/fhir/ImagingStudy/{event_id}").status_code == 404
    body = audited.client.get("/fhir/Patient?_revinclude=*&_include:iterate=*&_count=50").get_json()
    assert {e["resource"]["resourceType"] for e in body["entry"]} == {"Patient", "ImagingStudy", "Endpoint"}


def test_no_trail_no_data(audited):
    """If the event cannot be put on disk, the answer is a 500, not the data."""
    audit_log = audited.client.application.extensions["imaging-facade"].audit_log
    audit_log.flush()  # the next event opens a new spool segment
    shutil.rmtree(audit_log.spool.directory, ignore_errors=True)
    audit_log.spool.directory.write_text("a file where the spool directory should be")
    response = audited.client.get("/fhir/ImagingStudy/1.1", headers={"X-Test-Access": "alice"})
    assert response.status_code == 500
    assert response.get_json()["resourceType"] == "OperationOutcome"
    assert "1.1" not in response.get_data(as_text=True)


def test_events_wait_in_the_spool_while_the_database_refuses_them(audited):
    """Spooled events the database cannot take yet stay on disk and are stored once it can."""
    store = audited.client.application.extensions["imaging-facade"].store
    audit_log = audited.client.application.extensions["imaging-facade"].audit_log
    before = len(audited.events())
    with store.engine.begin() as conn:
        conn.execute(text("DROP TABLE audit_index"))
    response = audited.client.get("/fhir/ImagingStudy/1.1", headers={"X-Test-Access": "alice"})
    assert response.status_code == 200  # on disk: served
    with pytest.raises(Exception):  # noqa: B017 - whatever the database raises for a missing table
        audit_log.flush()
    AuditIndexRow.__table__.create(store.engine)
    audit_log.flush()
    events = audited.events()
    assert len(events) == before + 1
    assert events[-1]["entity"][1]["what"]["reference"] == "ImagingStudy/1.1"


def test_health_reports_audit_events_not_yet_stored(audited):
    """A segment no server stores (its writer died, nothing drained since) shows in /health, and
    an event waiting over a minute marks the server degraded; stored, the backlog is gone."""
    audit_log = audited.client.application.extensions["imaging-facade"].audit_log
    audit_log.flush()
    health = audited.client.get("/health").get_json()
    assert health["status"] == "ok"
    assert health["audit"] == {"status": "ok", "spooledSegments": 0, "oldestSpooledSeconds": None}
    two_minutes_ago = int((datetime.now(UTC) - timedelta(minutes=2)).timestamp() * 1_000_000)
    spool = audit_log.spool
    spool.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    (spool.directory / f"{spool.prefix}999-dead{SUFFIX}").write_bytes(
        encode("dead-1", two_minutes_ago, "0", b'{"resourceType":"AuditEvent","id":"dead-1"}', [("agent", "x")])
    )
    health = audited.client.get("/health").get_json()
    assert health["status"] == "degraded"
    assert health["audit"]["status"] == "behind" and health["audit"]["spooledSegments"] == 1
    assert 119 <= health["audit"]["oldestSpooledSeconds"] < 180
    audit_log.flush()
    health = audited.client.get("/health").get_json()
    assert health["status"] == "ok" and health["audit"]["spooledSegments"] == 0


def test_health_has_no_audit_part_when_audit_is_off(store_url, write_config):
    config = write_config({"store": store_url, "security": {"open": True, "audit": False}})
    store = Store.from_config(config)
    health = create_app(config, store).test_client().get("/health").get_json()
    store.close()
    assert health["status"] == "ok" and "audit" not in health


def test_capability_statement_lists_the_audit_search_and_read(audited):
    body = audited.client.get("/fhir/metadata").get_json()
    audit = next(r for r in body["rest"][0]["resource"] if r["type"] == "AuditEvent")
    assert [i["code"] for i in audit["interaction"]] == ["read", "search-type"]
    for param in audit["searchParam"]:  # each listed parameter is understood (strict: unknown ones are 400)
        value = {"date": "ge2000-01-01", "patient": "alice", "agent": "x", "entity-type": "1", "outcome": "0"}
        response = audited.client.get(
            f"/fhir/AuditEvent?{param['name']}={value[param['name']]}",
            headers={"X-Test-Access": "auditor", "Prefer": "handling=strict"},
        )
        assert response.status_code == 200, param
    assert (
        audited.client.get(
            "/fhir/AuditEvent?colour=x", headers={"X-Test-Access": "auditor", "Prefer": "handling=strict"}
        ).status_code
        == 400
    )
    assert "Patient.link" in body["rest"][0]["security"]["description"]


@pytest.mark.npm
def test_audit_parameters_are_the_official_r4_ones():
    from app.search.params import AUDIT_EVENT_PARAMS
    from tests.support import r4_package

    official = r4_package.search_parameters()
    for param in AUDIT_EVENT_PARAMS:
        definition = official[("AuditEvent", param.name)]
        assert (definition["url"], definition["type"]) == (param.definition, param.type), param.name


def test_audit_search_serves_each_event_whole_as_written_and_as_stored_before(audited):
    """The trail keeps a compact record of each event and the search makes the AuditEvent of it;
    events a server stored as AuditEvent JSON (earlier releases) are served as they are."""
    _, event = audited("GET", "/fhir/ImagingStudy/1.1", "alice")
    earlier = {
        "resourceType": "AuditEvent",
        "id": "stored-whole",
        "recorded": "2020-01-02T03:04:05.000Z",
        "type": {"code": "rest"},
        "outcome": "0",
        "agent": [],
        "source": {"observer": {"display": "x"}},
    }
    audit_log = audited.client.application.extensions["imaging-facade"].audit_log
    audit_log._insert(
        [("stored-whole", 1_577_934_245_000_000, "0", orjson.dumps(earlier), [("agent", "old")])], may_exist=False
    )
    served = {e["resource"]["id"]: e["resource"] for e in _search(audited, "_count=100")["entry"]}
    assert served[event["id"]] == event
    AuditEvent.model_validate(served[event["id"]])
    assert served["stored-whole"] == earlier
    assert _search(audited, "agent=old")["entry"][0]["resource"] == earlier


def test_audit_search_speaks_json_and_xml_and_a_refused_format_is_audited(audited):
    response, event = audited("GET", "/fhir/AuditEvent?_format=xml", "auditor")
    assert response.status_code == 200 and response.mimetype == "application/fhir+xml"
    response, event = audited("GET", "/fhir/AuditEvent?_format=ttl", "auditor")
    assert response.status_code == 406 and event["outcome"] == "4"


def test_a_dead_server_spool_is_stored_once(store_url, write_config, tmp_path):
    """Events a server process spooled before it died are stored by the next drain, once each,
    also those a drain had stored just before the crash (the segment was not yet removed)."""
    config = write_config({"store": store_url, "security": {"open": True}})
    store = Store.from_config(config)
    audit_log = AuditLog(store.url, tmp_path / "spool")
    events = [
        (
            f"dead-{n}",
            1_700_000_000_000_000 + n,
            "0",
            b'{"resourceType":"AuditEvent","id":"dead-%d"}' % n,
            [("patient", "alice"), ("agent", "viewer")],
        )
        for n in range(3)
    ]
    audit_log._insert(events[:1], may_exist=False)  # stored before the crash
    (tmp_path / "spool").mkdir()
    (tmp_path / "spool" / f"{store_digest(store.url)}-999-dead.spool").write_bytes(
        b"".join(encode(*event) for event in events)
    )
    assert audit_log.flush() == 3
    with store.engine.connect() as conn:
        ids = [r[0] for r in conn.execute(text("SELECT id FROM audit_event ORDER BY id"))]
        index = conn.execute(text("SELECT COUNT(*) FROM audit_index WHERE event_id LIKE 'dead-%'")).scalar()
    audit_log.close()
    store.close()
    assert ids == ["dead-0", "dead-1", "dead-2"]
    assert index == 6
    assert list((tmp_path / "spool").iterdir()) == []
