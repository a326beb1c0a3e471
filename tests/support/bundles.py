"""Reading the searchset Bundles the server answers (FHIR R4 Bundle, http.html#paging)."""

from __future__ import annotations

#: the base URL of Flask's test client, which the server's links carry in the tests
TEST_SERVER = "http://testserver"


def next_link(body: dict) -> str | None:
    """The Bundle's "next" link as a path the test client asks for; None on the last page."""
    url = next((link["url"] for link in body["link"] if link["relation"] == "next"), None)
    return url.removeprefix(TEST_SERVER) if url else None
