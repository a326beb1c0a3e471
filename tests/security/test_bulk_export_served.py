"""Bulk Data export as deployed: two `imaging-facade serve` nodes (gunicorn, two workers each) on
one PostgreSQL store and one shared export folder, a SMART Backend Services client that gets its
token from the test authorization server with a signed JWT assertion, and plain HTTP. The export
is started on one node and followed and downloaded on the other; the files hold what the store
holds; another backend client is turned away."""

from __future__ import annotations

import time

import orjson
import pytest
import requests

from app.config import load_config
from app.store.repository import Store
from app.sync import sync_source
from tests.support.bulk import stored
from tests.support.served import serving
from tests.support.smart_auth import AUDIENCE, BackendClient, bearer
from tests.support.stores import reset_postgres


@pytest.mark.slow
def test_an_export_started_on_one_node_is_polled_and_downloaded_on_another(
    tmp_path, postgres_url, archive, auth_server, write_config
):
    reset_postgres(postgres_url)
    config = {
        "store": postgres_url,
        "security": {
            "open": False,
            "issuer": auth_server.issuer,
            "audience": AUDIENCE,
            "jwks_uri": auth_server.jwks_uri,
            "token_endpoint": auth_server.token_url,
        },
        "sources": [{"name": "sample", "type": "folder", "path": str(archive), "timezone": "UTC"}],
        "export": {"directory": str(tmp_path / "shared-exports"), "poll_interval": 0.2},
    }
    loaded = write_config({**config, "server": {"base_url": AUDIENCE}}, name="sync.yaml")
    store = Store.from_config(loaded)
    sync_source(store, loaded.sources[0])
    backend = BackendClient(auth_server, "served-bulk")
    other = BackendClient(auth_server, "other-bulk")
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    try:
        with serving(config, tmp_path / "a", workers=2) as node_a, serving(config, tmp_path / "b", workers=2) as node_b:
            mine = bearer(backend.token("system/*.rs"))
            kicked = requests.get(
                f"{node_a}/$export?_type=ImagingStudy,Patient",
                headers={**mine, "Prefer": "respond-async", "Accept": "application/fhir+json"},
                timeout=10,
            )
            assert kicked.status_code == 202, kicked.text
            location = kicked.headers["Content-Location"]
            assert location.startswith(f"{node_a}/$export-status/")
            on_b = location.replace(node_a, node_b)
            deadline = time.monotonic() + 60
            while True:
                status = requests.get(on_b, headers={**mine, "Accept": "application/json"}, timeout=10)
                if status.status_code != 202:
                    break
                assert time.monotonic() < deadline
                time.sleep(float(status.headers["Retry-After"]) / 10)
            assert status.status_code == 200, status.text
            manifest = status.json()
            assert manifest["requiresAccessToken"] is True and manifest["error"] == []
            lines: dict[str, list[dict]] = {}
            for item in manifest["output"]:
                url = item["url"].replace(node_a, node_b)
                assert requests.get(url, headers=bearer(other.token("system/*.rs")), timeout=10).status_code == 404
                file = requests.get(url, headers={**mine, "Accept": "application/fhir+ndjson"}, timeout=10)
                assert file.status_code == 200 and file.headers["Content-Type"].startswith("application/fhir+ndjson")
                lines.setdefault(item["type"], []).extend(orjson.loads(x) for x in file.content.splitlines())
            for rtype in ("ImagingStudy", "Patient"):
                assert {r["id"]: r for r in lines[rtype]} == stored(store, rtype), rtype
            assert requests.delete(on_b, headers=mine, timeout=10).status_code == 202
            assert requests.get(location, headers=mine, timeout=10).status_code == 404
            assert not any((tmp_path / "shared-exports").iterdir())
    finally:
        store.close()
    assert load_config(tmp_path / "a" / "config.yaml").export is not None
