"""Bearer token checks: a signed JWT against the authorization server's keys, or RFC 7662
introspection. Either way the answer is the token's claims, or `InvalidToken` saying why.

Signatures are checked by PyJWT; this module decides which key and which algorithm may be
used, because that is where JWT validation goes wrong in practice (RFC 8725): the algorithm
must be one configured (asymmetric only: never `none`, never HMAC, so a public key can never
serve as a shared secret), the key comes from the issuer's JWKS by its `kid`, and the key's
type and curve must fit the algorithm. The token must be typed as an access token (RFC 9068
§4: `typ` `at+jwt`), so an ID token or a client assertion signed by the same server is not
taken for one (RFC 8725 §3.11), and its times must be numbers (RFC 7519 NumericDate).

Checked tokens are cached by their SHA-256, until they expire, so a client repeating a token
costs one signature check (or one introspection call), not one per request.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from math import isfinite
from typing import Any, Generic, TypeVar

import jwt
import requests

from app.config import SecurityConfig

log = logging.getLogger(__name__)

#: what a checked token is made into (app/security/authorize.py: its Access)
T = TypeVar("T")

#: the JWK a signature algorithm needs: (kty, crv)
_KEY_TYPES = {"RS256": ("RSA", None), "RS384": ("RSA", None), "ES256": ("EC", "P-256"), "ES384": ("EC", "P-384")}
#: RFC 9068 §4: "The resource server MUST verify that the typ header value is at+jwt or
#: application/at+jwt and reject tokens carrying any other value"; compared lowercased, as media
#: types are (RFC 7515 §4.1.9)
ACCESS_TOKEN_TYPES = frozenset({"at+jwt", "application/at+jwt"})
#: what authorization servers that predate RFC 9068 send (`security.allow_plain_jwt`): JWT, or no typ
PLAIN_JWT_TYPES = frozenset({"jwt", "application/jwt", None})
#: the claims RFC 7519 §4.1 makes NumericDates (JSON numbers)
_TIMES = ("exp", "nbf", "iat")


class InvalidToken(Exception):
    """The token cannot be used: expired, wrong audience, bad signature… (401, invalid_token)."""


class AuthServerUnavailable(Exception):
    """The authorization server's keys or introspection endpoint cannot be reached (503)."""


def token_digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


class TokenCache(Generic[T]):
    """Checked tokens by digest, each until its own expiry; bounded, least recently used out first."""

    def __init__(self, size: int):
        self.size = size
        self._items: OrderedDict[bytes, tuple[float, T]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: bytes, now: float) -> T | None:
        with self._lock:
            item = self._items.get(key)
            if item is None:
                return None
            if item[0] <= now:
                del self._items[key]
                return None
            self._items.move_to_end(key)
            return item[1]

    def put(self, key: bytes, until: float, value: T, now: float) -> None:
        if self.size <= 0 or until <= now:
            return
        with self._lock:
            self._items[key] = (until, value)
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)


class JwksKeys:
    """The authorization server's public keys, fetched from its `jwks_uri` and held.

    Fetched again after `max_age` seconds, and when a token names a key id not held (the
    server rotated its keys), but never twice within `min_refresh` seconds: a stream of tokens
    with made-up key ids then costs one fetch per interval, not one each, and while the server
    is down requests do not each wait for it (the keys held go on verifying meanwhile).
    """

    def __init__(
        self,
        uri: str,
        min_refresh: float,
        max_age: float,
        timeout: float = 5.0,
        session: requests.Session | None = None,
    ):
        self.uri = uri
        self.min_refresh = min_refresh
        self.max_age = max_age
        self.timeout = timeout
        self.session = session or requests.Session()
        #: kid -> [(the JWK as published, the key)]
        self._keys: dict[str | None, list[tuple[dict, jwt.PyJWK]]] = {}
        self._fetched_at: float | None = None  # time of the last successful fetch
        self._tried_at: float | None = None  # time of the last attempt
        self._lock = threading.Lock()

    def find(self, kid: str | None, now: float) -> list[tuple[dict, jwt.PyJWK]]:
        """The keys that may have signed a token with this `kid` (all keys when it names none)."""
        with self._lock:
            may_fetch = self._tried_at is None or now - self._tried_at >= self.min_refresh
            if self._fetched_at is None:
                if not may_fetch:  # the server just failed to answer: do not wait on it again yet
                    raise AuthServerUnavailable("the authorization server's signing keys could not be fetched")
                self._refresh(now, required=True)
                may_fetch = False
            elif now - self._fetched_at >= self.max_age and may_fetch:
                self._refresh(now, required=False)
                may_fetch = False
            keys = self._lookup(kid)
            if not keys and may_fetch:
                self._refresh(now, required=False)
                keys = self._lookup(kid)
            return keys

    def _lookup(self, kid: str | None) -> list[tuple[dict, jwt.PyJWK]]:
        if kid is None:
            return [k for keys in self._keys.values() for k in keys]
        return self._keys.get(kid, [])

    def _refresh(self, now: float, required: bool) -> None:
        self._tried_at = now
        try:
            response = self.session.get(self.uri, timeout=self.timeout, headers={"Accept": "application/json"})
            response.raise_for_status()
            document = response.json()
            keys = document["keys"] if isinstance(document, dict) else None
            if not isinstance(keys, list):
                raise ValueError("no 'keys' list")
        except (requests.RequestException, ValueError, KeyError) as exc:
            log.warning("could not fetch the authorization server's keys from %s: %s", self.uri, type(exc).__name__)
            if required or not self._keys:
                raise AuthServerUnavailable("the authorization server's signing keys could not be fetched") from None
            return
        held: dict[str | None, list[tuple[dict, jwt.PyJWK]]] = {}
        for data in keys:
            key = _usable_key(data)
            if key is not None:
                held.setdefault(data.get("kid"), []).append((data, key))
        self._keys = held
        self._fetched_at = now
        log.info("fetched %d signing keys from %s", sum(map(len, held.values())), self.uri)


def _usable_key(data: object) -> jwt.PyJWK | None:
    """A JWK this server can verify with: a public signing key of a supported type."""
    if not isinstance(data, dict) or data.get("use", "sig") != "sig" or data.get("kty") not in ("RSA", "EC"):
        return None
    try:
        return jwt.PyJWK(data)
    except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, TypeError, KeyError):
        return None


def _fits(data: dict, alg: str) -> bool:
    kty, crv = _KEY_TYPES[alg]
    if data.get("kty") != kty or (crv is not None and data.get("crv") != crv):
        return False
    return data.get("alg") in (None, alg)


class JwtValidator:
    """Signed JWT access tokens (RFC 9068): signature by the issuer's JWKS, `iss`, `aud`,
    `exp` and `nbf` (with `clock_skew` seconds of leeway)."""

    def __init__(self, security: SecurityConfig, session: requests.Session | None = None):
        assert security.jwks_uri is not None  # made for a server that checks tokens against its JWKS only
        self.issuer = security.issuer
        self.audience = security.audience
        self.algorithms = tuple(security.algorithms)
        self.leeway = security.clock_skew
        self.types = ACCESS_TOKEN_TYPES | (PLAIN_JWT_TYPES if security.allow_plain_jwt else frozenset())
        self.keys = JwksKeys(security.jwks_uri, security.jwks_min_refresh, security.jwks_max_age, session=session)

    def claims(self, token: str, now: float) -> dict:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise InvalidToken("the token is not a signed JWT") from None
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self.algorithms:
            raise InvalidToken(
                f"tokens signed with {str(alg)[:16]!r} are not accepted (accepted: {', '.join(self.algorithms)})"
            )
        typ = header.get("typ")
        if (typ.lower() if isinstance(typ, str) else typ) not in self.types:
            raise InvalidToken(
                f"the token is not an RFC 9068 access token (typ {str(typ)[:24]!r}; at+jwt expected)"
                if typ is not None
                else "the token is not an RFC 9068 access token (no typ; at+jwt expected)"
            )
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise InvalidToken("the token's key id (kid) is not a string")
        keys = [key for data, key in self.keys.find(kid, now) if _fits(data, alg)]
        if not keys:
            raise InvalidToken("the token was signed with a key the authorization server does not publish")
        for key in keys:
            try:
                claims = jwt.decode(
                    token,
                    key.key,
                    algorithms=[alg],
                    audience=self.audience,
                    issuer=self.issuer,
                    # the times are checked below: PyJWT takes a string of digits for a number
                    options={
                        "require": ["exp", "iss", "aud"],
                        "verify_exp": False,
                        "verify_nbf": False,
                        "verify_iat": False,
                    },
                )
            except jwt.InvalidSignatureError:
                continue
            except jwt.InvalidAudienceError:
                raise InvalidToken(f"the token is not meant for this server (aud must be {self.audience})") from None
            except jwt.InvalidIssuerError:
                raise InvalidToken("the token was issued by another authorization server (iss)") from None
            except jwt.MissingRequiredClaimError as exc:
                raise InvalidToken(f"the token has no '{exc.claim}' claim") from None
            except jwt.PyJWTError:
                raise InvalidToken("the token could not be decoded") from None
            self._check_times(claims, now)
            return claims
        raise InvalidToken("the token's signature does not verify")

    def _check_times(self, claims: dict, now: float) -> None:
        """`exp` (required), `nbf` and `iat` are JSON numbers (RFC 7519 §2 NumericDate; a string,
        a boolean or an infinity is refused, not read as one), with `clock_skew` seconds of leeway."""
        for name in _TIMES:
            value = claims.get(name)
            if name in claims and (
                isinstance(value, bool) or not isinstance(value, (int, float)) or not isfinite(value)
            ):
                raise InvalidToken(f"the token's '{name}' is not a number (RFC 7519 NumericDate)")
        if claims["exp"] <= now - self.leeway:
            raise InvalidToken("the token has expired")
        if claims.get("nbf", now) > now + self.leeway or claims.get("iat", now) > now + self.leeway:
            raise InvalidToken("the token is not valid yet (nbf or iat in the future)")


class IntrospectionValidator:
    """RFC 7662: ask the authorization server whether the token is active, authenticated with
    this server's client credentials (HTTP Basic, RFC 7662 §2.1). An active answer must not
    name another audience or issuer, and must not be past its `exp`."""

    def __init__(self, security: SecurityConfig, session: requests.Session | None = None):
        assert security.introspection is not None  # made for a server that introspects tokens only
        self.config = security.introspection
        self.issuer = security.issuer
        self.audience = security.audience
        self.leeway = security.clock_skew
        self.session = session or requests.Session()

    def claims(self, token: str, now: float) -> dict:
        try:
            response = self.session.post(
                self.config.url,
                data={"token": token, "token_type_hint": "access_token"},
                auth=(self.config.client_id, self.config.client_secret),
                timeout=self.config.timeout,
                headers={"Accept": "application/json"},
            )
            response.raise_for_status()
            answer = response.json()
        except (requests.RequestException, ValueError) as exc:
            log.warning("token introspection at %s failed: %s", self.config.url, type(exc).__name__)
            raise AuthServerUnavailable("the authorization server's introspection endpoint did not answer") from None
        if not isinstance(answer, dict) or answer.get("active") is not True:
            raise InvalidToken("the authorization server says the token is not active")
        exp = answer.get("exp")
        if isinstance(exp, (int, float)) and exp + self.leeway < now:
            raise InvalidToken("the token has expired")
        nbf = answer.get("nbf")
        if isinstance(nbf, (int, float)) and nbf - self.leeway > now:
            raise InvalidToken("the token is not valid yet (nbf)")
        aud = answer.get("aud")
        if aud is not None and self.audience not in (aud if isinstance(aud, list) else [aud]):
            raise InvalidToken(f"the token is not meant for this server (aud must be {self.audience})")
        if self.issuer and answer.get("iss") not in (None, self.issuer):
            raise InvalidToken("the token was issued by another authorization server (iss)")
        return answer

    def cache_until(self, claims: dict, now: float) -> float:
        until = now + self.config.cache_seconds
        exp = claims.get("exp")
        return min(until, exp) if isinstance(exp, (int, float)) else until


class TokenChecker(Generic[T]):
    """Token -> whatever `build` makes of its claims, checked once and then cached."""

    def __init__(
        self, security: SecurityConfig, build: Callable[[dict[str, Any]], T], session: requests.Session | None = None
    ):
        self.validator: JwtValidator | IntrospectionValidator
        if security.jwks_uri:
            self.validator = JwtValidator(security, session)
        else:
            self.validator = IntrospectionValidator(security, session)
        self.build = build
        self.cache: TokenCache[T] = TokenCache(security.token_cache_size)

    def check(self, token: str, now: float | None = None) -> T:
        now = time.time() if now is None else now
        key = token_digest(token)
        found = self.cache.get(key, now)
        if found is not None:
            return found
        claims = self.validator.claims(token, now)
        value = self.build(claims)
        if isinstance(self.validator, IntrospectionValidator):
            until = self.validator.cache_until(claims, now)
        else:
            until = claims["exp"]
        self.cache.put(key, until, value, now)
        return value
