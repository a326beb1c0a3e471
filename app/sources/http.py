"""What the HTTP sources share: which answers are worth another try, and how an archive's
address is shown without its credentials."""

from __future__ import annotations

from dataclasses import dataclass
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


@dataclass(frozen=True)
class Credentials:
    """How the facade logs in to an archive's HTTP service: basic auth, a bearer token, or neither."""

    username: str | None = None
    password: str | None = None
    token: str | None = None

    def auth(self) -> tuple[str, str] | None:
        """The (user, password) pair for HTTP basic auth (RFC 7617), or None."""
        return (self.username, self.password or "") if self.username else None

    def headers(self) -> dict[str, str]:
        """The Authorization header of a bearer token (RFC 6750), if there is one."""
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}
