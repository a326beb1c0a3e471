"""What the HTTP sources share: which answers are worth another try, and how an archive's
address is shown without its credentials."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

#: HTTP statuses worth another try: the archive or a proxy in front of it is busy
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})


def public_url(url: str) -> str:
    """The URL without user:password@ (for messages)."""
    parts = urlsplit(url)
    if parts.username or parts.password:
        host = parts.hostname or ""
        if parts.port:
            host = f"{host}:{parts.port}"
        parts = parts._replace(netloc=host)
    return urlunsplit(parts)
