"""What apps discover (smart-configuration, CapabilityStatement.rest.security), what browsers
may do (CORS), the request size limits, and the config keys behind them."""

from __future__ import annotations

import pytest

from app.config import ConfigError

VIEWER = "https://viewer.example.org"


def test_smart_configuration_says_what_is_true(make_app, auth_server):
    app = make_app(
        authorization_endpoint=f"{auth_server.url}/authorize",
        capabilities=["client-confidential-asymmetric", "context-standalone-patient", "launch-standalone"],
    )
    response = app.test_client().get("/fhir/.well-known/smart-configuration")
    assert response.status_code == 200 and response.mimetype == "application/json"
    document = response.get_json()
    assert document["issuer"] == auth_server.issuer and document["jwks_uri"] == auth_server.jwks_uri
    assert document["token_endpoint"] == auth_server.token_url
    assert document["authorization_endpoint"] == f"{auth_server.url}/authorize"
    assert document["grant_types_supported"] == ["authorization_code", "client_credentials"]
    assert document["code_challenge_methods_supported"] == ["S256"]
    assert document["token_endpoint_auth_methods_supported"] == ["private_key_jwt"]
    assert set(document["capabilities"]) == {
        "permission-v1",
        "permission-v2",
        "client-confidential-asymmetric",
        "context-standalone-patient",
        "launch-standalone",
    }
    assert "patient/ImagingStudy.rs" in document["scopes_supported"]
    assert "system/*.rs" in document["scopes_supported"]


def test_backend_services_only_deployment(make_app, auth_server):
    document = make_app().test_client().get("/fhir/.well-known/smart-configuration").get_json()
    assert "authorization_endpoint" not in document
    assert document["grant_types_supported"] == ["client_credentials"]
    assert document["capabilities"] == ["permission-v1", "permission-v2"]


def test_capability_statement_names_the_smart_service(make_app, auth_server):
    app = make_app(authorization_endpoint=f"{auth_server.url}/authorize", cors_origins=[VIEWER])
    security = app.test_client().get("/fhir/metadata").get_json()["rest"][0]["security"]
    assert security["cors"] is True
    coding = security["service"][0]["coding"][0]
    assert (coding["system"], coding["code"]) == (
        "http://terminology.hl7.org/CodeSystem/restful-security-service",
        "SMART-on-FHIR",
    )
    (oauth,) = security["extension"]
    assert oauth["url"] == "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris"
    assert {e["url"]: e["valueUri"] for e in oauth["extension"]} == {
        "authorize": f"{auth_server.url}/authorize",
        "token": auth_server.token_url,
    }


def test_capability_statement_with_security_is_valid_r4(make_app):
    from fhir.resources.R4B.capabilitystatement import CapabilityStatement

    statement = make_app().test_client().get("/fhir/metadata").get_json()
    CapabilityStatement.model_validate(statement)


def test_open_server_has_no_smart_configuration(open_config):
    from app.web import create_app

    api = create_app(open_config()).test_client()
    response = api.get("/fhir/.well-known/smart-configuration")
    assert response.status_code == 404 and response.get_json()["resourceType"] == "OperationOutcome"
    assert api.get("/fhir/metadata").get_json()["rest"][0]["security"]["cors"] is False


def test_cors_for_listed_origins_only(make_app, auth_server):
    api = make_app(cors_origins=[VIEWER]).test_client()
    token = auth_server.sign({"scope": "system/*.rs"})
    allowed = api.get("/fhir/Endpoint", headers={"Origin": VIEWER, "Authorization": f"Bearer {token}"})
    assert allowed.status_code == 200 and allowed.headers["Access-Control-Allow-Origin"] == VIEWER
    assert "WWW-Authenticate" in allowed.headers["Access-Control-Expose-Headers"]
    refused = api.get(
        "/fhir/Endpoint", headers={"Origin": "https://evil.example.org", "Authorization": f"Bearer {token}"}
    )
    assert not any(h.startswith("Access-Control-") for h in refused.headers.keys())  # noqa: SIM118 - werkzeug Headers iterate as pairs
    # a 401 is readable by the listed origin's app too, so it can start the login
    unauthorized = api.get("/fhir/Endpoint", headers={"Origin": VIEWER})
    assert unauthorized.status_code == 401 and unauthorized.headers["Access-Control-Allow-Origin"] == VIEWER


def test_cors_preflight(make_app):
    api = make_app(cors_origins=[VIEWER]).test_client()
    preflight = api.options(
        "/fhir/ImagingStudy",
        headers={
            "Origin": VIEWER,
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "authorization",
        },
    )
    assert preflight.status_code == 200
    assert preflight.headers["Access-Control-Allow-Origin"] == VIEWER
    assert "authorization" in preflight.headers["Access-Control-Allow-Headers"].lower()
    assert "GET" in preflight.headers["Access-Control-Allow-Methods"]
    other = api.options(
        "/fhir/ImagingStudy", headers={"Origin": "https://evil.example.org", "Access-Control-Request-Method": "GET"}
    )
    assert "Access-Control-Allow-Origin" not in other.headers


def test_no_cors_headers_when_no_origin_is_configured(make_app):
    response = make_app().test_client().get("/fhir/metadata", headers={"Origin": VIEWER})
    assert "Access-Control-Allow-Origin" not in response.headers


def test_oversized_search_body_gets_413(make_app, auth_server):
    api = make_app(max_body_bytes=4096).test_client()
    token = auth_server.sign({"scope": "system/*.rs"})
    response = api.post(
        "/fhir/ImagingStudy/_search", data={"modality": "CT" + "," * 5000}, headers={"Authorization": f"Bearer {token}"}
    )
    assert response.status_code == 413
    body = response.get_json()
    assert body["resourceType"] == "OperationOutcome" and "4096 bytes" in body["issue"][0]["diagnostics"]
    small = api.post(
        "/fhir/ImagingStudy/_search", data={"modality": "CT"}, headers={"Authorization": f"Bearer {token}"}
    )
    assert small.status_code == 200


@pytest.mark.parametrize(
    "security, key, words",
    [
        (
            {"jwks_uri": "http://127.0.0.1:9/jwks", "token_endpoint": "http://127.0.0.1:9/token"},
            "security.issuer",
            "need the issuer",
        ),
        (
            {"issuer": "http://127.0.0.1:9", "jwks_uri": "http://127.0.0.1:9/jwks"},
            "security.token_endpoint",
            "token endpoint",
        ),
        (
            {"issuer": "http://127.0.0.1:9", "token_endpoint": "http://127.0.0.1:9/token"},
            "security.jwks_uri",
            "nothing checks its tokens",
        ),
        (
            {
                "issuer": "http://a",
                "jwks_uri": "http://a/jwks",
                "token_endpoint": "http://a/token",
                "introspection": {"url": "http://a/i", "client_id": "x", "client_secret": "${SECRET}"},
            },
            "security.introspection",
            "not both",
        ),
        ({"algorithms": ["HS256"]}, "security.algorithms[0]", "asymmetric"),
        ({"algorithms": ["none"]}, "security.algorithms[0]", "asymmetric"),
        ({"cors_origins": ["https://viewer.example.org/app"]}, "security.cors_origins[0]", "no path"),
        ({"capabilities": ["launch-everything"]}, "security.capabilities[0]", "not a SMART capability"),
        (
            {
                "introspection": {"url": "http://a/i", "client_id": "x", "client_secret": "written-out"},
                "token_endpoint": "http://a/token",
            },
            "security.introspection.client_secret",
            "must not be written",
        ),
        ({"max_body_bytes": 10}, "security.max_body_bytes", "greater than or equal"),
    ],
)
def test_bad_security_config_names_the_key(write_config, sqlite_url, security, key, words):
    with pytest.raises(ConfigError) as err:
        write_config({"store": sqlite_url, "security": {"open": False, **security}}, environ={"SECRET": "x"})
    assert key in err.value.problems, err.value.problems
    assert any(words in reason for reason in err.value.problems[key]), err.value.problems[key]


def test_audience_defaults_to_the_base_url(write_config, sqlite_url):
    config = write_config(
        {
            "store": sqlite_url,
            "server": {"base_url": "https://imaging.example.org/fhir/"},
            "security": {
                "issuer": "https://as.example.org",
                "jwks_uri": "https://as.example.org/jwks",
                "token_endpoint": "https://as.example.org/token",
            },
        }
    )
    assert config.security.audience == "https://imaging.example.org/fhir"
    assert config.security.checks_tokens and config.security.algorithms == ("RS256", "RS384", "ES256", "ES384")


def test_the_readme_configuration_example_loads(tmp_path):
    """The README's configuration block, security keys included, is a valid config."""
    import re
    from pathlib import Path

    from app.config import load_config

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("## Configuration", 1)[1]
    block = re.search(r"```yaml\n(.*?)```", section, re.S).group(1)
    path = tmp_path / "config.yaml"
    path.write_text(block)
    config = load_config(path, environ={"FACADE_PAGING_SECRET": "x", "PACS_USER": "u", "PACS_PASSWORD": "p"})
    assert config.security.checks_tokens and config.security.cors_origins == ("https://viewer.example.org",)


def test_the_complete_configuration_example_of_the_reference_loads(tmp_path):
    """docs/configuration.md's complete example, every section of it, is a valid config that
    says what its comments say."""
    import re
    from pathlib import Path

    from app.config import load_config

    reference = (Path(__file__).resolve().parents[2] / "docs" / "configuration.md").read_text()
    section = reference.split("## A complete example", 1)[1]
    block = re.search(r"```yaml\n(.*?)```", section, re.S).group(1)
    path = tmp_path / "config.yaml"
    path.write_text(block)
    secrets = {"FACADE_PAGING_SECRET": "x", "PATIENT_ID_SECRET": "a-patient-id-key-of-the-example"}
    config = load_config(path, environ={**secrets, "PACS_USER": "u", "PACS_PASSWORD": "p"})
    assert (config.server.workers, config.server.page_ttl, config.server.max_count) == (2, 3600, 1000)
    assert config.identity.secret == secrets["PATIENT_ID_SECRET"]
    assert config.security.checks_tokens and not config.security.open
    assert [(s.name, s.type) for s in config.sources] == [
        ("sample", "folder"),
        ("main-pacs", "dicomweb"),
        ("old-pacs", "dimse"),
    ]
    web, dimse = config.sources[1].protocol, config.sources[2].protocol
    assert (web.username, web.password, web.page_size) == ("u", "p", 100)
    assert (dimse.called_aet, dimse.port) == ("PACS", 104)
    assert (config.identity.auto_link, config.identity.review) == (18, 10)
