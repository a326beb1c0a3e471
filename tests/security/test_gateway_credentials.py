"""The WADO-RS gateway passes the app's request on to the archive with the archive's own
credentials, never the app's: a token the app put in the query string (RFC 6750 2.3) stays
behind, as its `Authorization` header does. The archive here is a real HTTP server on a
loopback port that records what it was asked; the study comes from pydicom's test data."""

from __future__ import annotations

import shutil
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from pydicom.data import get_testdata_file

from app.store.repository import Store
from app.sync import sync_source
from app.web import create_app


@pytest.fixture
def archive():
    """(its WADO-RS URL, the request lines it received)."""
    received: list[tuple[str, dict]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            received.append((self.path, dict(self.headers)))
            body = b"--b\r\nContent-Type: application/dicom\r\n\r\nDICM\r\n--b--\r\n"
            self.send_response(200)
            self.send_header("Content-Type", 'multipart/related; type="application/dicom"; boundary=b')
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/dicom-web", received
    server.shutdown()
    server.server_close()


def test_a_token_in_the_query_is_not_passed_on_to_the_archive(tmp_path, open_config, sqlite_url, archive):
    url, received = archive
    folder = tmp_path / "files"
    folder.mkdir()
    shutil.copyfile(get_testdata_file("CT_small.dcm"), folder / "ct.dcm")
    source = {"name": "files", "type": "folder", "path": str(folder), "wado_url": url, "timeout": 5}
    config = open_config(sqlite_url, wado_gateway=True, sources=[source])
    store = Store.from_config(config)
    assert sync_source(store, config.sources[0]).error is None
    client = create_app(config, store).test_client()
    study = client.get("/fhir/ImagingStudy").get_json()["entry"][0]["resource"]["id"]
    response = client.get(
        f"/wado-rs/files/studies/{study}/metadata?access_token=app-secret-1&includefield=00100010"
        "&id_token=app-secret-2&charset=utf-8",
        headers={"Authorization": "Bearer app-secret-3", "Accept": "application/dicom+json"},
    )
    store.close()
    assert response.status_code == 200
    [(path, headers)] = received
    assert path.startswith(f"/dicom-web/studies/{study}/metadata?")
    assert "app-secret" not in path and "app-secret" not in str(headers)
    assert sorted(path.partition("?")[2].split("&")) == ["charset=utf-8", "includefield=00100010"]
