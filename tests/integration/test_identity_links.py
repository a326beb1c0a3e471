"""Linking records of one person, on SQLite and PostgreSQL: Patient.link both ways, search that
follows it, `Patient/$match`, and a person's decisions through the admin API and the CLI."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from sqlalchemy import delete, select

from app.cli import main as cli
from app.identity.features import blocking_keys, features
from app.identity.reconcile import reconcile_patient
from app.store import tables as t
from app.store.repository import Store
from app.web import create_app
from tests.support.people import person, stored, study

BASE = "http://testserver/fhir"
MATCH_GRADE = "http://hl7.org/fhir/StructureDefinition/match-grade"


A = person("urn:oid:1.2.1", "1001", "Miller", "John", "1970-03-05", "male")
B = person("urn:oid:1.2.2", "A77", "MILLER", "John", "1970-05-03", "male")  # same man, archive B
TWIN = person("urn:oid:1.2.2", "A78", "Miller", "Jane", "1970-03-05", "female")
NAMESAKE = person("urn:oid:1.2.3", "9", "Miller", "John", "1988-12-01", "male")
UNSURE = person("urn:oid:1.2.3", "10", "Miller", "John", None, "male")  # no birth date: review


@pytest.fixture
def served(store_url, write_config, tmp_path):
    config = write_config({"store": store_url, "server": {"base_url": BASE}, "security": {"open": True}})
    store = Store.from_config(config)
    for uid, patient, source in [
        ("1.1", A, "a"),
        ("1.2", B, "b"),
        ("1.3", TWIN, "b"),
        ("1.4", NAMESAKE, "c"),
        ("1.5", UNSURE, "c"),
    ]:
        store.studies.put(study(uid, patient), stored(patient), source)
        reconcile_patient(store, patient["id"], config.identity)
    yield create_app(config, store).test_client(), store, config
    store.close()


def ids(response) -> list[str]:
    assert response.status_code == 200, response.get_data(as_text=True)
    return sorted(e["resource"]["id"] for e in response.get_json().get("entry", []))


def links(client, pid) -> list[dict]:
    return client.get(f"/fhir/Patient/{pid}").get_json().get("link", [])


def test_automatic_link_is_patient_link_both_ways_and_search_follows_it(served):
    client, _, _ = served
    assert links(client, A["id"]) == [{"other": {"reference": f"Patient/{B['id']}"}, "type": "seealso"}]
    assert links(client, B["id"]) == [{"other": {"reference": f"Patient/{A['id']}"}, "type": "seealso"}]
    # the link made new versions; the first ones had none
    history = client.get(f"/fhir/Patient/{A['id']}/_history").get_json()["entry"]
    assert [e["resource"].get("link") is None for e in history] == [False, True]
    for query in (
        f"patient={A['id']}",
        f"patient=Patient/{A['id']}",
        f"subject=Patient/{A['id']}",
        f"patient:Patient={B['id']}",
    ):
        assert ids(client.get(f"/fhir/ImagingStudy?{query}")) == ["1.1", "1.2"], query
    assert ids(client.get(f"/fhir/Patient?link=Patient/{A['id']}")) == [B["id"]]
    assert ids(client.get(f"/fhir/Patient?link={B['id']}")) == [A["id"]]
    # twins and namesakes stay apart
    assert links(client, TWIN["id"]) == [] and links(client, NAMESAKE["id"]) == []
    assert ids(client.get(f"/fhir/ImagingStudy?patient={TWIN['id']}")) == ["1.3"]


def test_review_queue_unlink_and_link_over_the_admin_api(served):
    client, store, config = served
    queue = client.get("/admin/identity/links").get_json()
    assert queue["status"] == "review"
    pairs = {tuple(p["patients"]) for p in queue["pairs"]}
    assert tuple(sorted((A["id"], UNSURE["id"]))) in pairs
    assert all(p["status"] == "review" for p in queue["pairs"])
    assert tuple(sorted((A["id"], TWIN["id"]))) not in pairs  # twins score too low even for review

    why = client.get(f"/admin/identity/explain?a={A['id']}&b=Patient/{B['id']}").get_json()
    assert why["status"] == "linked" and why["grade"] == "certain"
    assert {c["feature"] for c in why["contributions"]} >= {"family name (alphabetic)", "birth date", "sex"}

    answer = client.post("/admin/identity/unlink", json={"a": A["id"], "b": B["id"]})
    assert answer.status_code == 200 and answer.get_json()["status"] == "manual-unlink"
    assert links(client, A["id"]) == [] and links(client, B["id"]) == []
    assert ids(client.get(f"/fhir/ImagingStudy?patient={A['id']}")) == ["1.1"]
    assert ids(client.get(f"/fhir/Patient?link=Patient/{A['id']}")) == []
    # matching again (as a sync would after a change) does not redo it
    reconcile_patient(store, A["id"], config.identity, force=True)
    reconcile_patient(store, B["id"], config.identity, force=True)
    assert links(client, A["id"]) == []

    answer = client.post("/admin/identity/link", json={"a": A["id"], "b": UNSURE["id"]})
    assert answer.get_json()["status"] == "manual-link"
    assert links(client, UNSURE["id"]) == [{"other": {"reference": f"Patient/{A['id']}"}, "type": "seealso"}]
    assert ids(client.get(f"/fhir/ImagingStudy?patient={UNSURE['id']}")) == ["1.1", "1.5"]
    manual = client.get("/admin/identity/links?status=manual-link").get_json()["pairs"]
    assert [sorted(p["patients"]) for p in manual] == [sorted([A["id"], UNSURE["id"]])]


@pytest.mark.parametrize(
    "request_args, status, text",
    [
        (("post", "/admin/identity/link", {"json": {"a": "nobody", "b": "p1"}}), 404, "not known"),
        (("post", "/admin/identity/link", {"json": {"a": "bad id!"}}), 400, "'a' must be a Patient id"),
        (("post", "/admin/identity/unlink", {"data": "x"}), 400, "JSON object"),
        (("get", "/admin/identity/links?status=maybe", {}), 400, "status must be one of"),
        (("get", "/admin/identity/links?limit=0", {}), 400, "'limit'"),
    ],
)
def test_admin_api_bad_requests(served, request_args, status, text):
    client, _, _ = served
    method, url, kwargs = request_args
    answer = getattr(client, method)(url, **kwargs)
    assert answer.status_code == status
    assert text in answer.get_json()["error"]


def match_body(patient, **params):
    parameters = [{"name": "resource", "resource": patient}]
    parameters += [{"name": "onlyCertainMatches", "valueBoolean": params["only"]}] if "only" in params else []
    parameters += [{"name": "count", "valueInteger": params["count"]}] if "count" in params else []
    return {"resourceType": "Parameters", "parameter": parameters}


def test_patient_match_operation(served):
    client, _, _ = served
    query = {
        "resourceType": "Patient",
        "name": [{"family": "Miller", "given": ["John"]}],
        "birthDate": "1970-03-05",
        "gender": "male",
    }
    answer = client.post("/fhir/Patient/$match", json=match_body(query))
    assert answer.status_code == 200
    bundle = answer.get_json()
    assert bundle["type"] == "searchset"
    grades = {e["resource"]["id"]: e["search"]["extension"][0]["valueCode"] for e in bundle["entry"]}
    assert grades[A["id"]] == "certain" and grades[B["id"]] == "certain"
    assert grades[UNSURE["id"]] == "probable"
    assert NAMESAKE["id"] not in grades and TWIN["id"] not in grades
    scores = [e["search"]["score"] for e in bundle["entry"]]
    assert scores == sorted(scores, reverse=True) and all(0 <= s <= 1 for s in scores)
    assert all(e["search"]["extension"][0]["url"] == MATCH_GRADE for e in bundle["entry"])
    assert bundle["total"] == len(bundle["entry"])

    one = client.post("/fhir/Patient/$match", json=match_body(query, count=1)).get_json()
    assert [e["resource"]["id"] for e in one["entry"]] == [bundle["entry"][0]["resource"]["id"]]
    # two certain matches: onlyCertainMatches answers none rather than guess
    assert "entry" not in client.post("/fhir/Patient/$match", json=match_body(query, only=True)).get_json()
    by_id = dict(query, identifier=[{"system": "urn:oid:1.2.3", "value": "9"}], birthDate="1988-12-01")
    only = client.post("/fhir/Patient/$match", json=match_body(by_id, only=True)).get_json()
    assert [e["resource"]["id"] for e in only["entry"]] == [NAMESAKE["id"]]


@pytest.mark.parametrize(
    "body, text",
    [
        ({"resourceType": "Patient"}, "Parameters"),
        ({"resourceType": "Parameters", "parameter": []}, "'resource'"),
        (match_body({"resourceType": "Observation"}), "'resource'"),
        (match_body({"resourceType": "Patient", "birthDate": "March"}), "birthDate"),
        (
            {
                **match_body({"resourceType": "Patient"}),
                "parameter": [
                    {"name": "resource", "resource": {"resourceType": "Patient"}},
                    {"name": "count", "valueInteger": -1},
                ],
            },
            "'count'",
        ),
    ],
)
def test_patient_match_bad_input_is_400(served, body, text):
    client, _, _ = served
    answer = client.post("/fhir/Patient/$match", json=body)
    assert answer.status_code == 400
    outcome = answer.get_json()
    assert outcome["resourceType"] == "OperationOutcome" and text in outcome["issue"][0]["diagnostics"]
    assert client.post("/fhir/Patient/$match", data="{", content_type="application/fhir+json").status_code == 400


def test_capability_statement_documents_links_and_match(served):
    client, _, _ = served
    rest = client.get("/fhir/metadata").get_json()["rest"][0]
    patient = next(r for r in rest["resource"] if r["type"] == "Patient")
    assert patient["operation"][0]["definition"] == "http://hl7.org/fhir/OperationDefinition/Patient-match"
    assert "link" in {p["name"] for p in patient["searchParam"]}
    study_params = next(r for r in rest["resource"] if r["type"] == "ImagingStudy")["searchParam"]
    assert "beyond base FHIR" in next(p for p in study_params if p["name"] == "patient")["documentation"]
    assert "beyond base fhir" in rest["documentation"].lower()


def test_a_deleted_patient_leaves_its_partners_links(served):
    client, store, _ = served
    store.studies.remove("b", "1.2")  # B's only study leaves its archive: B goes
    assert client.get(f"/fhir/Patient/{B['id']}").status_code == 410
    assert links(client, A["id"]) == []
    assert ids(client.get(f"/fhir/ImagingStudy?patient={A['id']}")) == ["1.1"]


def test_identity_cli(served, tmp_path):
    _, _, config = served
    runner = CliRunner()
    args = ["--config", str(config.path)]
    listed = runner.invoke(cli, ["identity", "list", "--status", "linked", *args])
    assert listed.exit_code == 0, listed.output
    assert A["id"] in listed.output and B["id"] in listed.output and "\tlinked\t" in listed.output
    explained = runner.invoke(cli, ["identity", "explain", *args, A["id"], B["id"]])
    assert json.loads(explained.output)["grade"] == "certain"
    unlinked = runner.invoke(cli, ["identity", "unlink", *args, A["id"], B["id"]])
    assert json.loads(unlinked.output)["status"] == "manual-unlink"
    assert "no pairs (linked)" in runner.invoke(cli, ["identity", "list", "--status", "linked", *args]).output
    linked = runner.invoke(cli, ["identity", "link", *args, f"Patient/{A['id']}", B["id"]])
    assert json.loads(linked.output)["status"] == "manual-link"
    rematched = runner.invoke(cli, ["identity", "rematch", *args])
    assert rematched.exit_code == 0 and "links changed on 0 Patients" in rematched.output  # the manual link holds
    missing = runner.invoke(cli, ["identity", "link", *args, A["id"], "nobody"])
    assert missing.exit_code == 2 and "not known" in missing.output
    for line in (listed.output + explained.output).splitlines():
        assert "Miller" not in line and "1970" not in line  # ids and scores, never names or dates


def test_rematch_applies_new_thresholds_but_not_over_a_person(served, write_config):
    client, store, config = served
    from app.identity.review import rematch, unlink

    unlink(store, A["id"], B["id"], config.identity)
    lower = write_config(
        {
            "store": config.store,
            "server": {"base_url": BASE},
            "security": {"open": True},
            "identity": {"auto_link": 13, "review": 10},
        },
        name="lower.yaml",
    )
    relaxed = Store.from_config(lower)
    try:
        assert rematch(relaxed, lower.identity) > 0
    finally:
        relaxed.close()
    # 14 points to each of A and B (no birth date to tell): linked to both now, not to the namesake
    assert {lnk["other"]["reference"] for lnk in links(client, UNSURE["id"])} == {
        f"Patient/{A['id']}",
        f"Patient/{B['id']}",
    }
    assert f"Patient/{B['id']}" not in {lnk["other"]["reference"] for lnk in links(client, A["id"])}


def test_a_manual_link_holds_when_a_deleted_patient_comes_back(served):
    client, store, config = served
    from app.identity.review import link

    link(store, A["id"], NAMESAKE["id"], config.identity)
    store.studies.remove("c", "1.4")
    assert f"Patient/{NAMESAKE['id']}" not in {lnk["other"]["reference"] for lnk in links(client, A["id"])}
    store.studies.put(study("1.4", NAMESAKE), NAMESAKE, "c")
    assert f"Patient/{NAMESAKE['id']}" in {lnk["other"]["reference"] for lnk in links(client, A["id"])}
    assert f"Patient/{A['id']}" in {lnk["other"]["reference"] for lnk in links(client, NAMESAKE["id"])}


def test_rematch_files_every_patient_under_the_current_blocking_keys(served):
    """A store filed before a kind of blocking key existed gets it from `identity rematch`."""
    _, store, config = served
    from app.identity.review import rematch

    def filed() -> dict[str, set[str]]:
        with store.engine.connect() as conn:
            rows = conn.execute(select(t.PatientBlock.key, t.PatientBlock.patient_id)).all()
        keys: dict[str, set[str]] = {}
        for key, patient in rows:
            keys.setdefault(patient, set()).add(key)
        return keys

    current = filed()
    with store.engine.begin() as conn:  # as an older release filed them: no p: keys
        conn.execute(delete(t.PatientBlock).where(t.PatientBlock.key.like("p:%")))
    assert not any(k.startswith("p:") for keys in filed().values() for k in keys)
    rematch(store, config.identity)
    assert filed() == current
    for patient in (A, B, TWIN, NAMESAKE, UNSURE):
        assert current[patient["id"]] == set(blocking_keys(features(stored(patient), config.identity)))
