"""Bearer JWTs from a real authorization server (auth_server.py, authlib): what is accepted,
what is refused with 401, and how key rotation is followed."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time

import jwt
import pytest
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from app.security.tokens import JwksKeys
from testbed.orthanc import free_port
from tests.support.smart_auth import BackendClient, bearer, rsa_jwk, unsigned


def test_backend_services_client_searches_end_to_end(app, auth_server, patients):
    client = BackendClient(auth_server, "imaging-ai-backend")
    token = client.token("system/ImagingStudy.rs system/Patient.rs")
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["scope"] == "system/ImagingStudy.rs system/Patient.rs" and "patient" not in claims
    api = app.test_client()
    for patient in patients:
        response = api.get(f"/fhir/ImagingStudy?patient={patient}", headers=bearer(token))
        assert response.status_code == 200, response.get_json()
        assert response.get_json()["total"] >= 1
    study = api.get(f"/fhir/ImagingStudy?patient={patients[0]}", headers=bearer(token)).get_json()["entry"][0]
    assert api.get(f"/fhir/ImagingStudy/{study['resource']['id']}", headers=bearer(token)).status_code == 200
    posted = api.post("/fhir/ImagingStudy/_search", data={"patient": patients[0]}, headers=bearer(token))
    assert posted.status_code == 200 and posted.get_json()["total"] >= 1


def test_an_ec_client_key_works_too(app, auth_server):
    client = BackendClient(auth_server, "ec-backend", use_ec=True)
    token = client.token("system/*.rs")
    assert app.test_client().get("/fhir/Endpoint", headers=bearer(token)).status_code == 200


def test_the_authorization_server_refuses_bad_assertions(auth_server):
    """The test server is a real SMART Backend Services server: a replayed or long-lived
    assertion gets no token, so the tokens the other tests use come from a checked client."""
    client = BackendClient(auth_server, "careful-backend")
    assertion = client.assertion()
    assert client.token_response("system/*.rs", assertion).status_code == 200
    assert client.token_response("system/*.rs", assertion).status_code in (400, 401)  # jti replayed
    assert client.token_response("system/*.rs", client.assertion(lifetime=3600)).status_code in (400, 401)


def _payload_swapped(token: str, **changes) -> str:
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims.update(changes)
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"{header}.{forged}.{signature}"


def _hs256_with_public_key(auth_server) -> str:
    """The classic key-confusion forgery: HMAC keyed with the server's public key (PEM).
    Built by hand, because PyJWT itself refuses to use a PEM key as an HMAC secret."""
    public_pem = auth_server.key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    header = {"alg": "HS256", "typ": "at+jwt", "kid": "as-key-1"}
    now = int(time.time())
    claims = {
        "iss": auth_server.issuer,
        "aud": auth_server.audience,
        "exp": now + 300,
        "scope": "system/*.rs",
        "sub": "attacker",
    }

    def part(data):
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

    signing_input = f"{part(header)}.{part(claims)}"
    mac = hmac.new(public_pem, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{base64.urlsafe_b64encode(mac).rstrip(b'=').decode()}"


REFUSED = {
    "expired": lambda s: s.sign({"scope": "system/*.rs", "exp": int(time.time()) - 600}),
    "not yet valid": lambda s: s.sign({"scope": "system/*.rs", "nbf": int(time.time()) + 600}),
    "wrong audience": lambda s: s.sign({"scope": "system/*.rs", "aud": "http://other.example.org/fhir"}),
    "wrong issuer": lambda s: s.sign({"scope": "system/*.rs", "iss": "http://127.0.0.1:1/other"}),
    "no exp": lambda s: s.sign({"scope": "system/*.rs", "exp": None}),
    "unknown key, known kid": lambda s: s.sign({"scope": "system/*.rs"}, key=rsa_jwk("x")[1], kid="as-key-1"),
    "unknown key, unknown kid": lambda s: s.sign({"scope": "system/*.rs"}, key=rsa_jwk("x")[1], kid="made-up"),
    "alg none": lambda s: unsigned(
        {"iss": s.issuer, "aud": s.audience, "exp": int(time.time()) + 300, "scope": "system/*.rs"}
    ),
    "re-signed payload": lambda s: _payload_swapped(
        s.sign({"scope": "patient/*.rs", "patient": "a"}), scope="system/*.rs"
    ),
    "HS256 with the public key": _hs256_with_public_key,
    "garbage": lambda s: "not-a-token",
    # RFC 9068 4: typ must be at+jwt; a plain JWT (an ID token, a client assertion…) is not an access token
    "typ JWT": lambda s: s.sign({"scope": "system/*.rs"}, typ="JWT"),
    "no typ": lambda s: s.sign({"scope": "system/*.rs"}, typ=None),
    "typ of another kind": lambda s: s.sign({"scope": "system/*.rs"}, typ="dpop+jwt"),
    # RFC 7519 2: NumericDate is a JSON number; PyJWT takes "1700000000" for one
    "exp a string": lambda s: s.sign({"scope": "system/*.rs", "exp": str(int(time.time()) + 300)}),
    "exp a string, not a number": lambda s: s.sign({"scope": "system/*.rs", "exp": "tomorrow"}),
    "exp true": lambda s: s.sign({"scope": "system/*.rs", "exp": True}),
    "nbf a string": lambda s: s.sign({"scope": "system/*.rs", "nbf": str(int(time.time()) - 60)}),
    "iat a string": lambda s: s.sign({"scope": "system/*.rs", "iat": str(int(time.time()))}),
    "exp infinite": lambda s: s.sign({"scope": "system/*.rs", "exp": float("inf")}),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_refused_tokens_get_401_with_an_explanation(app, auth_server, case):
    token = REFUSED[case](auth_server)
    if case == "no exp":
        assert "exp" not in jwt.decode(token, options={"verify_signature": False})
    if case == "no typ":
        assert "typ" not in jwt.get_unverified_header(token)
    response = app.test_client().get("/fhir/ImagingStudy", headers=bearer(token))
    assert response.status_code == 401, case
    challenge = response.headers["WWW-Authenticate"]
    assert challenge.startswith('Bearer realm="imaging-facade"') and 'error="invalid_token"' in challenge
    assert "error_description=" in challenge
    body = response.get_json()
    assert body["resourceType"] == "OperationOutcome" and body["issue"][0]["code"] == "login"


def test_refusal_reasons_name_the_problem(app, auth_server):
    api = app.test_client()
    cases = {
        "expired": "expired",
        "not yet valid": "not valid yet",
        "wrong audience": "not meant for this server",
        "wrong issuer": "another authorization server",
        "alg none": "'none' are not accepted",
        "HS256 with the public key": "'HS256' are not accepted",
        "re-signed payload": "signature",
        "unknown key, unknown kid": "does not publish",
        "typ JWT": "not an RFC 9068 access token",
        "no typ": "not an RFC 9068 access token",
        "exp a string": "'exp' is not a number",
        "exp a string, not a number": "'exp' is not a number",
        "iat a string": "'iat' is not a number",
    }
    for case, words in cases.items():
        diagnostics = api.get("/fhir/ImagingStudy", headers=bearer(REFUSED[case](auth_server))).get_json()
        assert words in diagnostics["issue"][0]["diagnostics"], case


@pytest.mark.parametrize("typ", ["at+jwt", "application/at+jwt", "AT+JWT", "Application/At+Jwt"])
def test_access_tokens_typed_as_rfc_9068_says_are_accepted(app, auth_server, typ):
    """RFC 9068 4 names both forms; media types compare case-insensitively (RFC 7515 4.1.9)."""
    token = auth_server.sign({"scope": "system/*.rs"}, typ=typ)
    assert app.test_client().get("/fhir/Endpoint", headers=bearer(token)).status_code == 200


def test_plain_jwt_access_tokens_only_when_configured(make_app, auth_server):
    """Some authorization servers predate RFC 9068 and type their access tokens `JWT`, or not
    at all: `security.allow_plain_jwt` accepts those, still refusing any other type."""
    api = make_app(allow_plain_jwt=True).test_client()
    for typ in ("JWT", None, "at+jwt", "application/jwt"):
        token = auth_server.sign({"scope": "system/*.rs"}, typ=typ)
        assert api.get("/fhir/Endpoint", headers=bearer(token)).status_code == 200, typ
    refused = api.get("/fhir/Endpoint", headers=bearer(auth_server.sign({"scope": "system/*.rs"}, typ="dpop+jwt")))
    assert refused.status_code == 401
    assert "not an RFC 9068 access token" in refused.get_json()["issue"][0]["diagnostics"]
    # the checks after the type still hold
    expired = auth_server.sign({"scope": "system/*.rs", "exp": int(time.time()) - 600}, typ="JWT")
    assert api.get("/fhir/Endpoint", headers=bearer(expired)).status_code == 401


def test_a_token_from_the_authorization_server_is_typed_at_jwt(auth_server):
    """The tokens a real RFC 9068 server issues (authlib's) pass the type check unchanged."""
    token = BackendClient(auth_server, "typed-backend").token("system/*.rs")
    assert jwt.get_unverified_header(token)["typ"] == "at+jwt"


def test_missing_token_gets_401_without_error_code(app):
    """RFC 6750 §3.1: a request without any token is told the scheme, not an error."""
    for headers in ({}, {"Authorization": "Basic dXNlcjpwYXNz"}):
        response = app.test_client().get("/fhir/ImagingStudy", headers=headers)
        assert response.status_code == 401
        assert response.headers["WWW-Authenticate"] == 'Bearer realm="imaging-facade"'
        assert response.get_json()["resourceType"] == "OperationOutcome"


def test_public_endpoints_need_no_token(app):
    api = app.test_client()
    assert api.get("/fhir/metadata").status_code == 200
    assert api.get("/fhir/.well-known/smart-configuration").status_code == 200
    assert api.get("/health").status_code == 200


def test_key_rotation_is_followed_after_a_refresh(app, auth_server):
    client = BackendClient(auth_server, "rotating-backend")
    api = app.test_client()
    old = client.token("system/*.rs")
    assert api.get("/fhir/Endpoint", headers=bearer(old)).status_code == 200
    new_kid = auth_server.rotate()
    new = client.token("system/*.rs")
    assert jwt.get_unverified_header(new)["kid"] == new_kid
    before = auth_server.jwks_fetches()
    assert api.get("/fhir/Endpoint", headers=bearer(new)).status_code == 200
    assert auth_server.jwks_fetches() == before + 1  # the unknown kid made it fetch the keys again
    assert api.get("/fhir/Endpoint", headers=bearer(old)).status_code == 200  # still published


def test_unknown_key_ids_cannot_make_it_fetch_keys_in_a_loop(make_app, auth_server):
    app = make_app(jwks_min_refresh=60)
    api = app.test_client()
    assert api.get("/fhir/Endpoint", headers=bearer(auth_server.sign({"scope": "system/*.rs"}))).status_code == 200
    before = auth_server.jwks_fetches()
    for i in range(5):
        token = auth_server.sign({"scope": "system/*.rs"}, key=rsa_jwk("x")[1], kid=f"made-up-{i}")
        assert api.get("/fhir/Endpoint", headers=bearer(token)).status_code == 401
    assert auth_server.jwks_fetches() == before  # within jwks_min_refresh: no fetch at all


def test_unknown_kid_refetches_and_still_refuses(app, auth_server):
    api = app.test_client()
    assert api.get("/fhir/Endpoint", headers=bearer(auth_server.sign({"scope": "system/*.rs"}))).status_code == 200
    before = auth_server.jwks_fetches()
    token = auth_server.sign({"scope": "system/*.rs"}, key=rsa_jwk("x")[1], kid="never-published")
    assert api.get("/fhir/Endpoint", headers=bearer(token)).status_code == 401
    assert auth_server.jwks_fetches() == before + 1


def test_a_checked_token_is_not_checked_again(app, auth_server, monkeypatch):
    """Repeated requests with one token verify its signature once (the cache, until exp)."""
    token = auth_server.sign({"scope": "system/*.rs"})
    calls = []
    real_decode = jwt.decode

    def counting_decode(*args, **kwargs):
        calls.append(1)
        return real_decode(*args, **kwargs)

    monkeypatch.setattr("app.security.tokens.jwt.decode", counting_decode)
    api = app.test_client()
    for _ in range(5):
        assert api.get("/fhir/Endpoint", headers=bearer(token)).status_code == 200
    assert len(calls) == 1


def test_a_cached_token_still_expires(make_app, auth_server):
    app = make_app(clock_skew=0)
    token = auth_server.sign({"scope": "system/*.rs", "exp": int(time.time()) + 2})
    api = app.test_client()
    assert api.get("/fhir/Endpoint", headers=bearer(token)).status_code == 200
    time.sleep(3.1)
    assert api.get("/fhir/Endpoint", headers=bearer(token)).status_code == 401


def test_unreachable_keys_answer_503_not_401(make_app, auth_server):
    app = make_app(jwks_uri=f"http://127.0.0.1:{free_port()}/jwks")
    response = app.test_client().get("/fhir/Endpoint", headers=bearer(auth_server.sign({"scope": "system/*.rs"})))
    assert response.status_code == 503 and response.headers["Retry-After"]
    assert response.get_json()["resourceType"] == "OperationOutcome"


def test_jwks_keys_of_the_wrong_type_are_not_used(auth_server):
    """An ES384 header cannot select an RSA key, whatever the kid says."""
    keys = JwksKeys(auth_server.jwks_uri, min_refresh=0, max_age=3600)
    from app.security.tokens import _fits

    found = keys.find("as-key-1", time.time())
    assert found and all(not _fits(data, "ES384") and _fits(data, "RS384") for data, _ in found)


def test_keys_are_fetched_again_after_max_age_and_kept_when_the_server_is_down(auth_server):
    keys = JwksKeys(auth_server.jwks_uri, min_refresh=30, max_age=60)
    now = time.time()
    before = auth_server.jwks_fetches()
    assert keys.find("as-key-1", now)
    assert keys.find("as-key-1", now + 59) and auth_server.jwks_fetches() == before + 1  # held
    assert keys.find("as-key-1", now + 61) and auth_server.jwks_fetches() == before + 2  # too old: fetched
    keys.uri = f"http://127.0.0.1:{free_port()}/jwks"  # the authorization server goes away
    assert keys.find("as-key-1", now + 200)  # the keys held still verify
    assert keys.find("as-key-1", now + 210)  # and no request waits on the server for min_refresh
    assert keys._tried_at == now + 200


def test_a_server_that_never_answered_is_not_asked_on_every_request(auth_server):
    from app.security.tokens import AuthServerUnavailable

    keys = JwksKeys(f"http://127.0.0.1:{free_port()}/jwks", min_refresh=30, max_age=60)
    now = time.time()
    for offset in (0, 10):
        with pytest.raises(AuthServerUnavailable):
            keys.find("as-key-1", now + offset)
    assert keys._tried_at == now
    keys.uri = auth_server.jwks_uri  # back
    assert keys.find("as-key-1", now + 31)
