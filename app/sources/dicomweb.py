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

Reading studies in parallel (`concurrency`): each reading thread has a requests.Session and a
DICOMwebClient of its own, made like the source's (credentials, headers, response hook), over
the source's connection pools and TLS keys (urllib3's pools are shared between threads safely,
app/sources/https.py); whether an answer was cut is noted per thread. A 429 or 503 with
Retry-After holds back every thread's next request, not only the one that got it: the archive
asked the client to wait.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import urlsplit

import requests
from dicomweb_client.api import DICOMwebClient
from requests.adapters import HTTPAdapter

from app.mapping import tags
from app.sources.base import SeriesRecord
from app.sources.counts import ShortAnswer
from app.sources.dicom_json import first_uid
from app.sources.http import RETRY_STATUSES, public_url
from app.sources.https import mount_tls
from app.sources.matching import qido_params
from app.sources.orthanc_changes import OrthancChanges
from app.sources.queried import BadAnswer, QueriedArchive
from app.sources.tls import TlsSettings, certificate_refused, tls_reason

log = logging.getLogger(__name__)

STUDY_FIELDS = sorted({**tags.PATIENT, **tags.STUDY})
SERIES_FIELDS = sorted(tags.SERIES)
INSTANCE_FIELDS = sorted(tags.INSTANCE)
_STUDY_LEVEL = set(STUDY_FIELDS)
#: the PS3.18 warning of a QIDO-RS answer cut at the server's maximum number of results
_CUT_WARNING = re.compile(r"exceed|additional results|remaining results", re.IGNORECASE)
# dicomweb-client's retry decorator logs each failed request with its URL, whose query
# string can carry a Patient ID; this module retries and logs without the data instead
logging.getLogger("retrying").setLevel(logging.ERROR)
# dicomweb-client logs every request at INFO; at a sync's pace that buries our own lines.
# Its warnings (a cut QIDO-RS answer) still show; a logging config that sets a level wins.
if logging.getLogger("dicomweb_client").level == logging.NOTSET:
    logging.getLogger("dicomweb_client").setLevel(logging.WARNING)


class DicomwebSource(QueriedArchive):
    """Every study of a DICOMweb (QIDO-RS) archive."""

    failures = (requests.RequestException, ValueError)

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
        private_tags: Iterable[int] = (),
        change_feed: OrthancChanges | None = None,
        concurrency: int = 1,
        tls: TlsSettings | None = None,
    ):
        super().__init__(concurrency)
        if page_size < 1:
            raise ValueError("page_size must be at least 1")
        if max_results is not None and max_results < 1:
            raise ValueError("max_results must be at least 1")
        self.name = name
        self.url = url.rstrip("/")
        self.public_url = self.location = public_url(self.url)
        self.page_size = page_size
        self.retries = retries
        self.backoff = backoff
        self.instance_metadata = instance_metadata
        #: DICOM JSON keys of the private attributes kept from instance metadata
        self._private_keys = frozenset(f"{tag:08X}" for tag in private_tags)
        #: the most studies the archive returns for one query (Orthanc: LimitFindResults)
        self.max_results = max_results
        self.timeout = timeout
        # per thread: its DICOMwebClient (`client`, for reading threads), and whether a response
        # of its current query carried the PS3.18 "cut" warning (`cut`)
        self._local = threading.local()
        # time.monotonic() before which no request is sent: the archive answered Retry-After
        self._resume_at = 0.0
        self._resume_lock = threading.Lock()
        self._secrets = [s for s in (password, token, urlsplit(url).password) if s]
        if session is None:
            session = requests.Session()
            if concurrency > 10:  # requests keeps 10 connections per host by default
                for prefix in ("http://", "https://"):
                    session.mount(prefix, HTTPAdapter(pool_maxsize=concurrency))
            mount_tls(session, tls, concurrency)
        #: whether a client certificate is shown (what a TLS refusal means)
        self._client_cert = tls is not None and tls.certfile is not None
        if username is not None:
            session.auth = (username, password or "")
        if token:
            session.headers["Authorization"] = f"Bearer {token}"
        session.hooks["response"].append(self._note_warning)
        self.session = session
        self.client = self._new_client(session)
        #: Orthanc's change feed at its REST API (`changes: orthanc`), or None
        self.change_feed = change_feed
        self.stats: dict = {}
        self.listing_gaps: list[str] = []
        self._reset_stats()

    # -- internals -------------------------------------------------------------------

    def _new_client(self, session: requests.Session) -> DICOMwebClient:
        client = DICOMwebClient(self.url, session=session, timeout=self.timeout, permissive_uid=True)
        client.set_http_retry_params(retry=False)  # retried here, with short backoff
        # dicomweb-client sends "Host: <host>" without the port; archives build their
        # RetrieveURL (0008,1190) from it (Orthanc answers http://127.0.0.1/... for a
        # server on :8042) and virtual hosts route on it: send host:port as RFC 9110 says
        netloc = urlsplit(self.url)
        if netloc.port is not None and netloc.hostname:
            host = f"[{netloc.hostname}]" if ":" in netloc.hostname else netloc.hostname
            client.host = f"{host}:{netloc.port}"
        return client

    def _start_worker(self) -> None:
        """A reading thread's own session, set up as the source's, over its connection pools:
        requests does not promise that a Session may be shared between threads."""
        base = self.session
        session = requests.Session()
        session.auth = base.auth
        session.headers.update(base.headers)
        session.hooks = {event: list(hooks) for event, hooks in base.hooks.items()}
        session.cookies.update(base.cookies)
        session.verify, session.cert, session.proxies = base.verify, base.cert, dict(base.proxies)
        session.trust_env, session.max_redirects = base.trust_env, base.max_redirects
        for prefix, adapter in base.adapters.items():
            session.mount(prefix, adapter)
        self._local.client = self._new_client(session)

    @property
    def _client(self) -> DICOMwebClient:
        """The DICOMwebClient of this thread: a reading thread's own, else the source's."""
        return getattr(self._local, "client", None) or self.client

    @property
    def _cut(self) -> bool:
        """Whether a response of this thread's current query carried the "cut" warning."""
        return bool(getattr(self._local, "cut", False))

    def _note_warning(self, response: requests.Response, *args: Any, **kwargs: Any) -> requests.Response:
        warning = response.headers.get("Warning")
        if warning and _CUT_WARNING.search(warning):
            self._local.cut = True  # a response hook runs in the thread that sent the request
        return response

    def _hold_requests(self, seconds: float) -> None:
        """Send no request for `seconds`, from any thread."""
        with self._resume_lock:
            self._resume_at = max(self._resume_at, time.monotonic() + seconds)

    def _await_turn(self) -> None:
        """Wait while the archive asked us to (Retry-After)."""
        delay = self._resume_at - time.monotonic()
        if delay > 0:
            self._pause(delay)

    def _clean(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    def _call(self, fn: Callable[..., object], **kwargs: Any) -> list[dict]:
        """One QIDO request, retried on connection errors and 429/502/503/504."""
        attempt = 0
        while True:
            self._await_turn()
            self._count("requests")
            error: requests.RequestException
            try:
                answer = fn(**kwargs)
                if not isinstance(answer, list) or not all(isinstance(a, dict) for a in answer):
                    raise BadAnswer("answer is not a JSON array of DICOM JSON objects")
                return answer
            except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError) as exc:
                if certificate_refused(exc):
                    raise  # a certificate is not fixed by asking again
                error, wait = exc, None
            except requests.HTTPError as exc:
                response = exc.response
                if response is None or response.status_code not in RETRY_STATUSES:
                    raise
                error, wait = exc, response.headers.get("Retry-After")
            if attempt >= self.retries or self._abandoned():
                raise error
            delay = self.backoff * (2**attempt)
            if wait and wait.isascii() and wait.isdigit():
                delay = max(delay, min(float(wait), 10.0))
                # Retry-After (RFC 9110 10.2.3) asks the client to wait, not only this request
                self._hold_requests(delay)
            attempt += 1
            self._count("retries")
            log.info("source %s: retry %d after %s", self.name, attempt, type(error).__name__)
            self._pause(delay)

    def _paged(self, fn: Callable[..., object], **kwargs: Any) -> list[dict]:
        """All answers of a query, page by page, until a page comes back short.

        `self._cut` tells afterwards whether a page carried the server's "cut" warning.
        """
        answers: list[dict] = []
        offset = 0
        self._local.cut = False
        while True:
            page = self._call(fn, limit=self.page_size, offset=offset, **kwargs)
            answers.extend(page)
            if len(page) < self.page_size:
                return answers
            offset += len(page)

    def _at_limit(self, answers: list) -> bool:
        return self._cut or (self.max_results is not None and len(answers) >= self.max_results)

    # -- the protocol's hooks (app/sources/queried.py) -----------------------------------
    def _check_match(self, match: dict) -> None:
        qido_params(match)  # a value QIDO cannot carry is refused before the archive is asked

    def _query_studies(self, session: None, keys: dict) -> tuple[list[dict], bool]:
        answers = self._paged(
            self._client.search_for_studies, fields=STUDY_FIELDS, search_filters=qido_params(keys) or None
        )
        return answers, self._at_limit(answers)

    def _query_series(self, session: None, study_uid: str) -> tuple[list[dict], bool]:
        answers = self._paged(self._client.search_for_series, study_instance_uid=study_uid, fields=SERIES_FIELDS)
        return answers, self._cut

    def _query_instances(self, session: None, study_uid: str, series_uid: str) -> tuple[list[dict], bool]:
        answers = self._paged(
            self._client.search_for_instances,
            study_instance_uid=study_uid,
            series_instance_uid=series_uid,
            fields=INSTANCE_FIELDS,
        )
        return answers, self._cut

    def _study_uid(self, answer: dict) -> str | None:
        return first_uid(answer, tags.STUDY_UID)

    def _study_date(self, answer: dict) -> str | None:
        element = answer.get(tags.STUDY_DATE)
        values = element.get("Value") if isinstance(element, dict) else None
        return values[0] if isinstance(values, list) and values and isinstance(values[0], str) else None

    def _cut_reason(self, level: str, series_uid: str | None = None) -> str:
        if level == "series":
            return "the archive cut its series answer short (Warning header)"
        return f"the archive cut its instance answer for series {series_uid} short (Warning header)"

    def _study_location(self, uid: str) -> str:
        return f"{self.public_url}/studies/{uid}"

    def _unreachable(self, exc: Exception) -> bool:
        return isinstance(exc, (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError))

    def _archive_fault(self, exc: Exception) -> bool:
        """5xx, refusing our credentials, or unreachable: one such study fails alone; several in a
        row end the run."""
        if self._unreachable(exc):
            return True
        response = getattr(exc, "response", None) if isinstance(exc, requests.HTTPError) else None
        return response is not None and (response.status_code >= 500 or response.status_code in (401, 403, 429))

    def _describe(self, exc: Exception) -> str:
        if isinstance(exc, (ShortAnswer, BadAnswer)):
            return str(exc)
        if isinstance(exc, requests.HTTPError) and exc.response is not None:
            status = exc.response.status_code
            if status in (401, 403):
                return self._clean(f"authentication refused (HTTP {status})")
            return self._clean(f"HTTP {status} {exc.response.reason or ''}".strip())
        if isinstance(exc, requests.ConnectionError):
            reason = tls_reason(exc, client_cert=self._client_cert)
            return self._clean(reason or f"cannot connect ({type(exc).__name__})")
        if isinstance(exc, requests.Timeout):
            return "timed out"
        if isinstance(exc, ValueError):
            return self._clean(f"invalid JSON answer: {exc}"[:300])
        return self._clean(f"{type(exc).__name__}: {exc}"[:300])

    def _complete(self, uid: str, attrs: dict, series_list: list[SeriesRecord]) -> tuple[dict, list[str]]:
        """Fill study/patient attributes QIDO left out from one instance's metadata
        (`instance_metadata`), and the private attributes the mapping profile maps."""
        if not self.instance_metadata:
            return attrs, []
        series = series_list[0]
        sop = first_uid(series.instances[0], tags.SOP_INSTANCE_UID)
        series_uid = first_uid(series.attrs, tags.SERIES_UID)
        # the listing refused series and instances without their UIDs (app/sources/queried.py)
        assert series_uid is not None and sop is not None
        try:
            metadata = self._call(lambda: [self._client.retrieve_instance_metadata(uid, series_uid, sop)])[0]
        except (requests.RequestException, ValueError, IndexError, BadAnswer) as exc:
            return attrs, [f"instance metadata not read: {self._describe(exc)}"]
        merged = dict(attrs)
        for key, element in metadata.items():
            if (key in _STUDY_LEVEL or key in self._private_keys) and key not in merged:
                merged[key] = element
        return merged, []
