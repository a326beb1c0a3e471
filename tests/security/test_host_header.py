"""The `Host` header is the client's word: no answer may send a client elsewhere on its say.

Werkzeug answers a path it can tidy (`//` merged, a slash added or removed) with a redirect
built from the request's `Host`, so `GET /fhir//Patient/x` with `Host: evil.example` sent the
client to `http://evil.example/fhir/Patient/x`. Such paths are refused with an OperationOutcome
instead, and nothing a request's `Host` says shows up in any answer.
"""

from __future__ import annotations

import pytest

from app.store.repository import Store
from app.web import create_app
from tests.support.access import load

EVIL = "evil.example"


@pytest.fixture
def client(open_config, sqlite_url):
    config = open_config(sqlite_url, wado_gateway=True)
    store = Store.from_config(config)
    load(store)
    app = create_app(config, store)
    yield app.test_client()
    store.close()


def _sample(rule: str) -> str:
    """A path the rule matches, each variable part filled with an id."""
    out = []
    for part in rule.split("/"):
        out.append("pacs" if part == "<source>" else "1.1" if part.startswith("<") else part)
    return "/".join(out)


def _variants(path: str) -> list[str]:
    """What Werkzeug could tidy into `path` with a redirect: doubled slashes anywhere, a
    trailing slash added, a leading one doubled."""
    parts = path.split("/")
    doubled = ["/".join(parts[:i] + [""] + parts[i:]) for i in range(1, len(parts))]
    return [*doubled, path + "/", path + "//", "/" + path, path.replace("/", "///", 2)]


def test_no_route_redirects_on_the_clients_host(client):
    rules = [rule for rule in client.application.url_map.iter_rules()]
    assert len(rules) > 20  # every route of the app, the gateway's too
    tried = 0
    for rule in rules:
        methods = sorted(rule.methods - {"OPTIONS", "HEAD"})
        for path in [_sample(rule.rule), *_variants(_sample(rule.rule))]:
            for method in methods:
                response = client.open(path, method=method, headers={"Host": EVIL})
                tried += 1
                assert not 300 <= response.status_code < 400, (method, path, response.headers.get("Location"))
                assert "Location" not in response.headers, (method, path)
                assert EVIL not in str(response.headers), (method, path)
                assert EVIL.encode() not in response.get_data(), (method, path)
    assert tried > 200


@pytest.mark.parametrize("path", ["/fhir//Patient/alice", "/fhir/Patient//alice", "//fhir/metadata", "/health//"])
def test_a_path_with_empty_segments_is_refused_with_an_operation_outcome(client, path):
    response = client.get(path, headers={"Host": EVIL})
    assert response.status_code == 404
    assert response.mimetype == "application/fhir+json"
    outcome = response.get_json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert outcome["issue"][0]["code"] == "not-found"


def test_files_are_not_served_from_the_working_directory(client):
    """Flask serves `static/` beside its root path unless told not to: the server has no files."""
    assert not [rule.rule for rule in client.application.url_map.iter_rules() if rule.endpoint == "static"]
