"""A DICOMweb archive (QIDO-RS) as a source.

Study listing first (paged with limit/offset), so `total()` is known before the first
study is fetched; then, study by study, its series and each series' instances. Answers
are yielded as the archive returned them (DICOM JSON, PS3.18 F.2).

Attributes are asked for by tag (`includefield=00100010`), not by keyword: PS3.18 allows
both, and tags do not depend on a server's keyword dictionary (Orthanc 1.10 rejects the
whole list's unknown keywords one by one, e.g. a misspelt "ReasonForRequestedProcedure").

Orthanc (1.10, DICOMweb plugin) answers study-level queries with ModalitiesInStudy and
NumberOfStudyRelatedSeries/Instances, series with NumberOfSeriesRelatedInstances, but
never returns sequence attributes in QIDO (OtherPatientIDsSequence,
IssuerOfPatientIDQualifiersSequence, ProcedureCodeSequence...). With
`instance_metadata=True` the source fills the study's missing PATIENT/STUDY attributes
from the WADO-RS metadata of its first instance (one extra request per study), and
takes from it the private attributes a mapping profile maps (`private_tags`, given as
`private_tags` tag numbers): QIDO-RS answers never carry those.

Capped answers. An archive may return fewer studies than match a query. PS3.18 says it
then sends `Warning: 299 ...: The number of results exceeded the maximum supported by the
server...`; Orthanc (1.10, DICOMweb plugin 1.7) sends no Warning: with `LimitFindResults`
= N it silently answers N+1 studies, and `offset` never reaches further. So a listing
answer is taken as cut when a page carries such a Warning, or when it holds `max_results`
(the archive's limit, from the config) studies or more; the listing then asks again by
StudyDate slices (`app.sources.matching`). Series and instance answers are cut the same
way (Orthanc: LimitFindResults, LimitFindInstances); a study whose series or instances
are fewer than its own NumberOfStudyRelatedSeries / NumberOfSeriesRelatedInstances says
is reported as a StudyFailure, rather than indexed with series or instances missing.
"""
from __future__ import annotations

import logging
import re
import time
from typing import Callable
from urllib.parse import urlsplit, urlunsplit

import requests
from dicomweb_client.api import DICOMwebClient

from app.mapping import tags
from app.sources.base import ListedSource, SeriesRecord, StudyFailure, StudyRecord
from app.sources.counts import ShortAnswer, check_count
from app.sources.dicom_json import first_uid
from app.sources.errors import ARCHIVE_DOWN_AFTER, SourceError
from app.sources.matching import normalize_match, qido_params, sliced_listing

log = logging.getLogger(__name__)

STUDY_FIELDS = sorted({**tags.PATIENT, **tags.STUDY})
SERIES_FIELDS = sorted(tags.SERIES)
INSTANCE_FIELDS = sorted(tags.INSTANCE)
_STUDY_LEVEL = set(STUDY_FIELDS)
#: HTTP statuses worth another try: the archive or a proxy in front of it is busy
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
#: the PS3.18 warning of a QIDO-RS answer cut at the server's maximum number of results
_CUT_WARNING = re.compile(r"exceed|additional results|remaining results", re.IGNORECASE)
# dicomweb-client's retry decorator logs each failed request with its URL, whose query
# string can carry a Patient ID; this module retries and logs without the data instead
logging.getLogger("retrying").setLevel(logging.ERROR)
# dicomweb-client logs every request at INFO; at a sync's pace that buries our own lines.
# Its warnings (a cut QIDO-RS answer) still show; a logging config that sets a level wins.
if logging.getLogger("dicomweb_client").level == logging.NOTSET:
    logging.getLogger("dicomweb_client").setLevel(logging.WARNING)


def _unreachable(exc: Exception) -> bool:
    """The archive cannot be reached at all (after retries): no other study would read now."""
    return isinstance(exc, (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError))


def _archive_fault(exc: Exception) -> bool:
    """A failure on the archive's side (5xx, refusing our credentials, unreachable): one such
    study fails alone; several in a row end the run."""
    if _unreachable(exc):
        return True
    response = getattr(exc, "response", None) if isinstance(exc, requests.HTTPError) else None
    return response is not None and (response.status_code >= 500 or response.status_code in (401, 403, 429))


class _BadAnswer(Exception):
    """An answer that is not a list of DICOM JSON objects, or misses a key attribute."""


def _public_url(url: str) -> str:
    """The URL without user:password@ (for messages)."""
    parts = urlsplit(url)
    if parts.username or parts.password:
        host = parts.hostname or ""
        if parts.port:
            host = f"{host}:{parts.port}"
        parts = parts._replace(netloc=host)
    return urlunsplit(parts)


def _study_date(answer: dict) -> str | None:
    element = answer.get("00080020")
    values = element.get("Value") if isinstance(element, dict) else None
    return values[0] if isinstance(values, list) and values and isinstance(values[0], str) else None


class DicomwebSource(ListedSource):
    """Every study of a DICOMweb (QIDO-RS) archive."""

    def __init__(
        self,
        name: str,
        url: str,
        *,
        username: str | None = None,
        password: str | None = None,
        token: str | None = None,
        timeout: float = 30.0,
        page_size: int = 100,
        session: requests.Session | None = None,
        retries: int = 3,
        backoff: float = 0.25,
        instance_metadata: bool = False,
        max_results: int | None = None,
        private_tags=(),
    ):
        if page_size < 1:
            raise ValueError("page_size must be at least 1")
        if max_results is not None and max_results < 1:
            raise ValueError("max_results must be at least 1")
        self.name = name
        self.url = url.rstrip("/")
        self.public_url = _public_url(self.url)
        self.page_size = page_size
        self.retries = retries
        self.backoff = backoff
        self.instance_metadata = instance_metadata
        #: DICOM JSON keys of the private attributes kept from instance metadata
        self._private_keys = frozenset(f"{tag:08X}" for tag in private_tags)
        #: the most studies the archive returns for one query (Orthanc: LimitFindResults)
        self.max_results = max_results
        self._cut = False  # a response of the current query carried the PS3.18 "cut" warning
        self._secrets = [s for s in (password, token, urlsplit(url).password) if s]
        session = session if session is not None else requests.Session()
        if username is not None:
            session.auth = (username, password or "")
        if token:
            session.headers["Authorization"] = f"Bearer {token}"
        session.hooks["response"].append(self._note_warning)
        self.session = session
        self.client = DICOMwebClient(self.url, session=session, timeout=timeout,
                                     permissive_uid=True)
        self.client.set_http_retry_params(retry=False)  # retried here, with short backoff
        # dicomweb-client sends "Host: <host>" without the port; archives build their
        # RetrieveURL (0008,1190) from it (Orthanc answers http://127.0.0.1/... for a
        # server on :8042) and virtual hosts route on it: send host:port as RFC 9110 says
        netloc = urlsplit(self.url)
        if netloc.port is not None and netloc.hostname:
            host = f"[{netloc.hostname}]" if ":" in netloc.hostname else netloc.hostname
            self.client.host = f"{host}:{netloc.port}"
        self.stats: dict = {}
        self.listing_gaps: list[str] = []
        self._failing = 0  # studies in a row that failed on the archive's side
        self._reset_stats()

    # -- internals -------------------------------------------------------------------
    def _reset_stats(self) -> None:
        self.stats = {
            "studies_listed": 0, "requests": 0, "retries": 0, "studies": 0,
            "series": 0, "instances": 0, "failed": 0, "duplicates": 0,
            "listing_queries": 0, "listing_gaps": 0,
        }

    def _note_warning(self, response, *args, **kwargs):
        warning = response.headers.get("Warning")
        if warning and _CUT_WARNING.search(warning):
            self._cut = True
        return response

    def _clean(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    def _call(self, fn: Callable, **kwargs) -> list[dict]:
        """One QIDO request, retried on connection errors and 429/502/503/504."""
        attempt = 0
        while True:
            self.stats["requests"] += 1
            try:
                answer = fn(**kwargs)
                if not isinstance(answer, list) or not all(isinstance(a, dict) for a in answer):
                    raise _BadAnswer("answer is not a JSON array of DICOM JSON objects")
                return answer
            except (requests.ConnectionError, requests.Timeout,
                    requests.exceptions.ChunkedEncodingError) as exc:
                error, wait = exc, None
            except requests.HTTPError as exc:
                response = exc.response
                if response is None or response.status_code not in RETRY_STATUSES:
                    raise
                error, wait = exc, response.headers.get("Retry-After")
            if attempt >= self.retries:
                raise error
            delay = self.backoff * (2 ** attempt)
            if wait and wait.isdigit():
                delay = max(delay, min(float(wait), 10.0))
            attempt += 1
            self.stats["retries"] += 1
            log.info("source %s: retry %d after %s", self.name, attempt, type(error).__name__)
            time.sleep(delay)

    def _paged(self, fn: Callable, **kwargs) -> list[dict]:
        """All answers of a query, page by page, until a page comes back short.

        `self._cut` tells afterwards whether a page carried the server's "cut" warning.
        """
        answers: list[dict] = []
        offset = 0
        self._cut = False
        while True:
            page = self._call(fn, limit=self.page_size, offset=offset, **kwargs)
            answers.extend(page)
            if len(page) < self.page_size:
                return answers
            offset += len(page)

    def _at_limit(self, answers: list) -> bool:
        return self._cut or (self.max_results is not None and len(answers) >= self.max_results)

    def _query_studies(self, match: dict) -> tuple[list[dict], bool]:
        answers = self._paged(self.client.search_for_studies, fields=STUDY_FIELDS,
                              search_filters=qido_params(match) or None)
        return answers, self._at_limit(answers)

    def _describe(self, exc: Exception) -> str:
        if isinstance(exc, ShortAnswer):
            return str(exc)
        if isinstance(exc, requests.HTTPError) and exc.response is not None:
            status = exc.response.status_code
            if status in (401, 403):
                return self._clean(f"authentication refused (HTTP {status})")
            return self._clean(f"HTTP {status} {exc.response.reason or ''}".strip())
        if isinstance(exc, requests.ConnectionError):
            return self._clean(f"cannot connect ({type(exc).__name__})")
        if isinstance(exc, requests.Timeout):
            return "timed out"
        if isinstance(exc, ValueError):
            return self._clean(f"invalid JSON answer: {exc}"[:300])
        return self._clean(f"{type(exc).__name__}: {exc}"[:300])

    def _list_studies(self, match: dict | None = None) -> list[dict]:
        match = normalize_match(match)
        qido_params(match)  # a value QIDO cannot carry is refused before the archive is asked
        self._reset_stats()
        self.listing_gaps = []
        try:
            found = sliced_listing(self._query_studies, match, lambda a: first_uid(a, "0020000D"),
                                   _study_date, uids_per_query=40)
        except (requests.RequestException, ValueError, _BadAnswer) as exc:
            raise SourceError(self.name, self.public_url,
                              f"cannot list studies: {self._describe(exc)}") from None
        self.stats["listing_queries"] = found.queries
        self.stats["listing_gaps"] = len(found.gaps)
        self.listing_gaps = found.gaps
        for gap in found.gaps:
            log.warning("source %s: listing incomplete: %s", self.name, gap)
        listing, seen = [], set()
        for answer in found.answers:
            uid = first_uid(answer, "0020000D")
            if uid is not None and uid in seen:
                # the archive changed while paging: the same study came on two pages
                self.stats["duplicates"] += 1
                continue
            seen.add(uid)
            listing.append(answer)
        self.stats["studies_listed"] = len(listing)
        self._total = len(listing)
        return listing

    def _fetch_study(self, attrs: dict) -> StudyRecord | StudyFailure:
        uid = first_uid(attrs, "0020000D")
        if uid is None:
            self.stats["failed"] += 1
            return StudyFailure(uid=None, reason="study answer without StudyInstanceUID",
                                location=self.public_url)
        location = f"{self.public_url}/studies/{uid}"
        try:
            series_list: list[SeriesRecord] = []
            seen_series: set[str] = set()
            duplicates = 0
            series_answers = self._paged(self.client.search_for_series,
                                         study_instance_uid=uid, fields=SERIES_FIELDS)
            if self._cut:
                raise ShortAnswer("the archive cut its series answer short (Warning header)")
            for series_attrs in series_answers:
                series_uid = first_uid(series_attrs, "0020000E")
                if series_uid is None:
                    raise _BadAnswer("series answer without SeriesInstanceUID")
                if series_uid in seen_series:
                    # Orthanc keys a study by PatientID + StudyInstanceUID: the same UID
                    # under two Patient IDs is two Orthanc studies, and QIDO answers both
                    duplicates += 1
                    continue
                seen_series.add(series_uid)
                instances, seen_sops = [], set()
                instance_answers = self._paged(self.client.search_for_instances,
                                               study_instance_uid=uid,
                                               series_instance_uid=series_uid,
                                               fields=INSTANCE_FIELDS)
                if self._cut:
                    raise ShortAnswer(f"the archive cut its instance answer for series {series_uid} "
                                     "short (Warning header)")
                for instance in instance_answers:
                    sop = first_uid(instance, "00080018")
                    if sop is None:
                        raise _BadAnswer(f"instance answer without SOPInstanceUID in series {series_uid}")
                    if sop in seen_sops:
                        duplicates += 1
                        continue
                    seen_sops.add(sop)
                    instances.append(instance)
                check_count(f"series {series_uid}", "instance", len(instances), series_attrs, "00201209")
                series_list.append(SeriesRecord(attrs=series_attrs, instances=instances))
            check_count("the study", "series", len(series_list), attrs, "00201206")
            repairs = []
            if duplicates:
                self.stats["duplicates"] += duplicates
                repairs.append(f"ignored {duplicates} repeated series/instance answer(s)")
            if self.instance_metadata and series_list and series_list[0].instances:
                attrs, more = self._complete(uid, attrs, series_list[0])
                repairs += more
        except (requests.RequestException, ValueError, _BadAnswer, ShortAnswer) as exc:
            self._failing = self._failing + 1 if _archive_fault(exc) else 0
            if _unreachable(exc) or self._failing >= ARCHIVE_DOWN_AFTER:
                # not this study's fault: end the run, the next one resumes
                raise SourceError(self.name, self.public_url,
                                  f"cannot read studies: {self._describe(exc)}") from None
            self.stats["failed"] += 1
            return StudyFailure(uid=uid, reason=f"cannot read series/instances: {self._describe(exc)}",
                                location=location)
        self._failing = 0
        self.stats["studies"] += 1
        self.stats["series"] += len(series_list)
        self.stats["instances"] += sum(len(s.instances) for s in series_list)
        return StudyRecord(uid=uid, attrs=attrs, series=series_list, repairs=repairs)

    def _complete(self, uid: str, attrs: dict, series: SeriesRecord) -> tuple[dict, list[str]]:
        """Fill study/patient attributes QIDO left out from one instance's metadata."""
        sop = first_uid(series.instances[0], "00080018")
        series_uid = first_uid(series.attrs, "0020000E")
        try:
            metadata = self._call(
                lambda: [self.client.retrieve_instance_metadata(uid, series_uid, sop)])[0]
        except (requests.RequestException, ValueError, IndexError, _BadAnswer) as exc:
            return attrs, [f"instance metadata not read: {self._describe(exc)}"]
        merged = dict(attrs)
        for key, element in metadata.items():
            if (key in _STUDY_LEVEL or key in self._private_keys) and key not in merged:
                merged[key] = element
        return merged, []
