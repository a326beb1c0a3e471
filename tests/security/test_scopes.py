"""SMART scopes: the v1 and v2 grammars parsed into grants, and what each request needs (403
before any query when the token's scopes do not cover it)."""

from __future__ import annotations

import pytest

from app.security.access import READ, SEARCH, ScopeGrant
from app.security.scopes import parse_scope, parse_scopes
from tests.support.smart_auth import BackendClient, bearer

RS = frozenset({READ, SEARCH})


@pytest.mark.parametrize(
    "scope, grant",
    [
        ("patient/ImagingStudy.read", ScopeGrant("patient", "ImagingStudy", RS)),  # v1 read = v2 rs
        ("user/*.read", ScopeGrant("user", "*", RS)),
        ("patient/*.*", ScopeGrant("patient", "*", RS)),
        ("patient/ImagingStudy.rs", ScopeGrant("patient", "ImagingStudy", RS)),
        ("patient/ImagingStudy.r", ScopeGrant("patient", "ImagingStudy", frozenset({READ}))),
        ("user/Patient.s", ScopeGrant("user", "Patient", frozenset({SEARCH}))),
        ("system/*.rs", ScopeGrant("system", "*", RS)),
        ("patient/*.cruds", ScopeGrant("patient", "*", RS)),
        ("user/Endpoint.cr", ScopeGrant("user", "Endpoint", frozenset({READ}))),
        ("patient/ImagingStudy.rs?modality=MR", ScopeGrant("patient", "ImagingStudy", RS, (("modality", "MR"),))),
        (
            "patient/ImagingStudy.rs?modality=MR&started=ge2020",
            ScopeGrant("patient", "ImagingStudy", RS, (("modality", "MR"), ("started", "ge2020"))),
        ),
        (
            "patient/Observation.rs?category=http://terminology.hl7.org/CodeSystem/observation-category|laboratory",
            ScopeGrant(
                "patient",
                "Observation",
                RS,
                (("category", "http://terminology.hl7.org/CodeSystem/observation-category|laboratory"),),
            ),
        ),
    ],
)
def test_resource_scopes_parse(scope, grant):
    assert parse_scope(scope) == grant


@pytest.mark.parametrize(
    "scope",
    [
        "openid",
        "fhirUser",
        "launch",
        "launch/patient",
        "offline_access",
        "online_access",
        "patient/ImagingStudy.sr",  # v2 letters out of order
        "patient/ImagingStudy.rsx",
        "patient/ImagingStudy.",
        "patient/ImagingStudy",
        "admin/*.rs",
        "patient/imagingstudy.rs",
        "patient/ImagingStudy.read?modality=MR",  # no narrowing in v1
    ],
)
def test_non_resource_and_malformed_scopes_grant_nothing(scope):
    assert parse_scope(scope) is None


def test_write_only_scopes_grant_nothing_on_a_read_only_server():
    scopes, grants = parse_scopes("patient/ImagingStudy.write user/*.cud openid")
    assert scopes == ("patient/ImagingStudy.write", "user/*.cud", "openid") and grants == ()


def test_scopes_as_a_list_claim():
    _, grants = parse_scopes(["system/ImagingStudy.rs", 7])
    assert grants == (ScopeGrant("system", "ImagingStudy", RS),)


@pytest.fixture
def ask(app, auth_server):
    """Status of a request made with a token carrying `scope` (and a patient)."""
    api = app.test_client()

    def status(scope: str, path: str, method: str = "GET", data=None, patient: str | None = "any") -> int:
        claims = {"scope": scope}
        if patient is not None:
            claims["patient"] = patient
        headers = bearer(auth_server.sign(claims))
        response = api.post(path, data=data, headers=headers) if method == "POST" else api.get(path, headers=headers)
        if response.status_code == 403:
            body = response.get_json()
            assert body["resourceType"] == "OperationOutcome" and body["issue"][0]["code"] == "forbidden"
            assert 'error="insufficient_scope"' in response.headers["WWW-Authenticate"]
        return response.status_code

    return status


@pytest.fixture
def study(app, auth_server):
    token = auth_server.sign({"scope": "system/*.rs"})
    return app.test_client().get("/fhir/ImagingStudy", headers=bearer(token)).get_json()["entry"][0]["resource"]


MATRIX = [
    # scope, request, expected status
    ("patient/ImagingStudy.read", "search", 200),
    ("patient/ImagingStudy.read", "read", 200),
    ("patient/ImagingStudy.rs", "search", 200),
    ("patient/ImagingStudy.rs", "post-search", 200),
    ("patient/ImagingStudy.s", "search", 200),
    ("patient/ImagingStudy.s", "read", 403),
    ("patient/ImagingStudy.r", "read", 200),
    ("patient/ImagingStudy.r", "vread", 200),
    ("patient/ImagingStudy.r", "history", 200),
    ("patient/ImagingStudy.r", "search", 403),
    ("patient/ImagingStudy.r", "post-search", 403),
    ("patient/*.rs", "search", 200),
    ("user/*.read", "read", 200),
    ("system/*.rs", "search", 200),
    ("patient/Patient.rs", "search", 403),
    ("patient/ImagingStudy.write", "search", 403),
    ("openid fhirUser", "search", 403),
    ("patient/ImagingStudy.rs?modality=MR", "search", 200),
    # includes and chains need s on the type they reach
    ("patient/ImagingStudy.rs", "include-patient", 403),
    ("patient/ImagingStudy.rs patient/Patient.rs", "include-patient", 200),
    ("patient/ImagingStudy.rs", "include-endpoint", 200),  # the documented exemption
    ("patient/ImagingStudy.rs", "include-all", 403),
    ("patient/*.rs", "include-all", 200),
    ("patient/Patient.rs", "revinclude-studies", 403),
    ("patient/Patient.rs patient/ImagingStudy.s", "revinclude-studies", 200),
    ("patient/ImagingStudy.rs", "chain-into-patient", 403),
    ("patient/ImagingStudy.rs patient/Patient.s", "chain-into-patient", 200),
    ("patient/Patient.rs", "has-studies", 403),
    ("patient/Patient.rs patient/ImagingStudy.rs", "has-studies", 200),
    ("patient/ImagingStudy.rs", "post-include-patient", 403),
    ("patient/Endpoint.rs", "endpoints", 200),
    ("patient/ImagingStudy.rs", "endpoints", 200),  # the Endpoints of the studies it may see
    ("patient/Patient.rs", "endpoints", 403),
]


def _request(kind: str, study: dict):
    sid = study["id"]
    patient = study["subject"]["reference"]
    return {
        "search": ("GET", f"/fhir/ImagingStudy?patient={patient}", None),
        "post-search": ("POST", "/fhir/ImagingStudy/_search", {"patient": patient}),
        "read": ("GET", f"/fhir/ImagingStudy/{sid}", None),
        "vread": ("GET", f"/fhir/ImagingStudy/{sid}/_history/1", None),
        "history": ("GET", f"/fhir/ImagingStudy/{sid}/_history", None),
        "include-patient": ("GET", f"/fhir/ImagingStudy?patient={patient}&_include=ImagingStudy:patient", None),
        "include-endpoint": ("GET", f"/fhir/ImagingStudy?patient={patient}&_include=ImagingStudy:endpoint", None),
        "include-all": ("GET", f"/fhir/ImagingStudy?patient={patient}&_include=*", None),
        "revinclude-studies": ("GET", "/fhir/Patient?_revinclude=ImagingStudy:patient", None),
        "chain-into-patient": ("GET", "/fhir/ImagingStudy?patient.gender=male,female,other,unknown", None),
        "has-studies": ("GET", "/fhir/Patient?_has:ImagingStudy:patient:modality=CT", None),
        "post-include-patient": (
            "POST",
            "/fhir/ImagingStudy/_search",
            {"patient": patient, "_include": "ImagingStudy:patient"},
        ),
        "endpoints": ("GET", "/fhir/Endpoint", None),
    }[kind]


@pytest.mark.parametrize("scope, kind, expected", MATRIX)
def test_scope_matrix(ask, study, scope, kind, expected):
    method, path, data = _request(kind, study)
    # the token's patient is the study's: the compartment (tests/security/test_compartment.py) lets it through
    patient = study["subject"]["reference"].removeprefix("Patient/")
    assert ask(scope, path, method, data, patient=patient) == expected


def test_403_names_the_missing_scope(app, auth_server, study):
    token = auth_server.sign({"scope": "patient/ImagingStudy.rs", "patient": "x"})
    response = app.test_client().get(
        f"/fhir/ImagingStudy?patient={study['subject']['reference']}&_include=ImagingStudy:patient",
        headers=bearer(token),
    )
    assert response.status_code == 403
    diagnostics = response.get_json()["issue"][0]["diagnostics"]
    assert "search Patient" in diagnostics and "patient/Patient.s" in diagnostics and "_include" in diagnostics
    assert 'scope="patient/Patient.s user/Patient.s system/Patient.s"' in response.headers["WWW-Authenticate"]


def test_refusal_does_not_depend_on_what_exists(ask):
    """403 for a type not granted whether or not the id exists: nothing leaks through the status."""
    assert ask("patient/ImagingStudy.rs", "/fhir/Patient/no-such-id") == 403
    assert ask("patient/ImagingStudy.rs", "/fhir/ImagingStudy/no-such-id") == 404


def test_patient_scopes_need_a_patient_in_context(ask, app, auth_server):
    assert ask("patient/ImagingStudy.rs", "/fhir/ImagingStudy", patient=None) == 403
    token = auth_server.sign({"scope": "patient/ImagingStudy.rs"})
    diagnostics = app.test_client().get("/fhir/ImagingStudy", headers=bearer(token)).get_json()
    assert "names no patient" in diagnostics["issue"][0]["diagnostics"]
    assert ask("user/ImagingStudy.rs", "/fhir/ImagingStudy", patient=None) == 200


def test_the_patient_claim_name_is_configurable(make_app, auth_server):
    app = make_app(patient_claim="launch_patient")
    api = app.test_client()
    with_claim = auth_server.sign({"scope": "patient/ImagingStudy.rs", "launch_patient": "abc"})
    without = auth_server.sign({"scope": "patient/ImagingStudy.rs", "patient": "abc"})
    assert api.get("/fhir/ImagingStudy", headers=bearer(with_claim)).status_code == 200
    assert api.get("/fhir/ImagingStudy", headers=bearer(without)).status_code == 403


def _access_seen_by(app, token: str):
    """The Access the route saw, read through the same current_access() the compartment uses
    (the test client keeps the request context open inside `with`)."""
    from app.security.access import current_access

    with app.test_client() as api:
        assert api.get("/fhir/Endpoint", headers=bearer(token)).status_code == 200
        return current_access()


def test_access_from_a_patient_token(app, auth_server):
    client = BackendClient(auth_server, "patient-app", patient="Patient/pat-123")
    token = client.token("launch/patient patient/ImagingStudy.rs patient/Endpoint.rs")
    access = _access_seen_by(app, token)
    assert access.open is False and access.patient == "pat-123"
    assert access.client_id == "patient-app" and access.subject == "patient-app"
    assert access.scopes == ("launch/patient", "patient/ImagingStudy.rs", "patient/Endpoint.rs")
    assert access.grants == (ScopeGrant("patient", "ImagingStudy", RS), ScopeGrant("patient", "Endpoint", RS))
    assert access.in_patient_context


def test_access_from_a_system_token_has_no_patient(app, auth_server):
    client = BackendClient(auth_server, "system-app", patient="pat-123")  # patient/ not asked: no claim
    access = _access_seen_by(app, client.token("system/*.rs"))
    assert access.patient is None and not access.in_patient_context
    token = auth_server.sign({"scope": "user/*.rs", "patient": "pat-9", "sub": "dr-who"})
    access = _access_seen_by(app, token)
    assert access.patient is None and access.subject == "dr-who"


def test_granular_narrowing_reaches_the_access(app, auth_server):
    token = auth_server.sign({"scope": "patient/ImagingStudy.rs?modality=MR patient/Endpoint.rs", "patient": "p"})
    access = _access_seen_by(app, token)
    assert access.grants[0].narrowing == (("modality", "MR"),)


MATCH_BODY = {
    "resourceType": "Parameters",
    "parameter": [{"name": "resource", "resource": {"resourceType": "Patient", "name": [{"family": "X"}]}}],
}


@pytest.mark.parametrize(
    "scope, patient_claim, expected",
    [
        ("system/Patient.rs", None, 200),
        ("user/*.read", None, 200),
        ("system/ImagingStudy.rs", None, 403),
        ("patient/Patient.rs", True, 403),  # one patient's app may not search across patients
    ],
)
def test_patient_match_needs_patient_search_across_patients(app, auth_server, patients, scope, patient_claim, expected):
    claims = {"scope": scope}
    if patient_claim:
        claims["patient"] = patients[0]
    token = auth_server.sign(claims)
    answer = app.test_client().post(
        "/fhir/Patient/$match", json=MATCH_BODY, headers={"Authorization": f"Bearer {token}"}
    )
    assert answer.status_code == expected, answer.get_json()


@pytest.mark.parametrize(
    "scope, patient_claim, expected",
    [
        ("system/Patient.u", None, 200),
        ("user/Patient.cruds", None, 200),
        ("system/*.write", None, 200),
        ("system/*.rs", None, 403),  # reading everything is not deciding who is who
        ("patient/Patient.cruds", True, 403),
        (None, None, 401),
    ],
)
def test_identity_review_api_needs_patient_update(app, auth_server, patients, scope, patient_claim, expected):
    headers = {}
    if scope is not None:
        claims = {"scope": scope}
        if patient_claim:
            claims["patient"] = patients[0]
        headers["Authorization"] = f"Bearer {auth_server.sign(claims)}"
    client = app.test_client()
    listed = client.get("/admin/identity/links?status=all", headers=headers)
    assert listed.status_code == expected
    linked = client.post("/admin/identity/link", json={"a": patients[0], "b": patients[1]}, headers=headers)
    assert linked.status_code == expected
    if expected != 200:
        # refused before anything was written: no decision was recorded
        system = {"Authorization": f"Bearer {auth_server.sign({'scope': 'system/Patient.u'})}"}
        assert client.get("/admin/identity/links?status=all", headers=system).get_json()["count"] == 0
