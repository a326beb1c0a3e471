"""Paging links: stateless, signed and short.

A `next` link carries the query itself plus a signed token holding only the last id of the
page; nothing is kept on the server, any process behind a load balancer can answer it, and
a tampered token is a 400, never a 500.
"""
from __future__ import annotations

from itsdangerous import BadSignature, URLSafeSerializer

from app.search.query import SearchError


class PageTokens:
    def __init__(self, secret: str):
        self._serializer = URLSafeSerializer(secret, salt="fhir-search-page")

    def make(self, rtype: str, last_id: str) -> str:
        return self._serializer.dumps([rtype, last_id])

    def read(self, rtype: str, token: str) -> str:
        try:
            kind, last_id = self._serializer.loads(token)
        except (BadSignature, ValueError, TypeError):
            raise SearchError("invalid", "parameter '_page': the paging token is not valid; "
                                         "start the search again from its first page") from None
        if kind != rtype or not isinstance(last_id, str):
            raise SearchError("invalid", "parameter '_page': the paging token belongs to another search")
        return last_id
