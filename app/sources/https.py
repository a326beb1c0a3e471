"""requests sessions that speak to an archive with its source's TLS keys (app/sources/tls.py).

The keys are set on the transport adapter, not only as the session's `verify` and `cert`:
requests (2.34) lets the REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE environment variables override a
session's `verify`, and a source's CA bundle must win over the host's environment. Every session
made from an adapter mounted this way (DICOMweb's reading threads share the source's adapters)
connects with the same keys.
"""

from __future__ import annotations

from typing import Any

import requests
from requests.adapters import DEFAULT_POOLSIZE, HTTPAdapter

from app.sources.tls import TlsSettings


class TlsAdapter(HTTPAdapter):
    """An HTTPAdapter that verifies with the source's CA bundle and shows its client certificate."""

    def __init__(self, tls: TlsSettings, **kwargs: Any):
        self.tls = tls
        super().__init__(**kwargs)

    def send(self, request: requests.PreparedRequest, *args: Any, **kwargs: Any) -> requests.Response:
        kwargs["verify"] = self.tls.verify
        kwargs["cert"] = self.tls.cert
        return super().send(request, *args, **kwargs)


def mount_tls(session: requests.Session, tls: TlsSettings | None, pool: int = DEFAULT_POOLSIZE) -> requests.Session:
    """`session` with the keys of `tls` for every https:// URL (no change without them)."""
    if tls is not None:
        session.mount("https://", TlsAdapter(tls, pool_maxsize=max(pool, DEFAULT_POOLSIZE)))
        session.verify, session.cert = tls.verify, tls.cert
    return session
