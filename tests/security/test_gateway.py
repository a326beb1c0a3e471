"""The WADO-RS gateway against a real Orthanc (DICOMweb plugin) holding real DICOM files.

pydicom's CT_small.dcm and MR_small.dcm belong to two patients. A token for the CT's
patient gets the CT's bytes through the gateway exactly as Orthanc stores them (the
DICOM file it was sent); the MR study is outside its compartment and refused.
"""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
import requests
from pydicom.data import get_testdata_file
from sqlalchemy import text

from app.mapping import map_endpoint
from app.store.audit_record import render_event
from app.store.repository import Store
from app.sync import sync_source
from app.web import create_app
from testbed.orthanc import OrthancServer
from tests.support.access import grant, install_accesses, patient_access

DICOM_PARTS = 'multipart/related; type="application/dicom"'
FILES = {"CT": get_testdata_file("CT_small.dcm"), "MR": get_testdata_file("MR_small.dcm")}


pytestmark = pytest.mark.orthanc


@pytest.fixture(scope="module")
def pacs():
    with OrthancServer() as server:
        server.upload(list(FILES.values()))
        yield server


def _parts(response) -> list[bytes]:
    """The payloads of a multipart/related answer, split at the boundary its Content-Type names."""
    content_type = response.headers["Content-Type"]
    assert content_type.startswith("multipart/related")
    boundary = content_type.split("boundary=")[1].split(";")[0].strip('"').encode()
    parts = []
    body = response.content if isinstance(response, requests.Response) else response.data
    for chunk in body.split(b"--" + boundary)[1:]:
        if chunk.startswith(b"--"):
            break
        headers, _, payload = chunk.partition(b"\r\n\r\n")
        parts.append(payload.removesuffix(b"\r\n"))
    return parts


@pytest.fixture
def gateway(pacs, store_url, open_config):
    config = open_config(
        store_url, wado_gateway=True, sources=[{"name": "pacs", "type": "dicomweb", "url": pacs.dicomweb_url}]
    )
    store = Store.from_config(config)
    summary = sync_source(store, config.sources[0])
    assert summary.error is None and summary.failed == 0
    app = create_app(config, store)
    app.accesses = {}
    install_accesses(app, app.accesses)
    client = app.test_client()
    studies = {
        s["modality"][0]["code"]: s
        for s in (e["resource"] for e in client.get("/fhir/ImagingStudy?_count=10").get_json()["entry"])
    }
    ct_patient = studies["CT"]["subject"]["reference"].removeprefix("Patient/")
    app.accesses.update(
        {
            "ct-patient": patient_access(ct_patient),
            "no-study-scope": patient_access(ct_patient, grant("patient", "Patient")),
        }
    )
    yield client, studies, pacs
    store.close()


def _instance_path(study: dict) -> str:
    series = study["series"][0]
    return f"/studies/{study['id']}/series/{series['uid']}/instances/{series['instance'][0]['uid']}"


def test_endpoint_points_at_the_gateway(gateway):
    client, studies, _ = gateway
    endpoint = client.get("/fhir/Endpoint/pacs", headers={"X-Test-Access": "ct-patient"}).get_json()
    assert endpoint["address"] == "http://testserver/wado-rs/pacs"
    assert endpoint["status"] == "active"
    flag = endpoint["extension"][0]
    assert flag["url"] == "http://fhir.org/argonaut/smart-imaging/StructureDefinition/requires-access-token"
    assert flag["valueBoolean"] is False  # an open server takes no token


def test_endpoint_requires_a_token_when_the_server_does(write_config, sqlite_url):
    config = write_config(
        {
            "store": sqlite_url,
            "server": {"base_url": "https://imaging.example/api/fhir", "wado_gateway": True},
            "sources": [
                {"name": "pacs", "type": "dicomweb", "url": "http://pacs:8042/dicom-web"},
                {"name": "files", "type": "folder", "path": "."},
            ],
        }
    )
    pacs, files = (map_endpoint(src.mapping_context()) for src in config.sources)
    assert pacs["address"] == "https://imaging.example/api/wado-rs/pacs"
    assert pacs["extension"][0]["valueBoolean"] is True
    assert config.sources[0].wado_url == "http://pacs:8042/dicom-web"  # where the gateway forwards
    assert files["status"] == "off" and files["extension"][0]["valueBoolean"] is False


@pytest.mark.parametrize("prefix", ["/wado-rs/pacs", "/wado-rs"])
def test_instance_bytes_pass_through_unchanged(gateway, prefix):
    client, studies, pacs = gateway
    path = _instance_path(studies["CT"])
    through = client.get(prefix + path, headers={"X-Test-Access": "ct-patient", "Accept": DICOM_PARTS})
    assert through.status_code == 200, through.get_data(as_text=True)
    direct = requests.get(pacs.dicomweb_url + path, headers={"Accept": DICOM_PARTS, "Accept-Encoding": "identity"})
    assert through.headers["Content-Type"].startswith(DICOM_PARTS)
    # Orthanc draws a new boundary per answer: the parts are compared, and the file itself
    assert _parts(through) == _parts(direct) == [Path(FILES["CT"]).read_bytes()]


def test_study_series_metadata_and_frames(gateway):
    client, studies, pacs = gateway
    study = studies["CT"]
    headers = {"X-Test-Access": "ct-patient"}
    whole = client.get(
        f"/wado-rs/pacs/studies/{study['id']}", headers={**headers, "Accept": DICOM_PARTS}, buffered=False
    )
    assert whole.is_streamed  # passed on chunk by chunk as the archive sends it, never held whole
    whole.make_sequence()
    assert _parts(whole) == [Path(FILES["CT"]).read_bytes()]
    series = client.get(
        f"/wado-rs/pacs/studies/{study['id']}/series/{study['series'][0]['uid']}",
        headers={**headers, "Accept": DICOM_PARTS},
    )
    assert _parts(series) == [Path(FILES["CT"]).read_bytes()]
    for path in (f"/studies/{study['id']}/metadata", _instance_path(study) + "/metadata"):
        through = client.get("/wado-rs/pacs" + path, headers=headers)
        direct = requests.get(pacs.dicomweb_url + path, headers={"Accept-Encoding": "identity"})
        assert through.status_code == 200
        assert through.headers["Content-Type"] == direct.headers["Content-Type"] == "application/dicom+json"
        assert through.get_json() == direct.json()
    frame = client.get(
        "/wado-rs/pacs" + _instance_path(study) + "/frames/1",
        headers={**headers, "Accept": 'multipart/related; type="application/octet-stream"'},
    )
    direct = requests.get(
        pacs.dicomweb_url + _instance_path(study) + "/frames/1",
        headers={"Accept": 'multipart/related; type="application/octet-stream"', "Accept-Encoding": "identity"},
    )
    assert frame.status_code == direct.status_code == 200
    assert _parts(frame) == _parts(direct) and len(_parts(frame)[0]) == 128 * 128 * 2


def test_a_study_outside_the_compartment_is_refused(gateway):
    client, studies, _ = gateway
    headers = {"X-Test-Access": "ct-patient", "Accept": DICOM_PARTS}
    for path in (
        f"/studies/{studies['MR']['id']}",
        _instance_path(studies["MR"]),
        f"/studies/{studies['MR']['id']}/metadata",
    ):
        for prefix in ("/wado-rs/pacs", "/wado-rs"):
            response = client.get(prefix + path, headers=headers)
            assert response.status_code == 404
            assert b"DICM" not in response.data
    # without an ImagingStudy scope, not even the token's own patient's images
    no_scope = client.get(
        "/wado-rs/pacs" + _instance_path(studies["CT"]),
        headers={"X-Test-Access": "no-study-scope", "Accept": DICOM_PARTS},
    )
    assert no_scope.status_code == 403


def test_another_studys_series_named_under_an_allowed_study_is_refused(gateway):
    """Access is decided on the study: a series or instance of the MR study (another patient)
    named under the CT study the token may see must not come through, whatever the archive
    would make of such a path."""
    client, studies, _ = gateway
    headers = {"X-Test-Access": "ct-patient", "Accept": DICOM_PARTS}
    ct, mr = studies["CT"], studies["MR"]
    mr_series = mr["series"][0]
    for rest in (
        f"/series/{mr_series['uid']}",
        f"/series/{mr_series['uid']}/metadata",
        f"/series/{mr_series['uid']}/instances/{mr_series['instance'][0]['uid']}",
        f"/series/{ct['series'][0]['uid']}/instances/{mr_series['instance'][0]['uid']}",
    ):
        response = client.get(f"/wado-rs/pacs/studies/{ct['id']}{rest}", headers=headers)
        assert response.status_code == 404, rest
        assert b"DICM" not in response.data
        # refused here, before the archive was asked (an archive's own 404 passes through as it is)
        assert response.get_json()["resourceType"] == "OperationOutcome"
    # the CT study's own series still comes through
    assert client.get("/wado-rs/pacs" + _instance_path(ct), headers=headers).status_code == 200


def test_unknown_source_or_study_is_404(gateway):
    client, studies, _ = gateway
    assert client.get(f"/wado-rs/other/studies/{studies['CT']['id']}").status_code == 404
    assert client.get("/wado-rs/pacs/studies/1.2.3.4.5").status_code == 404
    assert client.get(f"/wado-rs/pacs/studies/{studies['CT']['id']}/series/x;drop").status_code == 404


def test_gateway_reads_are_audited(gateway):
    client, studies, _ = gateway
    store = client.application.extensions["imaging-facade"].store
    client.get("/wado-rs/pacs" + _instance_path(studies["CT"]), headers={"X-Test-Access": "ct-patient"})
    client.application.extensions["imaging-facade"].audit_log.flush()
    with store.engine.connect() as conn:
        event = orjson.loads(
            render_event(
                *conn.execute(
                    text("SELECT id, recorded, content FROM audit_event ORDER BY recorded DESC, id DESC")
                ).first()
            )
        )
    assert event["subtype"][0]["code"] == "read" and event["outcome"] == "0"
    what = [e["what"]["reference"] for e in event["entity"] if "what" in e]
    assert what == [f"ImagingStudy/{studies['CT']['id']}", studies["CT"]["subject"]["reference"]]


def test_bad_gateway_setting_names_its_key(write_config, sqlite_url):
    from app.config import ConfigError

    with pytest.raises(ConfigError) as err:
        write_config({"store": sqlite_url, "server": {"wado_gateway": "sometimes"}})
    assert "server.wado_gateway" in str(err.value)


def test_on_demand_fetches_only_the_compartments_patients(pacs, store_url, open_config):
    """A patient-context search naming another patient's identifier must not make the facade
    ask the archive about that patient (nor let the token time that fetch)."""
    config = open_config(
        store_url,
        sources=[
            {"name": "pacs", "type": "dicomweb", "url": pacs.dicomweb_url, "on_demand": {"max_age": 0, "deadline": 10}}
        ],
    )
    store = Store.from_config(config)
    sync_source(store, config.sources[0])
    app = create_app(config, store)
    app.accesses = {}
    install_accesses(app, app.accesses)
    client = app.test_client()
    patients = {}
    for entry in client.get("/fhir/ImagingStudy?_include=ImagingStudy:patient&_count=10").get_json()["entry"]:
        if entry["resource"]["resourceType"] == "ImagingStudy":
            pid = entry["resource"]["subject"]["reference"].removeprefix("Patient/")
            patients[entry["resource"]["modality"][0]["code"]] = pid
    identifiers = {
        kind: client.get(f"/fhir/Patient/{pid}").get_json()["identifier"][0] for kind, pid in patients.items()
    }
    app.accesses["ct"] = patient_access(patients["CT"])
    system = config.sources[0].patient_id_system
    mr, ct = identifiers["MR"], identifiers["CT"]
    assert mr["system"] == ct["system"] == system
    before = store.fetches.when("pacs", system, mr["value"])
    response = client.get(
        f"/fhir/ImagingStudy?patient.identifier={system}|{mr['value']}", headers={"X-Test-Access": "ct"}
    )
    assert response.status_code == 200 and response.get_json()["total"] == 0
    assert store.fetches.when("pacs", system, mr["value"]) == before  # the archive was not asked
    response = client.get(
        f"/fhir/ImagingStudy?patient.identifier={system}|{ct['value']}", headers={"X-Test-Access": "ct"}
    )
    assert response.status_code == 200 and response.get_json()["total"] == 1
    assert store.fetches.when("pacs", system, ct["value"]) is not None  # its own patient: asked
    store.close()


def test_a_folder_source_behind_a_login_is_reached_with_its_own_credentials(
    tmp_path, store_url, open_config, monkeypatch
):
    """A folder of files whose images an archive serves behind HTTP basic auth: the gateway
    logs in with the source's username and password, whatever the source's type."""
    folder = tmp_path / "files"
    folder.mkdir()
    (folder / "ct.dcm").write_bytes(Path(FILES["CT"]).read_bytes())
    with OrthancServer(users={"alice": "s3cret-pw"}) as secured:
        secured.upload([FILES["CT"]])
        source = {"name": "files", "type": "folder", "path": str(folder), "wado_url": secured.dicomweb_url}
        results = {}
        for password in ("s3cret-pw", "wrong"):
            monkeypatch.setenv("GATEWAY_TEST_PASSWORD", password)
            login = {"username": "alice", "password": "${GATEWAY_TEST_PASSWORD}"}
            config = open_config(store_url, wado_gateway=True, sources=[{**source, **login}])
            store = Store.from_config(config)
            try:
                assert sync_source(store, config.sources[0]).error is None
                client = create_app(config, store).test_client()
                study = client.get("/fhir/ImagingStudy").get_json()["entry"][0]["resource"]
                answer = client.get("/wado-rs/files" + _instance_path(study), headers={"Accept": DICOM_PARTS})
                results[password] = (answer.status_code, answer)
            finally:
                store.close()
    assert results["wrong"][0] == 401  # the archive's own refusal, passed on: the login is really checked
    status, answer = results["s3cret-pw"]
    assert status == 200, answer.get_data(as_text=True)
    assert _parts(answer) == [Path(FILES["CT"]).read_bytes()]
