"""A DIMSE archive (C-FIND, Study Root Query/Retrieve) as a source.

Same shape as the DICOMweb source: all studies are listed first (one C-FIND at STUDY
level with the PATIENT and STUDY attributes of `app.mapping.tags` as empty return keys),
so `total()` is known before the first study is read; then, study by study, a C-FIND at
SERIES level and one at IMAGE level per series. Each answer (the identifier of a Pending
response) is converted to DICOM JSON with `dataset_to_dicom_json`, so mapping gets what
QIDO-RS would have returned.

Associations: one for the listing and one per study, released when done; with `concurrency`
N, N studies are read at once, so at most N associations are open. A query that
fails for a transient reason (connection refused or lost, association aborted, no answer
within `timeout`, rejected-transient, Out of Resources) is repeated on a new association
after a short backoff, up to `retries` times. If the archive refuses a query with
sequence return keys (some archives fail the whole C-FIND on them), the query is
repeated without sequences, and that level is queried without them from then on.

Orthanc (1.10) answers C-FIND with the sequences it stored (OtherPatientIDsSequence,
RequestAttributesSequence) where its QIDO-RS leaves them out; like QIDO it answers the
query-only counts (NumberOfStudyRelated*, NumberOfSeriesRelatedInstances) and
ModalitiesInStudy. It answers a study UID once per Patient ID holding it: repeated
answers are dropped and counted (`stats["duplicates"]`).

Capped answers. Orthanc with `LimitFindResults` (studies, series) or `LimitFindInstances`
= N sends N matches, then ends the C-FIND with status 0xFE00 (Cancel) although no C-CANCEL
was sent: that status, or, with `max_results` set (for an archive that just stops at its
limit), an answer of `max_results` studies or more, marks a listing answer as cut, and the
listing asks again by StudyDate slices (`app.sources.matching`). A cut series or instance
answer, or fewer series/instances than the archive's own NumberOfStudyRelatedSeries /
NumberOfSeriesRelatedInstances, makes the study a StudyFailure instead of a partial record.

DIMSE over TLS (`tls`, DICOM PS3.15 Annex B.1): each association is opened over TLS 1.2 or
later with the source's CA bundle and client certificate. pynetdicom connects and reads in the
association's own thread and only logs a TLS failure (with a traceback): the source's SSL
context notes it for the association (app/sources/tls.py), the association's failure names it,
and pynetdicom's traceback of it is left out of the log.

pynetdicom logs the identifiers it receives at INFO level by default (patient names and
IDs): that is switched off here, and its chatty INFO lines are lowered to WARNING unless
the application set a level for the `pynetdicom` logger itself.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Iterator
from contextlib import contextmanager

from pydicom.datadict import dictionary_VR
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.tag import Tag
from pydicom.uid import UID
from pynetdicom import AE, evt
from pynetdicom import _config as _netdicom_config
from pynetdicom.association import Association
from pynetdicom.pdu import A_ASSOCIATE_RJ
from pynetdicom.sop_class import (  # type: ignore[attr-defined]  # pynetdicom makes its SOP classes at import
    StudyRootQueryRetrieveInformationModelFind,
    Verification,
)
from pynetdicom.status import code_to_category

from app.mapping import tags
from app.sources.dicom_json import dataset_to_dicom_json
from app.sources.errors import SourceError
from app.sources.matching import cfind_keys
from app.sources.queried import QueriedArchive
from app.sources.tls import RecordingContext, TlsSettings, refused, ssl_reason

log = logging.getLogger(__name__)

_netdicom_config.LOG_RESPONSE_IDENTIFIERS = False  # they carry patient data
if logging.getLogger("pynetdicom").level == logging.NOTSET:
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)


def _without_tls_traceback(record: logging.LogRecord) -> bool:
    """Drop pynetdicom's traceback of a TLS failure: the source reports its reason itself."""
    return not (record.exc_info and isinstance(record.exc_info[1], ssl.SSLError))


for _logger in ("pynetdicom.transport", "pynetdicom.dul"):  # where pynetdicom 3.0 logs them
    logging.getLogger(_logger).addFilter(_without_tls_traceback)

FIND_MODEL = StudyRootQueryRetrieveInformationModelFind

STUDY_TAGS = sorted(Tag(t) for t in {**tags.PATIENT, **tags.STUDY})
SERIES_TAGS = sorted(Tag(t) for t in tags.SERIES)
INSTANCE_TAGS = sorted(Tag(t) for t in tags.INSTANCE)
_LEVEL_TAGS = {"STUDY": STUDY_TAGS, "SERIES": SERIES_TAGS, "IMAGE": INSTANCE_TAGS}
#: C-FIND failure statuses worth another try (PS3.4 C.4.1.1.4): Out of Resources
RETRY_STATUSES = frozenset({0xA700})
#: "Matching terminated due to Cancel": sent unasked, the archive stopped at its limit
CUT_STATUS = 0xFE00


class _DimseError(Exception):
    """A query or association that failed; `transient` ones are retried."""

    def __init__(self, reason: str, *, transient: bool, status: int | None = None):
        super().__init__(reason)
        self.transient = transient
        self.status = status


class _Answers(list[Dataset | None]):
    """The Pending identifiers of one C-FIND; `cut` when the archive ended it early."""

    cut = False


def _note_rejection(event: evt.Event, rejections: list[A_ASSOCIATE_RJ]) -> None:
    """Keep an association rejection as it arrives (an EVT_PDU_RECV handler)."""
    if isinstance(event.pdu, A_ASSOCIATE_RJ):
        rejections.append(event.pdu)


def _identifier(level: str, wanted: list, keys: dict, sequences: bool) -> Dataset:
    """A C-FIND identifier: QueryRetrieveLevel, the unique keys, empty return keys."""
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for tag in wanted:
        vr = dictionary_VR(tag)
        if vr == "SQ":
            if sequences:
                ds.add_new(tag, vr, Sequence([]))  # zero-length: return the whole sequence
        else:
            ds.add_new(tag, vr, None)
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return ds


def _has_sequences(wanted: list) -> bool:
    return any(dictionary_VR(tag) == "SQ" for tag in wanted)


def _study_date(answer: Dataset | None) -> str | None:
    value = answer.get("StudyDate") if answer is not None else None
    return str(value) if value else None


def _study_uid(answer: Dataset | None) -> str | None:
    value = answer.get("StudyInstanceUID") if answer is not None else None
    if value is None:
        return None
    return str(value).strip() or None


class _Session:
    """One association, opened on first use and re-opened after a failure."""

    def __init__(self, source: DimseSource):
        self.source = source
        self.assoc: Association | None = None

    def get(self) -> Association:
        if self.assoc is None or not self.assoc.is_established:
            self.assoc = None
            self.assoc = self.source._associate(FIND_MODEL)
        return self.assoc

    def drop(self) -> None:
        assoc, self.assoc = self.assoc, None
        if assoc is not None and assoc.is_established:
            assoc.abort()

    def close(self) -> None:
        assoc, self.assoc = self.assoc, None
        if assoc is not None and assoc.is_established:
            assoc.release()


class DimseSource(QueriedArchive):
    """Every study of a DICOM archive, read with C-FIND (Study Root)."""

    failures = (_DimseError,)
    uids_per_query = 500
    stat_names = (
        "studies_listed",
        "associations",
        "requests",
        "retries",
        "studies",
        "series",
        "instances",
        "failed",
        "duplicates",
        "warnings",
        "listing_queries",
        "listing_gaps",
    )
    undecodable = "study answer pynetdicom could not decode"

    def __init__(
        self,
        name: str,
        host: str,
        port: int,
        called_aet: str,
        calling_aet: str = "FACADE",
        timeout: float = 30.0,
        retries: int = 2,
        backoff: float = 0.5,
        max_results: int | None = None,
        concurrency: int = 1,
        tls: TlsSettings | None = None,
    ):
        super().__init__(concurrency)
        if not host:
            raise ValueError("host is required")
        if not called_aet or not called_aet.strip():
            raise ValueError("called_aet is required")
        if max_results is not None and max_results < 1:
            raise ValueError("max_results must be at least 1")
        self.name = name
        self.host = host
        self.port = int(port)
        self.called_aet = called_aet.strip()
        self.calling_aet = calling_aet.strip()
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        #: the most studies the archive answers to one C-FIND, for one that stops there silently
        self.max_results = max_results
        #: where the archive is, for messages (no credentials in DIMSE)
        self.location = f"{host}:{self.port} ({self.called_aet})"
        #: DIMSE over TLS: the context every association's connection is wrapped in
        self._tls: RecordingContext | None = tls.ssl_context() if tls is not None else None
        self._client_cert = tls is not None and tls.certfile is not None
        self._ae = AE(ae_title=self.calling_aet)
        self._ae.add_requested_context(FIND_MODEL)
        self._ae.add_requested_context(Verification)
        self._ae.acse_timeout = timeout
        self._ae.dimse_timeout = timeout
        self._ae.network_timeout = timeout
        self._ae.connection_timeout = timeout
        self._no_sequences: set[str] = set()  # levels whose sequence keys the archive refused
        self.stats: dict = {}
        self.listing_gaps: list[str] = []
        self._reset_stats()

    def echo(self) -> None:
        """C-ECHO the archive; raise SourceError saying why if it does not answer Success."""
        try:
            assoc = self._associate(Verification)
        except _DimseError as exc:
            raise SourceError(self.name, self.location, f"C-ECHO failed: {exc}") from None
        try:
            self._count("requests")
            status = assoc.send_c_echo()
        finally:
            if assoc.is_established:
                assoc.release()
        if status is None or "Status" not in status:
            raise SourceError(
                self.name, self.location, f"C-ECHO failed: no answer within {self.timeout:g}s or association aborted"
            )
        if status.Status != 0x0000:
            raise SourceError(self.name, self.location, f"C-ECHO answered status 0x{status.Status:04X}")

    # -- internals -------------------------------------------------------------------

    def _associate(self, context: UID) -> Association:
        """An established association with `context` accepted, or a _DimseError."""
        self._count("associations")
        opened: list[bool] = []
        # the rejection as it arrives (pynetdicom's own verdict can miss it: a peer that rejects and
        # closes at once can beat the requestor to its check that the connection is up, which
        # then calls the association aborted)
        rejections: list[A_ASSOCIATE_RJ] = []
        assoc = self._ae.associate(
            self.host,
            self.port,
            ae_title=self.called_aet,
            evt_handlers=[
                (evt.EVT_CONN_OPEN, lambda _event: opened.append(True)),
                (evt.EVT_PDU_RECV, lambda event: _note_rejection(event, rejections)),
            ],
            tls_args=(self._tls, self.host) if self._tls is not None else None,
        )
        tls_error = self._tls.error_in(assoc.dul) if self._tls is not None else None
        if tls_error is not None and not assoc.is_established:
            # a certificate is not fixed by asking again; a connection cut mid-handshake may be
            raise _DimseError(
                f"TLS failed: {ssl_reason(tls_error, client_cert=self._client_cert)}", transient=not refused(tls_error)
            )
        if assoc.is_established:
            if not any(cx.abstract_syntax == context for cx in assoc.accepted_contexts):
                assoc.release()
                raise _DimseError(f"the archive does not accept {context.name}", transient=False)
            return assoc
        if rejections:
            rejection = rejections[0].to_primitive()
            # 0x01 rejected-permanent, 0x02 rejected-transient (PS3.8 9.3.4)
            raise _DimseError(
                f"association rejected ({rejection.result_str}, {rejection.source_str}: {rejection.reason_str})",
                transient=rejection.result == 0x02,
            )
        answer = getattr(assoc.acceptor, "primitive", None)
        if answer is not None and answer.result == 0x00:
            raise _DimseError("the archive accepted none of the proposed presentation contexts", transient=False)
        if not opened:
            raise _DimseError(
                f"cannot connect (connection refused or no answer within {self.timeout:g}s)", transient=True
            )
        raise _DimseError(f"association aborted or not answered within {self.timeout:g}s", transient=True)

    def _run_find(self, assoc: Association, identifier: Dataset) -> _Answers:
        """Send one C-FIND; return the Pending identifiers (None for an undecodable one).

        The list's `cut` is True when the archive ended the matches with Cancel unasked.
        """
        self._count("requests")
        answers = _Answers()
        try:
            responses = assoc.send_c_find(identifier, FIND_MODEL)
            for status, answer in responses:
                if status is None or "Status" not in status:
                    raise _DimseError(f"association aborted or no answer within {self.timeout:g}s", transient=True)
                code = int(status.Status)
                category = code_to_category(code)
                if category == "Pending":
                    answers.append(answer)
                    continue
                if category in ("Success", "Warning"):
                    if category == "Warning":
                        self._count("warnings")
                    return answers
                if code == CUT_STATUS:
                    answers.cut = True
                    return answers
                raise _DimseError(
                    f"C-FIND answered {category.lower()} status 0x{code:04X}",
                    transient=code in RETRY_STATUSES,
                    status=code,
                )
        except RuntimeError:  # the association went away between two queries
            raise _DimseError("association no longer established", transient=True) from None
        raise _DimseError("C-FIND ended without a final status", transient=True)

    def _find(self, session: _Session, level: str, wanted: list, keys: dict | None = None) -> _Answers:
        """One C-FIND at `level`, retried on transient failures on a new association."""
        attempt = 0
        while True:
            sequences = level not in self._no_sequences
            identifier = _identifier(level, wanted, keys or {}, sequences)
            try:
                return self._run_find(session.get(), identifier)
            except _DimseError as exc:
                error = exc
            if error.status is not None and not error.transient and sequences and _has_sequences(wanted):
                # some archives refuse sequence return keys: ask again without them
                self._no_sequences.add(level)
                log.info(
                    "source %s: C-FIND at %s level refused (status 0x%04X); "
                    "querying that level without sequence attributes",
                    self.name,
                    level,
                    error.status,
                )
                continue
            if error.status is None:
                session.drop()  # the association is in an unknown state
            if not error.transient or attempt >= self.retries or self._abandoned():
                raise error
            attempt += 1
            self._count("retries")
            log.info("source %s: retry %d after: %s", self.name, attempt, error)
            self._pause(self.backoff * (2 ** (attempt - 1)))

    # -- the protocol's hooks (app/sources/queried.py) -----------------------------------
    @contextmanager
    def _session(self) -> Iterator[_Session]:
        """One association for a listing or a study, released when done."""
        session = _Session(self)
        try:
            yield session
        finally:
            session.close()

    def _query_studies(self, session: _Session, keys: dict) -> tuple[list, bool]:
        answers = self._find(session, "STUDY", STUDY_TAGS, cfind_keys(keys))
        cut = getattr(answers, "cut", False)
        return answers, cut or (self.max_results is not None and len(answers) >= self.max_results)

    def _query_series(self, session: _Session, study_uid: str) -> tuple[list, bool]:
        answers = self._find(session, "SERIES", SERIES_TAGS, {"StudyInstanceUID": study_uid})
        return answers, answers.cut

    def _query_instances(self, session: _Session, study_uid: str, series_uid: str) -> tuple[list, bool]:
        answers = self._find(
            session, "IMAGE", INSTANCE_TAGS, {"StudyInstanceUID": study_uid, "SeriesInstanceUID": series_uid}
        )
        return answers, answers.cut

    def _decode(self, answer: Dataset | None, level: str) -> tuple[dict | None, list[str]]:
        """A C-FIND identifier as the DICOM JSON QIDO-RS would have answered (None: undecodable)."""
        if answer is None:
            return None, []
        return dataset_to_dicom_json(answer, _LEVEL_TAGS[level])

    def _study_uid(self, answer: Dataset | None) -> str | None:
        return _study_uid(answer)

    def _study_date(self, answer: Dataset | None) -> str | None:
        return _study_date(answer)

    def _cut_reason(self, level: str, series_uid: str | None = None) -> str:
        if level == "series":
            return (
                "the archive ended its series answer early (C-FIND status 0xFE00, "
                "as Orthanc does beyond LimitFindResults)"
            )
        return (
            f"the archive ended its instance answer for series {series_uid} early "
            "(C-FIND status 0xFE00, as Orthanc does beyond LimitFindInstances)"
        )

    def _study_location(self, uid: str) -> str:
        return f"{self.location} study {uid}"

    def _archive_fault(self, exc: Exception) -> bool:
        """A transient association or query failure: several studies in a row end the run."""
        return isinstance(exc, _DimseError) and exc.transient
