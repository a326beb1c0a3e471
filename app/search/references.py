"""References to another server's resources, keyed the same way in the index and in a search.

R4 matches `endpoint=http://other.example/fhir/Endpoint/5` against a reference with that
absolute URL. Such a resource is never stored here, so its key only has to be equal on both
sides: "~" and the URL without a version. "~" is never in a FHIR id, so the key never meets
a local resource, and it sorts after the local ids of the same type, the URLs among
themselves in their own order.
"""

from __future__ import annotations


def external_reference(url: str) -> tuple[str, str] | None:
    """(resource type, key) of an absolute reference URL, or None if it names no resource."""
    parts = url.split("/")
    if len(parts) >= 7 and parts[-2] == "_history":
        parts = parts[:-2]
    if len(parts) < 5 or not parts[-2] or not parts[-1]:
        return None
    return parts[-2], "~" + "/".join(parts)
