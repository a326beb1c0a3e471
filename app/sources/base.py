"""What every source is: what it yields (a StudyRecord, the study metadata as DICOM JSON that
mapping reads, app/mapping/record.py, or a StudyFailure), what it can do (the `Source`
protocol), and how its settings open it."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from app.mapping.record import SeriesRecord, StudyRecord

if TYPE_CHECKING:
    from app.mapping.profile import Profile
    from app.sources.orthanc_changes import ChangeEvent, ChangesPage


@dataclass
class StudyFailure:
    """A study the source found but could not read; it goes to quarantine with `reason`."""

    uid: str | None
    reason: str
    location: str | None = None


class ChangeFeed(Protocol):
    """An archive's log of what changed (Orthanc's /changes), followed between full listings."""

    def last_seq(self) -> int:
        """Where the log ends now: a full listing that starts now goes on from here."""
        ...

    def pages(self, since: int) -> Iterator[ChangesPage]:
        """Pages of change events after `since` (app/sources/orthanc_changes.py ChangesPage)."""
        ...

    def deleted_studies(self, known: Mapping[str, str | None]) -> list[ChangeEvent]:
        """Events for the studies in `known` (archive key -> study UID) the archive no longer holds."""
        ...

    def archive_key(self, item: StudyRecord | StudyFailure) -> str | None:
        """The archive's own id of a study a listing yielded, by which the log names it."""
        ...


class Source(Protocol):
    """Everything the sync asks of an archive adapter."""

    name: str
    #: counters a source keeps while iterating, e.g. {"files": 120, "skipped": 3}
    stats: dict
    #: whether `iter_studies` takes a `match` (the archive answers queries: date windows, one
    #: patient's or one study's studies); a folder does not
    answers_queries: bool
    #: the archive's change feed, or None when it has none
    change_feed: ChangeFeed | None

    @property
    def listing_complete(self) -> bool:
        """False when the last listing may have missed studies: deletions are not inferred from it."""
        ...

    def iter_studies(self, match: dict | None = None) -> Iterator[StudyRecord | StudyFailure]:
        """Yield every study of the archive (matching `match`), one at a time."""
        ...

    def total(self, match: dict | None = None) -> int | None:
        """Number of items `iter_studies` will yield, once known (None if unknown)."""
        ...


class ProtocolSettings:
    """A protocol's part of a source's settings (folder, dicomweb, dimse): what opens its Source."""

    def open(self, name: str, profile: Profile | None) -> Source:
        """The Source these settings describe, reading what the mapping profile maps."""
        raise NotImplementedError

    def where(self) -> str:
        """Where the archive is, as `check-config` shows it."""
        raise NotImplementedError


__all__ = ["ChangeFeed", "ProtocolSettings", "SeriesRecord", "Source", "StudyFailure", "StudyRecord"]
