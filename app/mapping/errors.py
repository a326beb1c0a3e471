"""The one failure mapping reports to its caller: a study FHIR cannot hold at all.

Everything less is repaired or left out and said in the study's repair notes; this is for
what leaves no resource to write (no usable StudyInstanceUID, no series, an unknown zone).
"""

from __future__ import annotations


class MappingError(Exception):
    """A study that cannot be represented as FHIR at all; `reason` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
