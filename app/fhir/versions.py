"""Whether the request may see one stored version (the Guard's `version_visible`), a deletion too."""

from __future__ import annotations

from app.api.hooks import Guard
from app.clock import micros_to_instant
from app.errors import FhirError
from app.store.reader import Reader
from app.store.resources import read_version


def version_shown(guard: Guard, reader: Reader, rtype: str, rid: str, version: int, content: bytes) -> bool:
    """A deletion holds no resource: whether it may be shown is judged by the version it ended
    (whose patient it was), and by nothing at all if that is missing."""
    if not content:
        previous = read_version(reader, rtype, rid, version - 1) if version > 1 else None
        content = previous[1] if previous is not None and previous[1] else b"{}"
    return guard.version_visible(rtype, content)


def deleted_version(rtype: str, rid: str, version: int, micros: int) -> FhirError:
    """A vread of the version a deletion made: 410 Gone (FHIR R4 http 3.1.0.3), with its ETag."""
    return FhirError(
        410,
        "deleted",
        f"{rtype}/{rid} version {version} is its deletion, at {micros_to_instant(micros)}",
        headers={"ETag": f'W/"{version}"'},
    )
