"""Paging links: stateless, signed, short, and expiring.

A `next` link carries the query itself plus a signed token holding only where the next page
starts (the last match's sort values and id: keyset paging, so pages stay stable while
studies are added or removed), a digest of the search it belongs to, and when it was made.
Nothing is kept on the server, any process behind a load balancer can answer it, and a
tampered, foreign or expired token is a 400, never a 500.
"""

from __future__ import annotations

import hashlib

from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer

from app.search.query import SearchError


def search_digest(rtype: str, applied: list[tuple[str, str]], binding: str = "") -> str:
    """A short fingerprint of a search: its type, the parameters it applied, in order, and
    `binding` (who asks: a link made for one access token is foreign to another)."""
    text = "\n".join([rtype, *(f"{name}={value}" for name, value in applied), f"\x00{binding}"])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class PageTokens:
    def __init__(self, secret: str, max_age: int = 3600):
        self._serializer = URLSafeTimedSerializer(secret, salt="fhir-search-page")
        self._max_age = max_age

    def make(self, digest: str, cursor: list) -> str:
        return self._serializer.dumps([digest, cursor])

    def read(self, digest: str, token: str) -> list:
        try:
            found, cursor = self._serializer.loads(token, max_age=self._max_age)
        except SignatureExpired:
            raise SearchError(
                "invalid", "parameter '_page': the paging link has expired; start the search again from its first page"
            ) from None
        except (BadSignature, ValueError, TypeError):
            raise SearchError(
                "invalid",
                "parameter '_page': the paging token is not valid; start the search again from its first page",
            ) from None
        if found != digest or not isinstance(cursor, list) or not cursor:
            raise SearchError("invalid", "parameter '_page': the paging token belongs to another search")
        return cursor
