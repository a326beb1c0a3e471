"""The one shape every source yields: study metadata as DICOM JSON (PS3.18 F.2).

QIDO-RS answers in DICOM JSON, pydicom makes it from files (`Dataset.to_json_dict`), so
mapping has a single input format whatever protocol the study came from.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Protocol

import orjson

from app.sources.matching import match_key


@dataclass
class SeriesRecord:
    """One series: its series-level attributes and one DICOM JSON object per instance."""

    attrs: dict
    instances: list[dict] = field(default_factory=list)


@dataclass
class StudyRecord:
    """One study as a source saw it.

    `attrs` holds study- and patient-level attributes (a QIDO-RS study answer, or the
    first file of the study). Query-only attributes such as ModalitiesInStudy or
    NumberOfStudyRelatedInstances are present only when the archive answered them.
    `repairs` lists what the source had to fix to read the study (for the sync report).
    """

    uid: str
    attrs: dict
    series: list[SeriesRecord] = field(default_factory=list)
    repairs: list[str] = field(default_factory=list)


@dataclass
class StudyFailure:
    """A study the source found but could not read; it goes to quarantine with `reason`."""

    uid: str | None
    reason: str
    location: str | None = None


class Source(Protocol):
    """What the sync needs from any archive adapter."""

    name: str
    #: counters a source keeps while iterating, e.g. {"files": 120, "skipped": 3}
    stats: dict

    def iter_studies(self) -> Iterator[StudyRecord | StudyFailure]:
        """Yield every study of the archive, one at a time."""
        ...

    def total(self) -> int | None:
        """Number of studies `iter_studies` will yield, once known (None if unknown)."""
        ...


class ListedSource:
    """An archive asked for its study list first, then for each study's series and instances.

    Listing first makes `total()` known before the first study is fetched (the progress bar
    shows it); a listing made by `total(match)` is used by the next `iter_studies(match)`
    with the same match. `match` narrows the listing to study-level matching keys (see
    `app.sources.matching`); the archive does the matching. Subclasses give
    `_list_studies(match)` (sets `self._total` and `self.listing_gaps`) and
    `_fetch_study(item)`.
    """

    _pending: tuple | None = None  # (match key, listing) listed by total(), not iterated yet
    _listed: tuple | None = None  # match key of the listing `_total` counts
    _total: int | None = None
    #: where the last listing may have missed studies (a capped answer it could not cut)
    listing_gaps: list[str] = []

    @property
    def listing_complete(self) -> bool:
        """False when the last listing may have missed studies: do not infer deletions from it."""
        return not self.listing_gaps

    def total(self, match: dict | None = None) -> int | None:
        """Number of items `iter_studies(match)` yields (StudyRecords + StudyFailures).

        Pass the same `match` as to `iter_studies`: another match is another listing.
        """
        key = match_key(match)
        if self._total is None or self._listed != key:
            self._pending = (key, _packed(self._list_studies(match)))
            self._listed = key
        return self._total

    def iter_studies(self, match: dict | None = None) -> Iterator[StudyRecord | StudyFailure]:
        """Each listed study with its series and instances, or a StudyFailure.

        Raises SourceError if the listing fails, ValueError for a `match` it cannot send;
        each call lists afresh unless `total(match)` made a listing that was not iterated yet.
        """
        key = match_key(match)
        pending, self._pending = self._pending, None
        if pending is not None and pending[0] == key:
            listing = pending[1]
        else:
            listing = _packed(self._list_studies(match))
            self._listed = key
        for item in listing:
            yield self._fetch_study(orjson.loads(item) if isinstance(item, bytes) else item)

    def _list_studies(self, match: dict | None = None) -> list:
        raise NotImplementedError

    def _fetch_study(self, item) -> StudyRecord | StudyFailure:
        raise NotImplementedError


def _packed(listing: list) -> list:
    """The listing's answers as JSON bytes until each is fetched.

    A study answer parsed into Python objects takes ~8 kB; as bytes ~1.5 kB. A sync of
    40,000 studies holds the whole listing while it reads them one by one, and would need
    300 MB for the parsed answers alone. An answer that is not plain JSON stays as it is.
    """
    packed = []
    for item in listing:
        try:
            packed.append(exact_bytes(orjson.dumps(item)))
        except TypeError:
            packed.append(item)
    return packed


def exact_bytes(data: bytes) -> bytes:
    """A copy of `data` that occupies only its own length.

    orjson's result keeps the ~8 kB buffer it was written into (measured with orjson 3.13:
    12,000 answers of 0.9 kB held 94 MB); a copy holds 11 MB. Cheap (~1.5 us) next to a fetch.
    """
    return bytes(memoryview(data))
