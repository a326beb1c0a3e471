"""A DIMSE archive (C-FIND, Study Root Query/Retrieve) as a source.

Same shape as the DICOMweb source: all studies are listed first (one C-FIND at STUDY
level with the PATIENT and STUDY attributes of `app.mapping.tags` as empty return keys),
so `total()` is known before the first study is read; then, study by study, a C-FIND at
SERIES level and one at IMAGE level per series. Each answer (the identifier of a Pending
response) is converted to DICOM JSON with `dataset_to_dicom_json`, so mapping gets what
QIDO-RS would have returned.

Associations: one for the listing and one per study, released when done. A query that
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

pynetdicom logs the identifiers it receives at INFO level by default (patient names and
IDs): that is switched off here, and its chatty INFO lines are lowered to WARNING unless
the application set a level for the `pynetdicom` logger itself.
"""
from __future__ import annotations

import logging
import time

from pydicom.datadict import dictionary_VR
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.tag import Tag
from pynetdicom import AE, _config as _netdicom_config, evt
from pynetdicom.pdu import A_ASSOCIATE_RJ
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind, Verification
from pynetdicom.status import code_to_category

from app.mapping import tags
from app.sources.base import ListedSource, SeriesRecord, StudyFailure, StudyRecord
from app.sources.counts import ShortAnswer, check_count
from app.sources.dicom_json import dataset_to_dicom_json, first_uid
from app.sources.errors import ARCHIVE_DOWN_AFTER, SourceError
from app.sources.matching import cfind_keys, normalize_match, sliced_listing

log = logging.getLogger(__name__)

_netdicom_config.LOG_RESPONSE_IDENTIFIERS = False  # they carry patient data
if logging.getLogger("pynetdicom").level == logging.NOTSET:
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)

FIND_MODEL = StudyRootQueryRetrieveInformationModelFind

STUDY_TAGS = sorted(Tag(t) for t in {**tags.PATIENT, **tags.STUDY})
SERIES_TAGS = sorted(Tag(t) for t in tags.SERIES)
INSTANCE_TAGS = sorted(Tag(t) for t in tags.INSTANCE)
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


class _BadAnswer(Exception):
    """An answer without its key attribute, or one pynetdicom could not decode."""


class _Answers(list):
    """The Pending identifiers of one C-FIND; `cut` when the archive ended it early."""

    cut = False


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

    def __init__(self, source: "DimseSource"):
        self.source = source
        self.assoc = None

    def get(self):
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


class DimseSource(ListedSource):
    """Every study of a DICOM archive, read with C-FIND (Study Root)."""

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
    ):
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
        self._failing = 0  # studies in a row whose association failed
        self._reset_stats()

    def echo(self) -> None:
        """C-ECHO the archive; raise SourceError saying why if it does not answer Success."""
        try:
            assoc = self._associate(Verification)
        except _DimseError as exc:
            raise SourceError(self.name, self.location, f"C-ECHO failed: {exc}") from None
        try:
            self.stats["requests"] += 1
            status = assoc.send_c_echo()
        finally:
            if assoc.is_established:
                assoc.release()
        if status is None or "Status" not in status:
            raise SourceError(self.name, self.location,
                              f"C-ECHO failed: no answer within {self.timeout:g}s or association aborted")
        if status.Status != 0x0000:
            raise SourceError(self.name, self.location, f"C-ECHO answered status 0x{status.Status:04X}")

    # -- internals -------------------------------------------------------------------
    def _reset_stats(self) -> None:
        self.stats = {
            "studies_listed": 0, "associations": 0, "requests": 0, "retries": 0, "studies": 0,
            "series": 0, "instances": 0, "failed": 0, "duplicates": 0, "warnings": 0,
            "listing_queries": 0, "listing_gaps": 0,
        }

    def _associate(self, context: str):
        """An established association with `context` accepted, or a _DimseError."""
        self.stats["associations"] += 1
        opened: list[bool] = []
        # the rejection as it arrives (pynetdicom's own verdict can miss it: a peer that rejects and
        # closes at once can beat the requestor to its check that the connection is up, which
        # then calls the association aborted)
        rejections: list[A_ASSOCIATE_RJ] = []
        assoc = self._ae.associate(
            self.host, self.port, ae_title=self.called_aet,
            evt_handlers=[(evt.EVT_CONN_OPEN, lambda _event: opened.append(True)),
                          (evt.EVT_PDU_RECV, lambda event: isinstance(event.pdu, A_ASSOCIATE_RJ)
                           and rejections.append(event.pdu))],
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
                transient=rejection.result == 0x02)
        answer = getattr(assoc.acceptor, "primitive", None)
        if answer is not None and answer.result == 0x00:
            raise _DimseError("the archive accepted none of the proposed presentation contexts",
                              transient=False)
        if not opened:
            raise _DimseError(f"cannot connect (connection refused or no answer within {self.timeout:g}s)",
                              transient=True)
        raise _DimseError(f"association aborted or not answered within {self.timeout:g}s", transient=True)

    def _run_find(self, assoc, identifier: Dataset) -> list[Dataset | None]:
        """Send one C-FIND; return the Pending identifiers (None for an undecodable one).

        The list's `cut` is True when the archive ended the matches with Cancel unasked.
        """
        self.stats["requests"] += 1
        answers = _Answers()
        try:
            responses = assoc.send_c_find(identifier, FIND_MODEL)
            for status, answer in responses:
                if status is None or "Status" not in status:
                    raise _DimseError(
                        f"association aborted or no answer within {self.timeout:g}s", transient=True)
                code = int(status.Status)
                category = code_to_category(code)
                if category == "Pending":
                    answers.append(answer)
                    continue
                if category in ("Success", "Warning"):
                    if category == "Warning":
                        self.stats["warnings"] += 1
                    return answers
                if code == CUT_STATUS:
                    answers.cut = True
                    return answers
                raise _DimseError(f"C-FIND answered {category.lower()} status 0x{code:04X}",
                                  transient=code in RETRY_STATUSES, status=code)
        except RuntimeError:  # the association went away between two queries
            raise _DimseError("association no longer established", transient=True) from None
        raise _DimseError("C-FIND ended without a final status", transient=True)

    def _find(self, session: _Session, level: str, wanted: list,
              keys: dict | None = None) -> list[Dataset | None]:
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
                log.info("source %s: C-FIND at %s level refused (status 0x%04X); "
                         "querying that level without sequence attributes", self.name, level, error.status)
                continue
            if error.status is None:
                session.drop()  # the association is in an unknown state
            if not error.transient or attempt >= self.retries:
                raise error
            attempt += 1
            self.stats["retries"] += 1
            log.info("source %s: retry %d after: %s", self.name, attempt, error)
            time.sleep(self.backoff * (2 ** (attempt - 1)))

    def _list_studies(self, match: dict | None = None) -> list[tuple[dict | None, list[str]]]:
        match = normalize_match(match)
        self._reset_stats()
        self.listing_gaps = []
        session = _Session(self)

        def query(keys: dict) -> tuple[list, bool]:
            answers = self._find(session, "STUDY", STUDY_TAGS, cfind_keys(keys))
            cut = getattr(answers, "cut", False)
            return answers, cut or (self.max_results is not None and len(answers) >= self.max_results)

        try:
            found = sliced_listing(query, match, _study_uid, _study_date, uids_per_query=500)
        except _DimseError as exc:
            raise SourceError(self.name, self.location, f"cannot list studies: {exc}") from None
        finally:
            session.close()
        self.stats["listing_queries"] = found.queries
        self.stats["listing_gaps"] = len(found.gaps)
        self.listing_gaps = found.gaps
        for gap in found.gaps:
            log.warning("source %s: listing incomplete: %s", self.name, gap)
        answers = found.answers
        listing: list[tuple[dict | None, list[str]]] = []
        seen: set[str] = set()
        for answer in answers:
            if answer is None:
                listing.append((None, []))
                continue
            attrs, repairs = dataset_to_dicom_json(answer, STUDY_TAGS)
            uid = first_uid(attrs, "0020000D")
            if uid is not None and uid in seen:
                # Orthanc keys a study by PatientID + StudyInstanceUID and answers both
                self.stats["duplicates"] += 1
                continue
            seen.add(uid)
            listing.append((attrs, repairs))
        self.stats["studies_listed"] = len(listing)
        self._total = len(listing)
        return listing

    def _fetch_study(self, item: tuple[dict | None, list[str]]) -> StudyRecord | StudyFailure:
        attrs, study_repairs = item
        uid = first_uid(attrs, "0020000D") if attrs is not None else None
        if uid is None:
            self.stats["failed"] += 1
            reason = ("study answer pynetdicom could not decode" if attrs is None
                      else "study answer without StudyInstanceUID")
            return StudyFailure(uid=None, reason=reason, location=self.location)
        location = f"{self.location} study {uid}"
        session = _Session(self)
        repairs = list(study_repairs)
        try:
            series_list: list[SeriesRecord] = []
            seen_series: set[str] = set()
            duplicates = 0
            series_answers = self._find(session, "SERIES", SERIES_TAGS, {"StudyInstanceUID": uid})
            if getattr(series_answers, "cut", False):
                raise ShortAnswer("the archive ended its series answer early (C-FIND status 0xFE00, "
                                  "as Orthanc does beyond LimitFindResults)")
            for answer in series_answers:
                if answer is None:
                    raise _BadAnswer("a series answer could not be decoded")
                series_attrs, more = dataset_to_dicom_json(answer, SERIES_TAGS)
                series_uid = first_uid(series_attrs, "0020000E")
                if series_uid is None:
                    raise _BadAnswer("series answer without SeriesInstanceUID")
                if series_uid in seen_series:
                    duplicates += 1  # the same study UID under two Patient IDs
                    continue
                seen_series.add(series_uid)
                repairs += more
                instances, seen_sops = [], set()
                instance_answers = self._find(session, "IMAGE", INSTANCE_TAGS,
                                              {"StudyInstanceUID": uid, "SeriesInstanceUID": series_uid})
                if getattr(instance_answers, "cut", False):
                    raise ShortAnswer(f"the archive ended its instance answer for series {series_uid} early "
                                      "(C-FIND status 0xFE00, as Orthanc does beyond LimitFindInstances)")
                for found in instance_answers:
                    if found is None:
                        raise _BadAnswer(f"an instance answer in series {series_uid} could not be decoded")
                    instance, more = dataset_to_dicom_json(found, INSTANCE_TAGS)
                    sop = first_uid(instance, "00080018")
                    if sop is None:
                        raise _BadAnswer(f"instance answer without SOPInstanceUID in series {series_uid}")
                    if sop in seen_sops:
                        duplicates += 1
                        continue
                    seen_sops.add(sop)
                    repairs += more
                    instances.append(instance)
                check_count(f"series {series_uid}", "instance", len(instances), series_attrs, "00201209")
                series_list.append(SeriesRecord(attrs=series_attrs, instances=instances))
            check_count("the study", "series", len(series_list), attrs, "00201206")
            if duplicates:
                self.stats["duplicates"] += duplicates
                repairs.append(f"ignored {duplicates} repeated series/instance answer(s)")
        except (_DimseError, _BadAnswer, ShortAnswer) as exc:
            self._failing = self._failing + 1 if isinstance(exc, _DimseError) and exc.transient else 0
            if self._failing >= ARCHIVE_DOWN_AFTER:  # the archive, not the studies, is failing: end the run
                raise SourceError(self.name, self.location, f"cannot read studies: {exc}") from None
            self.stats["failed"] += 1
            return StudyFailure(uid=uid, reason=f"cannot read series/instances: {exc}", location=location)
        finally:
            session.close()
        self._failing = 0
        self.stats["studies"] += 1
        self.stats["series"] += len(series_list)
        self.stats["instances"] += sum(len(s.instances) for s in series_list)
        return StudyRecord(uid=uid, attrs=attrs, series=series_list, repairs=list(dict.fromkeys(repairs)))
