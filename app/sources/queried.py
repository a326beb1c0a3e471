"""An archive that answers queries (QIDO-RS, C-FIND): the one algorithm DICOMweb and DIMSE share.

Both list the studies first (study level, sliced by StudyDate when the archive caps its
answer, app.sources.matching), so `total()` is known before the first study is read; then,
study by study, ask for its series and for each series' instances (PS3.4 C.6.2 Study Root:
STUDY, SERIES, IMAGE levels; PS3.18 10.6 QIDO-RS). What differs is only how a query is sent,
how an answer becomes DICOM JSON and how a failure is named: the protocol hooks of
`QueriedArchive`.

The rules they share:
- an answer repeated in a listing, a study or a series is dropped and counted (Orthanc keys
  a study by PatientID + StudyInstanceUID, and answers a study UID held under two Patient IDs
  once per Patient ID);
- a study whose series or instances are fewer than its own counts say, or whose answer the
  archive cut, is a StudyFailure (app.sources.counts), never a record with parts missing;
- a study that fails on the archive's side fails alone, but `ARCHIVE_DOWN_AFTER` such
  studies in a row (or an archive that cannot be reached at all) end the run: the archive,
  not the studies, is failing.

With `concurrency` N above 1, N studies are read at once, each in a thread of its own, and
given back in listing order: a thread only reads (`_read_study`); what is counted, and whether
the run ends, is decided as each study is given back (`_settle`), so the caller gets the same
studies, failures and counters as from a sequential run.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import threading
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

import orjson

from app.mapping import tags
from app.sources.base import ChangeFeed, SeriesRecord, StudyFailure, StudyRecord
from app.sources.counts import ShortAnswer, check_count
from app.sources.dicom_json import first_uid
from app.sources.errors import ARCHIVE_DOWN_AFTER, SourceError
from app.sources.matching import match_key, normalize_match, sliced_listing

log = logging.getLogger(__name__)


class BadAnswer(Exception):
    """An answer that is not DICOM JSON (or not decodable), or misses its key attribute."""


def exact_bytes(data: bytes) -> bytes:
    """A copy of `data` that occupies only its own length.

    orjson's result keeps the ~8 kB buffer it was written into (measured with orjson 3.13:
    12,000 answers of 0.9 kB held 94 MB); a copy holds 11 MB. Cheap (~1.5 us) next to a fetch.
    """
    return bytes(memoryview(data))


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


def listed_uid(text: bytes) -> str | None:
    """The StudyInstanceUID of a study of `QueriedArchive.listing`, if its answer names one."""
    attrs = orjson.loads(text)[0]
    return first_uid(attrs, tags.STUDY_UID) if attrs is not None else None


@dataclass
class _Reading:
    """What reading one listed study gave, before it is counted: its series, or the failure."""

    uid: str | None
    attrs: dict | None
    repairs: list[str]
    series: list[SeriesRecord] = field(default_factory=list)
    duplicates: int = 0
    error: Exception | None = None


class QueriedArchive:
    """Every study of an archive that answers queries, listed first, then read `concurrency`
    at a time.

    A listing made by `total(match)` is used by the next `iter_studies(match)` with the same
    match. `match` narrows the listing to study-level matching keys (app.sources.matching);
    the archive does the matching. A protocol gives the hooks marked below; they may run in
    several threads at once, and count with `_count`.
    """

    answers_queries = True
    change_feed: ChangeFeed | None = None
    name: str
    stats: dict
    #: where the archive is, for messages (never with credentials)
    location: str
    #: how many study UIDs one listing query may name
    uids_per_query = 40
    #: what a protocol's queries raise for one study or listing that failed
    failures: tuple[type[Exception], ...] = ()
    #: the reason given for a study answer the protocol could not decode
    undecodable = "study answer that could not be decoded"

    _pending: tuple | None = None  # (match key, listing) listed by total(), not iterated yet
    _listed: tuple | None = None  # match key of the listing `_total` counts
    _total: int | None = None
    _failing = 0  # studies in a row that failed on the archive's side
    #: where the last listing may have missed studies (a capped answer it could not cut)
    listing_gaps: list[str] = []

    def __init__(self, concurrency: int = 1):
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        #: studies read at once; 1 reads them one after the other, in the caller's thread
        self.concurrency = concurrency
        self._stats_lock = threading.Lock()
        # set while the threads of a run that ended finish: a retry they would make is not waited for
        self._ending = threading.Event()

    # -- the protocol's hooks ---------------------------------------------------------------
    def _session(self) -> AbstractContextManager[Any]:
        """What the queries of one listing or study share (DIMSE: an association); the hooks
        get it as `session`."""
        return contextlib.nullcontext()

    def _query_studies(self, session: Any, keys: dict) -> tuple[list, bool]:
        """One study-level query: its answers, and whether the archive cut them."""
        raise NotImplementedError

    def _query_series(self, session: Any, study_uid: str) -> tuple[list, bool]:
        raise NotImplementedError

    def _query_instances(self, session: Any, study_uid: str, series_uid: str) -> tuple[list, bool]:
        raise NotImplementedError

    def _decode(self, answer: Any, level: str) -> tuple[dict | None, list[str]]:
        """An answer (as the protocol's queries give it) as DICOM JSON (None: undecodable) and
        the repairs that took."""
        return answer, []

    def _study_date(self, answer: Any) -> str | None:
        """The StudyDate of a raw study answer (the listing slices by it)."""
        raise NotImplementedError

    def _study_uid(self, answer: Any) -> str | None:
        raise NotImplementedError

    def _cut_reason(self, level: str, series_uid: str | None = None) -> str:
        """Why a series (or instance) answer is taken for cut short."""
        raise NotImplementedError

    def _complete(self, uid: str, attrs: dict, series: list[SeriesRecord]) -> tuple[dict, list[str]]:
        """The study's attributes with what the queries left out, and notes; as they are by default."""
        return attrs, []

    def _check_match(self, match: dict) -> None:
        """Refuse (ValueError) a match the protocol cannot send, before the archive is asked."""

    def _describe(self, exc: Exception) -> str:
        return str(exc)

    def _archive_fault(self, exc: Exception) -> bool:
        """A failure on the archive's side: several in a row end the run."""
        return False

    def _unreachable(self, exc: Exception) -> bool:
        """The archive cannot be reached at all: no other study would read now."""
        return False

    def _study_location(self, uid: str) -> str:
        raise NotImplementedError

    def _start_worker(self) -> None:
        """Prepare a thread that will read studies (DICOMweb: its own HTTP session)."""

    # -- for the hooks ----------------------------------------------------------------------
    def _count(self, name: str, n: int = 1) -> None:
        """Add to a counter of `stats`: the hooks count from several threads at once."""
        with self._stats_lock:
            self.stats[name] += n

    def _pause(self, seconds: float) -> None:
        """Wait before a retry; a run that ended does not wait."""
        self._ending.wait(seconds)

    def _abandoned(self) -> bool:
        """Whether the run this study was read for has ended: its reading may stop retrying."""
        return self._ending.is_set()

    #: the counters a listing starts from (`stats`, shown in a sync's summary in this order)
    stat_names: tuple[str, ...] = (
        "studies_listed",
        "requests",
        "retries",
        "studies",
        "series",
        "instances",
        "failed",
        "duplicates",
        "listing_queries",
        "listing_gaps",
    )

    def _reset_stats(self) -> None:
        self.stats = dict.fromkeys(self.stat_names, 0)

    # -- the Source protocol ----------------------------------------------------------------
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
        yield from self._read_listing(listing)

    def listing(self, match: dict | None = None) -> list[bytes]:
        """The listed studies as JSON texts, to be read elsewhere with `read_listed` (a
        distributed sync hands them to its workers): the listing's counters are in `stats`.

        Raises SourceError if the listing fails, ValueError for a `match` it cannot send.
        """
        texts = []
        for item in _packed(self._list_studies(match)):
            if not isinstance(item, bytes):
                raise SourceError(self.name, self.location, "a listed study cannot be sent to a worker as JSON")
            texts.append(item)
        return texts

    def read_listed(self, listing: list[bytes]) -> Iterator[StudyRecord | StudyFailure]:
        """Read studies another process listed (`listing`), as `iter_studies` reads its own:
        `stats` counts only this reading."""
        self._reset_stats()
        self._failing = 0
        yield from self._read_listing(list(listing))

    def _read_listing(self, listing: list) -> Iterator[StudyRecord | StudyFailure]:
        studies = (orjson.loads(item) if isinstance(item, bytes) else item for item in listing)
        if self.concurrency == 1 or len(listing) < 2:
            for item in studies:
                yield self._settle(self._read_study(item))
        else:
            yield from self._read_ahead(studies)

    def _read_ahead(self, studies: Iterator[Any]) -> Iterator[StudyRecord | StudyFailure]:
        """The studies read `concurrency` at a time, given back in listing order.

        Each thread reads one study at a time, so at most `concurrency` requests (or DIMSE
        associations) are open at once. At most twice that many studies are read ahead of the
        one given back, so memory stays bounded while the caller stores. When the caller stops
        (closes the iterator, or the archive is found failing), studies not started are
        dropped and those being read end after their current request; no thread outlives it.
        """
        pool = ThreadPoolExecutor(
            max_workers=self.concurrency, thread_name_prefix=f"source-{self.name}", initializer=self._start_worker
        )
        pending: deque[Future[_Reading]] = deque()
        try:
            for item in itertools.islice(studies, 2 * self.concurrency):
                pending.append(pool.submit(self._read_study, item))
            while pending:
                reading = pending.popleft().result()
                for item in itertools.islice(studies, 1):
                    pending.append(pool.submit(self._read_study, item))
                yield self._settle(reading)
        finally:
            self._ending.set()
            pool.shutdown(wait=True, cancel_futures=True)
            self._ending.clear()

    # -- listing ----------------------------------------------------------------------------
    def _list_studies(self, match: dict | None = None) -> list[tuple[dict | None, list[str]]]:
        """(study attributes, repairs) of each study the archive lists, each study once."""
        match = normalize_match(match)
        self._check_match(match)
        self._reset_stats()
        self.listing_gaps = []
        try:
            with self._session() as session:
                found = sliced_listing(
                    lambda keys: self._query_studies(session, keys),
                    match,
                    self._study_uid,
                    self._study_date,
                    uids_per_query=self.uids_per_query,
                )
        except self.failures + (BadAnswer,) as exc:
            raise SourceError(self.name, self.location, f"cannot list studies: {self._describe(exc)}") from None
        self.stats["listing_queries"] = found.queries
        self.stats["listing_gaps"] = len(found.gaps)
        self.listing_gaps = found.gaps
        for gap in found.gaps:
            log.warning("source %s: listing incomplete: %s", self.name, gap)
        listing: list[tuple[dict | None, list[str]]] = []
        seen: set[str | None] = set()
        for answer in found.answers:
            attrs, repairs = self._decode(answer, "STUDY")
            uid = first_uid(attrs, tags.STUDY_UID) if attrs is not None else None
            if uid is not None and uid in seen:  # the archive changed while paging, or one UID, two Patient IDs
                self.stats["duplicates"] += 1
                continue
            seen.add(uid)
            listing.append((attrs, repairs))
        self.stats["studies_listed"] = len(listing)
        self._total = len(listing)
        return listing

    # -- one study --------------------------------------------------------------------------
    def _read_study(self, item: tuple[dict | None, list[str]]) -> _Reading:
        """Read a listed study's series and instances. Only reads: it runs in the reading
        threads, and what it found is counted by `_settle`."""
        attrs, study_repairs = item
        uid = first_uid(attrs, tags.STUDY_UID) if attrs is not None else None
        reading = _Reading(uid=uid, attrs=attrs, repairs=list(study_repairs))
        if attrs is None or uid is None:
            return reading
        try:
            with self._session() as session:
                series_list, duplicates = self._read_series(session, uid, reading.repairs)
            check_count("the study", "series", len(series_list), attrs, tags.STUDY_SERIES_COUNT)
            reading.duplicates = duplicates
            if duplicates:
                reading.repairs.append(f"ignored {duplicates} repeated series/instance answer(s)")
            if series_list and series_list[0].instances:
                reading.attrs, more = self._complete(uid, attrs, series_list)
                reading.repairs += more
            reading.series = series_list
        except self.failures + (BadAnswer, ShortAnswer) as exc:
            reading.error = exc
        return reading

    def _settle(self, reading: _Reading) -> StudyRecord | StudyFailure:
        """Count a study read and give it back as a record or a failure, or end the run with
        SourceError when the archive, not the study, is failing. Called in listing order, so
        failures in a row are counted as a sequential run counts them."""
        uid, attrs = reading.uid, reading.attrs
        if attrs is None or uid is None:
            self._count("failed")
            reason = self.undecodable if attrs is None else "study answer without StudyInstanceUID"
            return StudyFailure(uid=None, reason=reason, location=self.location)
        if reading.duplicates:
            self._count("duplicates", reading.duplicates)
        exc = reading.error
        if exc is not None:
            self._failing = self._failing + 1 if self._archive_fault(exc) else 0
            if self._unreachable(exc) or self._failing >= ARCHIVE_DOWN_AFTER:
                # not this study's fault: end the run, the next one resumes
                raise SourceError(self.name, self.location, f"cannot read studies: {self._describe(exc)}") from None
            self._count("failed")
            return StudyFailure(
                uid=uid,
                reason=f"cannot read series/instances: {self._describe(exc)}",
                location=self._study_location(uid),
            )
        self._failing = 0
        self._count("studies")
        self._count("series", len(reading.series))
        self._count("instances", sum(len(s.instances) for s in reading.series))
        return StudyRecord(uid=uid, attrs=attrs, series=reading.series, repairs=list(dict.fromkeys(reading.repairs)))

    def _read_series(self, session: Any, uid: str, repairs: list[str]) -> tuple[list[SeriesRecord], int]:
        """The study's series with their instances, and how many repeated answers were dropped."""
        answers, cut = self._query_series(session, uid)
        if cut:
            raise ShortAnswer(self._cut_reason("series"))
        series_list: list[SeriesRecord] = []
        seen: set[str] = set()
        duplicates = 0
        for answer in answers:
            attrs, more = self._decode(answer, "SERIES")
            if attrs is None:
                raise BadAnswer("a series answer could not be decoded")
            series_uid = first_uid(attrs, tags.SERIES_UID)
            if series_uid is None:
                raise BadAnswer("series answer without SeriesInstanceUID")
            if series_uid in seen:  # the same study UID under two Patient IDs
                duplicates += 1
                continue
            seen.add(series_uid)
            repairs += more
            instances, repeated = self._read_instances(session, uid, series_uid, repairs)
            duplicates += repeated
            check_count(f"series {series_uid}", "instance", len(instances), attrs, tags.SERIES_INSTANCE_COUNT)
            series_list.append(SeriesRecord(attrs=attrs, instances=instances))
        return series_list, duplicates

    def _read_instances(self, session: Any, uid: str, series_uid: str, repairs: list[str]) -> tuple[list[dict], int]:
        answers, cut = self._query_instances(session, uid, series_uid)
        if cut:
            raise ShortAnswer(self._cut_reason("instance", series_uid))
        instances: list[dict] = []
        seen: set[str] = set()
        duplicates = 0
        for answer in answers:
            instance, more = self._decode(answer, "IMAGE")
            if instance is None:
                raise BadAnswer(f"an instance answer in series {series_uid} could not be decoded")
            sop = first_uid(instance, tags.SOP_INSTANCE_UID)
            if sop is None:
                raise BadAnswer(f"instance answer without SOPInstanceUID in series {series_uid}")
            if sop in seen:
                duplicates += 1
                continue
            seen.add(sop)
            repairs += more
            instances.append(instance)
        return instances, duplicates
