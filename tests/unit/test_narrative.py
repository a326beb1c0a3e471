"""The generated narrative (`text`, FHIR R4 narrative.html) of every stored resource: made once when
stored, from what the resource says, as XHTML an EHR can show and no script can ride in."""

from __future__ import annotations

import shutil

from lxml import etree
from pydicom.data import get_testdata_file

from app.store.narrative import XHTML, with_narrative
from app.store.repository import Store
from app.store.resources import UNCHANGED
from app.sync import sync_source
from app.web import create_app
from tests.support.people import person, stored, study


def words(resource: dict) -> str:
    div = etree.fromstring(resource["text"]["div"])
    assert etree.QName(div).namespace == XHTML and etree.QName(div).localname == "div"
    assert not div.xpath("//*[local-name()='script'] | //@*[name()!='xmlns']")  # no scripts, no attributes
    return " ".join(div.itertext())


def test_a_synced_study_patient_and_endpoint_each_say_what_they_hold(tmp_path, open_config):
    shutil.copyfile(get_testdata_file("CT_small.dcm"), tmp_path / "CT_small.dcm")
    config = open_config(sources=[{"name": "pacs", "type": "folder", "path": str(tmp_path)}])
    store = Store.from_config(config)
    try:
        sync_source(store, config.sources[0])
        client = create_app(config, store).test_client()
        study = client.get("/fhir/ImagingStudy").get_json()["entry"][0]["resource"]
        patient = client.get("/fhir/Patient").get_json()["entry"][0]["resource"]
        endpoint = client.get("/fhir/Endpoint/pacs").get_json()
    finally:
        store.close()
    said = words(study)
    assert "Imaging study" in said and study["started"][:10] in said
    assert all(m["code"] in said for m in study["modality"])
    assert f"{study['numberOfSeries']} series" in said and f"{study['numberOfInstances']} instances" in said
    assert patient["name"][0]["family"].upper() in words(patient) and patient["gender"] in words(patient)
    assert endpoint["address"] in words(endpoint)
    for resource in (study, patient, endpoint):
        assert resource["text"]["status"] == "generated"
        assert list(resource)[:4] == ["resourceType", "id", "meta", "text"]


def test_markup_in_a_value_is_text_not_markup():
    patient = person("urn:oid:1.2", "1", "<script>alert(1)</script>", "A&B", "1970-01-01", "female")
    said = with_narrative(stored(patient))
    assert "<script>" not in said["text"]["div"]
    assert "<SCRIPT>ALERT(1)</SCRIPT>" in words(said) and "A&B" in words(said)


def test_stored_once_with_its_narrative_and_unchanged_when_stored_again(open_config):
    store = Store.from_config(open_config())
    try:
        patient = person("urn:oid:1.2", "7", "Doe", "Jane", "1980-02-02", "female")
        assert store.studies.put(study("1.9.1", patient), stored(patient), "a") != UNCHANGED
        assert store.studies.put(study("1.9.1", patient), stored(patient), "a") == UNCHANGED
    finally:
        store.close()
