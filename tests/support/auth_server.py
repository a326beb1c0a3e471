"""A small OAuth2 authorization server for the security tests, built on authlib, run as its
own process on a loopback port: `python auth_server.py --port P --key FILE --audience URL`.

It does what an EHR's authorization server does for SMART Backend Services:
- `POST /token`: `client_credentials` with a `private_key_jwt` client assertion (RFC 7523,
  checked by authlib: iss = sub = client_id, aud = this token URL, signature by the client's
  registered key, exp at most 5 minutes ahead, jti never seen before), answered with a JWT
  access token (RFC 9068) signed with the current key; `patient/` scopes carry the client's
  patient as the `patient` claim, as a SMART launch context would;
- `GET /jwks`: its public keys;
- `POST /introspect`: RFC 7662, for a client that authenticates with its secret (HTTP Basic).

Test-only controls: `POST /admin/clients` registers a client (its public JWKS, or a secret,
and a patient); `POST /admin/rotate` adds a new signing key and signs with it from then on;
`POST /admin/revoke` marks a token inactive for introspection; `GET /admin/stats` counts
JWKS fetches. The initial signing key is read from `--key` so tests can sign tokens that
this server would never issue (expired, wrong audience…) with a key it publishes.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import time

from authlib.integrations.flask_oauth2 import AuthorizationServer
from authlib.oauth2.rfc6749 import ClientMixin, grants
from authlib.oauth2.rfc7523 import JWTBearerClientAssertion
from authlib.oauth2.rfc7662 import IntrospectionEndpoint
from authlib.oauth2.rfc9068 import JWTBearerTokenGenerator
from flask import Flask, jsonify, request
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet, RSAKey
from joserfc.jws import JWSRegistry

ASSERTION_MAX_LIFETIME = 300  # SMART Backend Services: exp no more than five minutes after now
#: SMART Backend Services asks for RS384 or ES384, which joserfc does not enable by default; HS256,
#: which it does, is what a SMART server must not take for assertions
SMART_ALGORITHMS = ("RS384", "ES384")
JWSRegistry.recommended[:] = list(SMART_ALGORITHMS)


class Client(ClientMixin):
    def __init__(self, client_id: str, jwks: dict | None = None, secret: str | None = None, patient: str | None = None):
        self.client_id = client_id
        self.jwks = jwks
        self.secret = secret
        self.patient = patient

    def get_client_id(self):
        return self.client_id

    def get_default_redirect_uri(self):
        return None

    def get_allowed_scope(self, scope):
        return scope or ""

    def check_redirect_uri(self, redirect_uri):
        return False

    def check_client_secret(self, client_secret):
        return self.secret is not None and secrets.compare_digest(self.secret, client_secret)

    def check_endpoint_auth_method(self, method, endpoint):
        if endpoint == "token":
            return method == "private_key_jwt" and self.jwks is not None
        return method == "client_secret_basic" and self.secret is not None

    def check_response_type(self, response_type):
        return False

    def check_grant_type(self, grant_type):
        return grant_type == "client_credentials" and self.jwks is not None


class BackendServicesGrant(grants.ClientCredentialsGrant):
    TOKEN_ENDPOINT_AUTH_METHODS = ["private_key_jwt"]


class PrivateKeyAssertion(JWTBearerClientAssertion):
    CLIENT_AUTH_METHOD = "private_key_jwt"

    def __init__(self, token_url: str):
        super().__init__(validate_jti=True)
        self.audience = token_url
        self.seen: set[tuple[str, str]] = set()

    def get_audiences(self):
        return [self.audience]

    def resolve_client_public_key(self, client):
        return KeySet.import_key_set(client.jwks)

    def validate_jti(self, claims, jti):
        key = (claims["sub"], jti)
        if key in self.seen:
            return False
        self.seen.add(key)
        return True

    def verify_claims(self, claims):
        super().verify_claims(claims)
        if claims["exp"] > time.time() + ASSERTION_MAX_LIFETIME:
            from authlib.oauth2.rfc6749 import InvalidClientError

            raise InvalidClientError(description="the assertion must expire within five minutes")


class Keys:
    """Signing keys: all published, the newest signs."""

    def __init__(self, first: RSAKey):
        self.all = [first]

    @property
    def current(self) -> RSAKey:
        return self.all[-1]

    def rotate(self) -> str:
        key = RSAKey.generate_key(2048, parameters={"use": "sig", "alg": "RS384"}, auto_kid=True)
        self.all.append(key)
        return key.kid

    def public(self) -> dict:
        return {"keys": [k.as_dict(private=False) for k in self.all]}


class TokenGenerator(JWTBearerTokenGenerator):
    def __init__(self, issuer, audience, keys: Keys):
        super().__init__(issuer, alg="RS384")
        self.audience = audience
        self.keys = keys

    def get_jwks(self):
        return KeySet([self.keys.current])

    def get_audiences(self, client, user, scope):
        return self.audience

    def get_extra_claims(self, client, grant_type, user, scope):
        if client.patient and any(s.startswith("patient/") for s in (scope or "").split()):
            return {"patient": client.patient}
        return {}


class IssuedToken:
    def __init__(self, claims: dict, revoked: bool):
        self.claims = claims
        self.revoked = revoked

    def is_expired(self):
        return self.claims.get("exp", 0) < time.time()

    def is_revoked(self):
        return self.revoked


def create_app(port: int, first_key: RSAKey, audience: str) -> Flask:
    base = f"http://127.0.0.1:{port}"
    app = Flask("test-authorization-server")
    clients: dict[str, Client] = {}
    revoked: set[str] = set()
    keys = Keys(first_key)
    stats = {"jwks": 0}

    server = AuthorizationServer(app, query_client=clients.get, save_token=lambda token, req: None)
    server.register_client_auth_method("private_key_jwt", PrivateKeyAssertion(f"{base}/token"))
    server.register_grant(BackendServicesGrant)
    server.register_token_generator("default", TokenGenerator(base, audience, keys))

    class Introspection(IntrospectionEndpoint):
        def query_token(self, token_string, token_type_hint):
            try:
                decoded = jwt.decode(token_string, KeySet(list(keys.all)))
            except (JoseError, ValueError):
                return None
            return IssuedToken(decoded.claims, token_string in revoked)

        def introspect_token(self, token):
            return {"active": True, **token.claims}

        def check_permission(self, token, client, request):
            return True

    server.register_endpoint(Introspection)

    @app.post("/token")
    def token():
        return server.create_token_response()

    @app.post("/introspect")
    def introspect():
        return server.create_endpoint_response(Introspection.ENDPOINT_NAME)

    @app.get("/jwks")
    def jwks():
        stats["jwks"] += 1
        return jsonify(keys.public())

    @app.post("/admin/clients")
    def register():
        data = request.get_json()
        clients[data["client_id"]] = Client(
            data["client_id"], data.get("jwks"), data.get("secret"), data.get("patient")
        )
        return jsonify({"registered": data["client_id"]})

    @app.post("/admin/rotate")
    def rotate():
        return jsonify({"kid": keys.rotate()})

    @app.post("/admin/revoke")
    def revoke():
        revoked.add(request.get_json()["token"])
        return jsonify({"revoked": True})

    @app.get("/admin/stats")
    def get_stats():
        return jsonify(stats)

    return app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--key", required=True, help="the first signing key, a private JWK (JSON file)")
    parser.add_argument("--audience", required=True, help="the resource server's base URL (aud)")
    args = parser.parse_args()
    os.environ["AUTHLIB_INSECURE_TRANSPORT"] = "1"  # plain HTTP on loopback, for the tests only
    with open(args.key, encoding="utf-8") as handle:
        first = RSAKey.import_key(json.load(handle))
    app = create_app(args.port, first, args.audience)
    app.run(host="127.0.0.1", port=args.port, threaded=True)


if __name__ == "__main__":
    main()
