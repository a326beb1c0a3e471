"""Orthanc's change feed (REST `GET /changes?since=N&limit=M`) as events a sync can act on.

Orthanc numbers every change of its database (`Seq`) and answers a page of them with
`Changes[]` (`ChangeType`, `ResourceType`, `ID`, `Seq`...), `Last` (the Seq to ask after
next time) and `Done` (nothing more for now). `/changes?last` gives the end of the feed, so
a first run can list everything and then follow from there.

What Orthanc 1.10 logs, as the tests see it:

- a new study: NewInstance, NewSeries, NewStudy, NewPatient; once no instance arrived for
  `StableAge` seconds: StableSeries, StableStudy, StablePatient;
- a series or instance added to a study (stable or not): NewInstance (NewSeries), then
  StableSeries and StableStudy again. So StableStudy reports every study that is new or
  grew, once it is complete. NewStudy is reported too, so a new study is found within
  seconds instead of after StableAge (60 s by default); what it read then may lack
  instances still arriving, and the StableStudy that follows reads it whole;
- a deletion (DELETE /studies/{id}, /series/{id}, /instances/{id}, /patients/{id}): nothing.
  Orthanc logs no `Deleted` change in /changes (its Lua and plugin callbacks get one), and
  it drops the logged changes of the deleted resources from the feed. A `Deleted` change of
  a study, if a version or plugin logs one, becomes a "deleted" event; otherwise deletions
  are found by `deleted_studies(known)`, which compares Orthanc's list of study IDs
  (`GET /studies`, never capped by LimitFindResults) with the IDs the sync recorded.

Orthanc names a study by the SHA-1 of "PatientID|StudyInstanceUID" (`orthanc_study_id`),
with the PatientID exactly as it stored it. QIDO-RS and C-FIND answers strip trailing
spaces, and Orthanc keeps some (pydicom's test files hold a study under "id11111 "), so an
ID computed from an answer is right for almost every study but not all: `lookup_study_ids`
(POST /tools/lookup) asks Orthanc and also finds each Orthanc study of a StudyInstanceUID
held under several Patient IDs. `deleted_studies` never takes a wrong ID for a deletion
when it is given the StudyInstanceUIDs: a study whose UID Orthanc still holds is not gone.

Connection errors and HTTP 429/502/503/504 are retried with exponential backoff like the
DICOMweb source; a feed that cannot be read raises SourceError.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple
from urllib.parse import urlsplit

import requests

from app.mapping.tags import PATIENT_ID
from app.sources.base import StudyFailure, StudyRecord
from app.sources.errors import SourceError
from app.sources.http import RETRY_STATUSES, public_url
from app.sources.https import mount_tls
from app.sources.tls import TlsSettings, certificate_refused, tls_reason

log = logging.getLogger(__name__)

#: ChangeType whose study the sync should (re)read: the study is complete for now
STABLE_STUDY = "StableStudy"
#: a new study is read at once, so search finds it within seconds, and again once it is stable
#: (Orthanc waits `StableAge`, 60 s by default, after its last instance): complete from then on
READ_STUDY = ("NewStudy", STABLE_STUDY)
DELETED = "Deleted"


class ChangeEvent(NamedTuple):
    """What the sync does about one Orthanc study.

    ("study", orthanc_id, study_uid): read the study again (new, or grew and is stable);
    ("deleted", orthanc_id, None): the study is gone from the archive.
    """

    kind: str
    orthanc_id: str
    study_uid: str | None


@dataclass
class ChangesPage:
    """One page of the feed turned into events, at most one per Orthanc study.

    `last` is the cursor to store and pass as `since` next time; `done` says the feed holds
    nothing after it for now. `reset` says the feed ends before the `since` asked for:
    the archive's database was replaced, so the cursor means nothing there any more and a
    full listing is needed (then follow from `last`). `changes` counts the raw changes read;
    `gone` the stable studies deleted again before they could be read.
    """

    events: list[ChangeEvent] = field(default_factory=list)
    last: int = 0
    done: bool = True
    reset: bool = False
    changes: int = 0
    gone: int = 0


def orthanc_study_id(patient_id: str | None, study_uid: str) -> str:
    """Orthanc's ID of the study (PatientID, StudyInstanceUID): SHA-1 of "PatientID|UID"
    in five dash-separated groups of eight hex digits, as Orthanc computes it from the
    values it stored (spaces included: see the module notes)."""
    digest = hashlib.sha1(f"{patient_id or ''}|{study_uid}".encode()).hexdigest()
    return "-".join(digest[i : i + 8] for i in range(0, 40, 8))


def study_id_of(answer: dict) -> str | None:
    """The Orthanc ID in a REST `/studies/{id}` (or `/studies?expand`) answer."""
    value = answer.get("ID") if isinstance(answer, dict) else None
    return value if isinstance(value, str) and value else None


def study_uid_of(answer: dict) -> str | None:
    """The StudyInstanceUID in a REST `/studies/{id}` answer."""
    tags = answer.get("MainDicomTags") if isinstance(answer, dict) else None
    value = tags.get("StudyInstanceUID") if isinstance(tags, dict) else None
    return value.strip() if isinstance(value, str) and value.strip() else None


class OrthancChanges:
    """A reader of one Orthanc's change feed and study IDs (its REST API at `rest_url`)."""

    def __init__(
        self,
        name: str,
        rest_url: str,
        *,
        username: str | None = None,
        password: str | None = None,
        token: str | None = None,
        timeout: float = 30.0,
        session: requests.Session | None = None,
        retries: int = 3,
        backoff: float = 0.25,
        tls: TlsSettings | None = None,
    ):
        self.name = name
        self.url = rest_url.rstrip("/")
        self.public_url = public_url(self.url)
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self._secrets = [s for s in (password, token, urlsplit(rest_url).password) if s]
        session = session if session is not None else mount_tls(requests.Session(), tls)
        self._client_cert = tls is not None and tls.certfile is not None
        if username is not None:
            session.auth = (username, password or "")
        if token:
            session.headers["Authorization"] = f"Bearer {token}"
        self.session = session
        self.stats = {"requests": 0, "retries": 0}

    def archive_key(self, item: StudyRecord | StudyFailure) -> str | None:
        """Orthanc's own id of a study a listing yielded (how its deletions are reported)."""
        if isinstance(item, StudyFailure):
            return None
        patient = (item.attrs or {}).get(PATIENT_ID, {}).get("Value") or [None]
        return orthanc_study_id(patient[0] if isinstance(patient[0], str) else None, item.uid)

    # -- the feed ------------------------------------------------------------------------
    def last_seq(self) -> int:
        """The Seq of the last change Orthanc logged (0 for an empty feed).

        A first run reads it before its full listing and then follows the feed from it: a
        study that changes during the listing is then read twice rather than missed.
        """
        answer = self._feed({"last": ""}, "cannot read the end of the change feed")
        return answer["Last"]

    def page(self, since: int, limit: int = 100) -> ChangesPage:
        """The changes after `since` (at most `limit`) as events.

        A study is reported once per page, in the order of its last change: "study" for a
        NewStudy or StableStudy (its StudyInstanceUID read from /studies/{id}), "deleted" for
        a Deleted study. A stable study deleted before it was read gives no event.
        """
        if since < 0 or limit < 1:
            raise ValueError("since must be >= 0 and limit >= 1")
        answer = self._feed({"since": since, "limit": limit}, "cannot read the change feed")
        page = ChangesPage(last=answer["Last"], done=answer["Done"], changes=len(answer["Changes"]))
        if not answer["Changes"] and page.last < since:
            page.reset = True
        if answer["Changes"]:
            page.last = max(page.last, max(c["Seq"] for c in answer["Changes"]))
        latest: dict[str, str] = {}  # orthanc study id -> kind of its last relevant change
        for change in answer["Changes"]:
            kind = _kind(change)
            if kind is not None:
                latest.pop(change["ID"], None)  # move to the position of its last change
                latest[change["ID"]] = kind
        for orthanc_id, kind in latest.items():
            if kind == "deleted":
                page.events.append(ChangeEvent("deleted", orthanc_id, None))
                continue
            uid = self.study_uid(orthanc_id)
            if uid is None:
                page.gone += 1
                continue
            page.events.append(ChangeEvent("study", orthanc_id, uid))
        return page

    def pages(self, since: int, limit: int = 100) -> Iterator[ChangesPage]:
        """Pages from `since` until the feed is done; store each page's `last` as it is acted on."""
        while True:
            page = self.page(since, limit)
            yield page
            if page.done or page.reset or page.last <= since:
                return
            since = page.last

    # -- studies -------------------------------------------------------------------------
    def study_uid(self, orthanc_id: str) -> str | None:
        """The StudyInstanceUID of an Orthanc study, or None if Orthanc no longer holds it."""
        answer = self._json("GET", f"/studies/{orthanc_id}", None, None, "cannot read a study", missing_ok=True)
        return None if answer is None else study_uid_of(answer)

    def lookup_study_ids(self, study_uid: str) -> list[str]:
        """The Orthanc IDs of the studies with this StudyInstanceUID (one per Patient ID)."""
        answer = self._json("POST", "/tools/lookup", None, study_uid.strip(), "cannot look up a study")
        if not isinstance(answer, list):
            raise self._error("cannot look up a study", "the answer is not a JSON array")
        return [
            a["ID"] for a in answer if isinstance(a, dict) and a.get("Type") == "Study" and isinstance(a.get("ID"), str)
        ]

    def study_ids(self, page_size: int = 10000) -> set[str]:
        """The IDs of every study Orthanc holds (GET /studies, paged; no LimitFindResults).

        Studies deleted while paging shift later pages, so an ID can be missing from this
        set although the study exists: confirm before treating a missing ID as deleted
        (`deleted_studies` does).
        """
        ids: set[str] = set()
        since = 0
        while True:
            answer = self._json("GET", "/studies", {"since": since, "limit": page_size}, None, "cannot list study IDs")
            if not isinstance(answer, list) or not all(isinstance(a, str) for a in answer):
                raise self._error("cannot list study IDs", "the answer is not a JSON array of IDs")
            ids.update(answer)
            if len(answer) < page_size:
                return ids
            since += len(answer)

    def deleted_studies(self, known: Mapping[str, str | None] | Iterable[str]) -> list[ChangeEvent]:
        """A "deleted" event for each known Orthanc study that Orthanc no longer holds.

        `known` maps the Orthanc IDs the sync recorded to their StudyInstanceUIDs (or is
        just the IDs). Orthanc's feed says nothing about deletions: this is how they are
        found. Each ID missing from Orthanc's study list is checked on its own (404); with
        its UID, it is reported only if Orthanc holds that UID under no Patient ID at all,
        so an ID computed from a stripped PatientID is never taken for a deletion.
        """
        known = dict(known) if isinstance(known, Mapping) else dict.fromkeys(known)
        if not known:
            return []
        events = []
        for orthanc_id in sorted(set(known) - self.study_ids()):
            if (
                self._json("GET", f"/studies/{orthanc_id}", None, None, "cannot read a study", missing_ok=True)
                is not None
            ):
                continue
            uid = known[orthanc_id]
            if uid and self.lookup_study_ids(uid):
                continue
            events.append(ChangeEvent("deleted", orthanc_id, None))
        return events

    # -- HTTP ----------------------------------------------------------------------------
    def _feed(self, params: dict, what: str) -> dict:
        answer = self._json("GET", "/changes", params, None, what)
        if not (
            isinstance(answer, dict)
            and isinstance(answer.get("Changes"), list)
            and isinstance(answer.get("Last"), int)
            and isinstance(answer.get("Done"), bool)
        ):
            raise self._error(what, "the answer is not Orthanc's {Changes, Done, Last}")
        changes = [
            c
            for c in answer["Changes"]
            if isinstance(c, dict) and isinstance(c.get("Seq"), int) and isinstance(c.get("ID"), str)
        ]
        return {**answer, "Changes": changes}

    def _json(
        self, method: str, path: str, params: dict | None, data: str | None, what: str, *, missing_ok: bool = False
    ) -> Any:
        """One request, retried on connection errors and 429/502/503/504; its JSON answer.

        With `missing_ok`, a 404 gives None. Anything else raises SourceError.
        """
        attempt = 0
        while True:
            self.stats["requests"] += 1
            error: requests.RequestException
            try:
                response = self.session.request(method, self.url + path, params=params, data=data, timeout=self.timeout)
                if missing_ok and response.status_code == 404:
                    return None
                if response.status_code in RETRY_STATUSES:
                    error, wait = requests.HTTPError(response=response), response.headers.get("Retry-After")
                else:
                    response.raise_for_status()
                    return response.json()
            except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError) as exc:
                if certificate_refused(exc):  # a certificate is not fixed by asking again
                    raise self._error(what, self._describe(exc)) from None
                error, wait = exc, None
            except requests.HTTPError as exc:
                raise self._error(what, self._describe(exc)) from None
            except ValueError as exc:
                raise self._error(what, f"invalid JSON answer: {exc}"[:300]) from None
            if attempt >= self.retries:
                raise self._error(what, self._describe(error)) from None
            delay = self.backoff * (2**attempt)
            if wait and wait.isascii() and wait.isdigit():
                delay = max(delay, min(float(wait), 10.0))
            attempt += 1
            self.stats["retries"] += 1
            log.info("source %s: change feed retry %d after %s", self.name, attempt, type(error).__name__)
            time.sleep(delay)

    def _describe(self, exc: Exception) -> str:
        if isinstance(exc, requests.HTTPError) and exc.response is not None:
            status = exc.response.status_code
            if status in (401, 403):
                return f"authentication refused (HTTP {status})"
            if status == 404:
                return "HTTP 404: no Orthanc REST API there (check rest_url)"
            return self._clean(f"HTTP {status} {exc.response.reason or ''}".strip())
        if isinstance(exc, requests.ConnectionError):
            return tls_reason(exc, client_cert=self._client_cert) or f"cannot connect ({type(exc).__name__})"
        if isinstance(exc, requests.Timeout):
            return f"no answer within {self.timeout:g}s"
        return self._clean(f"{type(exc).__name__}: {exc}"[:300])

    def _clean(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    def _error(self, what: str, reason: str) -> SourceError:
        return SourceError(self.name, self.public_url, self._clean(f"{what}: {reason}"))


def _kind(change: dict) -> str | None:
    if change.get("ResourceType") != "Study":
        return None
    if change.get("ChangeType") in READ_STUDY:
        return "study"
    if change.get("ChangeType") == DELETED:
        return "deleted"
    return None
