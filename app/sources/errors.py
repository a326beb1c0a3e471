"""Errors a source raises when it cannot serve at all (as opposed to one bad study,
which it yields as a `StudyFailure` and goes on)."""

from __future__ import annotations


class SourceError(Exception):
    """The archive cannot be read: unreachable, refused, misconfigured.

    The message names the source and its location; it never carries credentials.
    """

    def __init__(self, source: str, location: str, reason: str):
        self.source = source
        self.location = location
        self.reason = reason
        super().__init__(f"source {source!r} ({location}): {reason}")


#: this many studies in a row failing on the archive's side (5xx answers, dropped associations)
#: means the archive, not the studies, is failing: the run ends instead of quarantining the rest
ARCHIVE_DOWN_AFTER = 3
