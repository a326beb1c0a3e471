"""Test helpers: the authorization server process (auth_server.py), a SMART Backend Services
client that gets tokens from it, and signing of tokens it would never issue."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import time
import uuid
from pathlib import Path

import jwt
import requests
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from testbed import services
from testbed.orthanc import free_port

HERE = Path(__file__).parent
AUDIENCE = "http://testserver/fhir"


def bearer(token: str) -> dict:
    """The request header that carries `token` (RFC 6750 2.1)."""
    return {"Authorization": f"Bearer {token}"}


def rsa_jwk(kid: str, alg: str = "RS384") -> tuple[dict, object]:
    """A new RSA key: (its private JWK, the key object)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(RSAAlgorithm.to_jwk(key))
    jwk.pop("key_ops", None)
    jwk.update({"kid": kid, "alg": alg, "use": "sig"})
    return jwk, key


def ec_jwk(kid: str) -> tuple[dict, object]:
    key = ec.generate_private_key(ec.SECP384R1())
    jwk = json.loads(ECAlgorithm.to_jwk(key))
    jwk.pop("key_ops", None)
    jwk.update({"kid": kid, "alg": "ES384", "use": "sig"})
    return jwk, key


def public(jwk: dict) -> dict:
    return {k: v for k, v in jwk.items() if k not in ("d", "p", "q", "dp", "dq", "qi")}


class AuthServer:
    """auth_server.py running on a free loopback port."""

    def __init__(self, workdir: Path, audience: str = AUDIENCE):
        services.require("the authorization server")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.issuer = self.url
        self.token_url = f"{self.url}/token"
        self.jwks_uri = f"{self.url}/jwks"
        self.audience = audience
        self.jwk, self.key = rsa_jwk("as-key-1")
        key_file = workdir / "as-key.json"
        key_file.write_text(json.dumps(self.jwk))
        self.log = open(workdir / "auth-server.log", "w")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                str(HERE / "auth_server.py"),
                "--port",
                str(self.port),
                "--key",
                str(key_file),
                "--audience",
                audience,
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.time() + 30
        while True:
            try:
                if requests.get(self.jwks_uri, timeout=1).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if self.proc.poll() is not None or time.time() > deadline:
                self.stop()
                log = (workdir / "auth-server.log").read_text()
                raise RuntimeError(f"the test authorization server did not start: {log}")
            time.sleep(0.1)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)
        self.log.close()

    def register(
        self, client_id: str, jwks: dict | None = None, secret: str | None = None, patient: str | None = None
    ) -> None:
        response = requests.post(
            f"{self.url}/admin/clients",
            json={"client_id": client_id, "jwks": jwks, "secret": secret, "patient": patient},
            timeout=5,
        )
        response.raise_for_status()

    def rotate(self) -> str:
        return requests.post(f"{self.url}/admin/rotate", timeout=10).json()["kid"]

    def revoke(self, token: str) -> None:
        requests.post(f"{self.url}/admin/revoke", json={"token": token}, timeout=5).raise_for_status()

    def jwks_fetches(self) -> int:
        return requests.get(f"{self.url}/admin/stats", timeout=5).json()["jwks"]

    def sign(
        self, claims: dict, key=None, alg: str = "RS384", kid: str | None = "as-key-1", typ: str | None = "at+jwt"
    ) -> str:
        """A token signed with the server's published key (or another), with any claims; typed
        `at+jwt` as an RFC 9068 access token is (`typ=None`: no `typ` header at all)."""
        now = int(time.time())
        payload = {
            "iss": self.issuer,
            "aud": self.audience,
            "exp": now + 300,
            "iat": now,
            "sub": "test-client",
            "client_id": "test-client",
            "jti": uuid.uuid4().hex,
            **claims,
        }
        payload = {k: v for k, v in payload.items() if v is not None}  # None: leave the claim out
        # PyJWT writes typ JWT unless told otherwise, and leaves a falsy typ out
        headers = {"typ": typ or "", **({"kid": kid} if kid else {})}
        return jwt.encode(payload, key if key is not None else self.key, algorithm=alg, headers=headers)


class BackendClient:
    """A SMART Backend Services client: asks for a token with a signed JWT assertion."""

    def __init__(self, server: AuthServer, client_id: str, patient: str | None = None, use_ec: bool = False):
        self.server = server
        self.client_id = client_id
        self.jwk, self.key = ec_jwk(f"{client_id}-key") if use_ec else rsa_jwk(f"{client_id}-key")
        self.alg = self.jwk["alg"]
        server.register(client_id, jwks={"keys": [public(self.jwk)]}, patient=patient)

    def assertion(self, lifetime: int = 240) -> str:
        now = int(time.time())
        return jwt.encode(
            {
                "iss": self.client_id,
                "sub": self.client_id,
                "aud": self.server.token_url,
                "exp": now + lifetime,
                "jti": uuid.uuid4().hex,
            },
            self.key,
            algorithm=self.alg,
            headers={"kid": self.jwk["kid"], "typ": "JWT"},
        )

    def token_response(self, scope: str, assertion: str | None = None) -> requests.Response:
        return requests.post(
            self.server.token_url,
            data={
                "grant_type": "client_credentials",
                "scope": scope,
                "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                "client_assertion": assertion or self.assertion(),
            },
            timeout=10,
        )

    def token(self, scope: str) -> str:
        response = self.token_response(scope)
        assert response.status_code == 200, response.text
        return response.json()["access_token"]


def unsigned(claims: dict) -> str:
    """A token with `alg: none` and no signature."""

    def part(data):
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'none', 'typ': 'at+jwt'})}.{part(claims)}."


#: the real DICOM files (pydicom's test data) of the store the security tests' facades serve
SAMPLE_FILES = ("CT_small.dcm", "MR_small.dcm")


def security_config(auth_server, **overrides) -> dict:
    return {
        "open": False,
        "issuer": auth_server.issuer,
        "audience": AUDIENCE,
        "jwks_uri": auth_server.jwks_uri,
        "token_endpoint": auth_server.token_url,
        "jwks_min_refresh": 0,
        **overrides,
    }
