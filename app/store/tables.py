"""Tables of the store. The serialized resource sits next to its search index rows.

Times are epoch microseconds (BIGINT) so SQLite and PostgreSQL compare them the same way.

Every index table has a lookup index (find resources by value) that ends with `rid`, so a
search clause (`id IN (SELECT rid … WHERE value …)`) reads the index alone, never the table:
a clause that matches many rows (`modality=CT`, a third of all studies) costs an index range,
not one random table read per row. And an owner index on (rtype, rid, param): a search that
ANDs clauses probes the later clauses' rows of each candidate resource with it, reading that
parameter's few rows, not all of the resource's rows (an ImagingStudy has one token row per
instance); the token one also holds the code, so such a probe never reads the table.
"""

from __future__ import annotations

from sqlalchemy import DDL, BigInteger, Column, Index, Integer, LargeBinary, String, Text, event
from sqlmodel import Field, SQLModel

ID_TEXT = String(64).with_variant(String(64, collation="C"), "postgresql")
#: an id the database counts up (SQLite autoincrements only an INTEGER PRIMARY KEY)
SERIAL = BigInteger().with_variant(Integer(), "sqlite")
#: index rows name resources (rid, target_id) in the collation of resource.id: PostgreSQL
#: compares columns of two collations without the index of either, so `rid = id` and
#: `id IN (SELECT rid …)` would probe nothing and scan instead
REF_TEXT = Text().with_variant(Text(collation="C"), "postgresql")
NORM_TEXT = Text().with_variant(Text(collation="C"), "postgresql").with_variant(Text(collation="NOCASE"), "sqlite")


class Resource(SQLModel, table=True):
    """Current version of every resource, as the JSON bytes the API serves."""

    __tablename__ = "resource"
    rtype: str = Field(primary_key=True, max_length=32)
    #: ids order by code point on both databases (results are ordered by id), whatever the
    #: PostgreSQL database's own collation
    id: str = Field(sa_column=Column(ID_TEXT, primary_key=True))
    version: int
    last_updated: int = Field(sa_column=Column(BigInteger, nullable=False, index=True))
    content_hash: str = Field(max_length=64)
    content: bytes = Field(sa_column=Column(LargeBinary, nullable=False))


class ResourceVersion(SQLModel, table=True):
    """Every version ever stored, for history and `vread`; a deletion is a version too, with empty
    content (app/store/resources.py DELETION).

    Type and system history read it newest first a page at a time (app/store/history.py): each
    along an index in that order, so a page costs its rows, not a sort of every version.
    """

    __tablename__ = "resource_version"
    __table_args__ = (
        Index("ix_version_type_time", "rtype", "last_updated", "id", "version"),
        Index("ix_version_time", "last_updated", "rtype", "id", "version"),
    )
    rtype: str = Field(primary_key=True, max_length=32)
    id: str = Field(primary_key=True, max_length=64)
    version: int = Field(primary_key=True)
    last_updated: int = Field(sa_column=Column(BigInteger, nullable=False))
    content: bytes = Field(sa_column=Column(LargeBinary, nullable=False))


class TokenIndex(SQLModel, table=True):
    __tablename__ = "idx_token"
    __table_args__ = (
        Index("ix_token_lookup", "rtype", "param", "code", "system", "rid"),
        Index("ix_token_owner", "rtype", "rid", "param", "code"),
    )
    pk: int | None = Field(default=None, primary_key=True)
    rtype: str = Field(max_length=32)
    rid: str = Field(sa_column=Column(ID_TEXT, nullable=False))
    param: str = Field(max_length=64)
    system: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    code: str = Field(sa_column=Column(Text, nullable=False))


def _value_statistics(table: type[SQLModel], columns: str) -> None:
    """PostgreSQL statistics on `param` and the value together.

    A value belongs to one parameter (code "CT" only to `modality`), so the planner's
    default of multiplying the two selectivities estimates `modality=CT` at a handful of
    rows when it is a third of all studies, and drives an AND from it instead of from the
    narrow clause. Multi-column MCV lists and dependencies give it the real counts once
    ANALYZE (or autovacuum) has run.
    """
    name = f"st_{table.__tablename__}_values"
    event.listen(
        table.__table__,  # type: ignore[attr-defined]  # SQLModel's types omit the __table__ of table models
        "after_create",
        DDL(f"CREATE STATISTICS {name} (mcv, dependencies) ON {columns} FROM {table.__tablename__}").execute_if(
            dialect="postgresql"
        ),
    )


_value_statistics(TokenIndex, "param, code")


class StringIndex(SQLModel, table=True):
    __tablename__ = "idx_string"
    __table_args__ = (
        Index("ix_string_lookup", "rtype", "param", "norm", "rid"),
        Index("ix_string_owner", "rtype", "rid", "param"),
    )
    pk: int | None = Field(default=None, primary_key=True)
    rtype: str = Field(max_length=32)
    rid: str = Field(sa_column=Column(ID_TEXT, nullable=False))
    param: str = Field(max_length=64)
    #: string search is a prefix LIKE on `norm`; an index serves it only under a collation
    #: that orders by code point and matches LIKE's case rule: "C" on PostgreSQL (whatever
    #: the database's locale), NOCASE on SQLite (LIKE ignores ASCII case; `norm` is casefolded
    #: anyway, so equality and LIKE give the same answers as under BINARY)
    norm: str = Field(sa_column=Column(NORM_TEXT, nullable=False))
    value: str = Field(sa_column=Column(Text, nullable=False))


_value_statistics(StringIndex, "param, norm")


class DateIndex(SQLModel, table=True):
    __tablename__ = "idx_date"
    __table_args__ = (
        Index("ix_date_lookup", "rtype", "param", "low", "high", "rid"),
        # `ge`/`gt` bound `high` alone (a range that ends after the value): by its own index
        Index("ix_date_high", "rtype", "param", "high", "low", "rid"),
        Index("ix_date_owner", "rtype", "rid", "param"),
    )
    pk: int | None = Field(default=None, primary_key=True)
    rtype: str = Field(max_length=32)
    rid: str = Field(sa_column=Column(ID_TEXT, nullable=False))
    param: str = Field(max_length=64)
    low: int = Field(sa_column=Column(BigInteger, nullable=False))
    high: int = Field(sa_column=Column(BigInteger, nullable=False))


class ReferenceIndex(SQLModel, table=True):
    __tablename__ = "idx_reference"
    __table_args__ = (
        Index("ix_reference_lookup", "rtype", "param", "target_id", "target_type", "rid"),
        Index("ix_reference_owner", "rtype", "rid", "param"),
    )
    pk: int | None = Field(default=None, primary_key=True)
    rtype: str = Field(max_length=32)
    rid: str = Field(sa_column=Column(ID_TEXT, nullable=False))
    param: str = Field(max_length=64)
    target_type: str = Field(max_length=32)
    #: an id here, or "~" and the URL of another server's resource (app/search/references.py)
    target_id: str = Field(sa_column=Column(REF_TEXT, nullable=False))


class PatientContribution(SQLModel, table=True):
    """What each study says about its patient.

    A Patient is the merge of the contributions of all its studies (identifiers united,
    demographics from the most recent study), so the result does not depend on the order
    studies were synced in, and re-syncing the same archive changes nothing.
    """

    __tablename__ = "patient_contribution"
    __table_args__ = (Index("ix_contribution_patient", "patient_id"),)
    source: str = Field(primary_key=True, max_length=64)
    study_uid: str = Field(primary_key=True, max_length=64)
    patient_id: str = Field(max_length=64)
    rank: str = Field(sa_column=Column(Text, nullable=False))
    content: bytes = Field(sa_column=Column(LargeBinary, nullable=False))


class StudyCopy(SQLModel, table=True):
    """Which archive holds which study, and what that archive's copy maps to.

    The served ImagingStudy is the merge of the copies (app/store/copies.py); a study
    leaves search only when no archive holds it any more. `last_seen` is the last sync
    that listed it (a complete listing that misses it means the archive deleted it);
    `archive_key` is the archive's own id for the study where it has one (Orthanc's), so a
    deletion reported by that id finds the study.
    """

    __tablename__ = "study_copy"
    __table_args__ = (Index("ix_copy_archive_key", "source", "archive_key"), Index("ix_copy_study", "study_uid"))
    source: str = Field(primary_key=True, max_length=64)
    study_uid: str = Field(primary_key=True, max_length=64)
    archive_key: str | None = Field(default=None, max_length=128)
    last_seen: int = Field(sa_column=Column(BigInteger, nullable=False))
    content: bytes = Field(sa_column=Column(LargeBinary, nullable=False))


class Tombstone(SQLModel, table=True):
    """A resource that was served and is gone: a read answers 410, and if it comes back its
    versions go on from here."""

    __tablename__ = "tombstone"
    rtype: str = Field(primary_key=True, max_length=32)
    id: str = Field(primary_key=True, max_length=64)
    version: int
    deleted: int = Field(sa_column=Column(BigInteger, nullable=False))


class SourceState(SQLModel, table=True):
    """Where each source's sync stands: its cursor, and how its last attempts went."""

    __tablename__ = "source_state"
    source: str = Field(primary_key=True, max_length=64)
    cursor: str = Field(sa_column=Column(Text, nullable=False, default="{}"))
    last_full: int | None = Field(default=None, sa_column=Column(BigInteger, nullable=True))
    last_success: int | None = Field(default=None, sa_column=Column(BigInteger, nullable=True))
    last_attempt: int | None = Field(default=None, sa_column=Column(BigInteger, nullable=True))
    last_error: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    last_error_at: int | None = Field(default=None, sa_column=Column(BigInteger, nullable=True))


class PatientFetch(SQLModel, table=True):
    """When the facade last asked an archive for one patient's studies (on-demand mode)."""

    __tablename__ = "patient_fetch"
    source: str = Field(primary_key=True, max_length=64)
    system: str = Field(primary_key=True, max_length=512)
    value: str = Field(primary_key=True, max_length=256)
    fetched: int = Field(sa_column=Column(BigInteger, nullable=False))


class Quarantine(SQLModel, table=True):
    """Studies (or files) a sync could not map, with the reason; retried by the next sync."""

    __tablename__ = "quarantine"
    source: str = Field(primary_key=True, max_length=64)
    key: str = Field(primary_key=True, max_length=512)
    study_uid: str | None = Field(default=None, max_length=64)
    reason: str = Field(sa_column=Column(Text, nullable=False))
    first_seen: int = Field(sa_column=Column(BigInteger, nullable=False))
    last_seen: int = Field(sa_column=Column(BigInteger, nullable=False))


class SyncRun(SQLModel, table=True):
    """One sync of one source: when, and what it did."""

    __tablename__ = "sync_run"
    pk: int | None = Field(default=None, primary_key=True)
    source: str = Field(max_length=64, index=True)
    started: int = Field(sa_column=Column(BigInteger, nullable=False))
    finished: int | None = Field(default=None, sa_column=Column(BigInteger, nullable=True))
    status: str = Field(max_length=16)
    summary: str = Field(sa_column=Column(Text, nullable=False, default="{}"))


class Setting(SQLModel, table=True):
    """Server-wide values that every process must share (e.g. the paging link key)."""

    __tablename__ = "setting"
    key: str = Field(primary_key=True, max_length=64)
    value: str = Field(sa_column=Column(Text, nullable=False))


class PatientMatch(SQLModel, table=True):
    """Each Patient's match features (app/identity/features.py) as JSON, and their digest.

    Scoring a candidate reads this small row instead of the resource; the digest tells
    whether a stored Patient changed in what matching looks at (a new study of the same
    patient usually does not, and then nothing is matched again).
    """

    __tablename__ = "patient_match"
    patient_id: str = Field(sa_column=Column(ID_TEXT, primary_key=True))
    digest: str = Field(max_length=64)
    features: bytes = Field(sa_column=Column(LargeBinary, nullable=False))


class PatientBlock(SQLModel, table=True):
    """Blocking keys: which patients are worth scoring against each other.

    A candidate search is `key IN (…)` on the primary key's leading column: an index range
    per key, never a scan of all patients.
    """

    __tablename__ = "patient_block"
    __table_args__ = (Index("ix_block_patient", "patient_id"),)
    key: str = Field(sa_column=Column(REF_TEXT, primary_key=True))
    patient_id: str = Field(sa_column=Column(ID_TEXT, primary_key=True))


class PatientLink(SQLModel, table=True):
    """A pair of Patients that matching or a person judged (`a` < `b`).

    status: `linked` (scored at or above identity.auto_link: both carry Patient.link),
    `review` (between the thresholds: waits for a person), `manual-link` (a person linked
    them: Patient.link whatever the score) or `manual-unlink` (a person said they are two
    people: never linked again automatically). `points` and `explanation` are the latest
    score; `decided` when the status last changed (epoch micros).
    """

    __tablename__ = "patient_link"
    # a listing reads pages best first, (points, a, b) descending, from where the last stopped:
    # one index range per page, of every pair or of one status (app/store/links.py)
    __table_args__ = (
        Index("ix_link_b", "b"),
        Index("ix_link_status", "status", "points", "a", "b"),
        Index("ix_link_order", "points", "a", "b"),
    )
    a: str = Field(sa_column=Column(ID_TEXT, primary_key=True))
    b: str = Field(sa_column=Column(ID_TEXT, primary_key=True))
    status: str = Field(max_length=16)
    points: float
    explanation: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    decided: int = Field(sa_column=Column(BigInteger, nullable=False))


class AuditEventRow(SQLModel, table=True):
    """One AuditEvent (FHIR R4, IHE Basic Audit Log Patterns) per read, search or refused
    request: kept apart from `resource`, so no ordinary search can return one."""

    __tablename__ = "audit_event"
    __table_args__ = (Index("ix_audit_recorded", "recorded", "id"),)
    id: str = Field(sa_column=Column(ID_TEXT, primary_key=True))
    recorded: int = Field(sa_column=Column(BigInteger, nullable=False))
    #: AuditEvent.outcome: 0 success, 4 minor failure (refused, bad request), 8 serious failure
    outcome: str = Field(max_length=2)
    #: what the event says, as compact JSON (app/security/audit.py `event_record`); the AuditEvent
    #: is made of it when the trail is read (`render_event`). Rows of earlier releases hold the
    #: AuditEvent JSON itself, and are served as they are.
    content: bytes = Field(sa_column=Column(LargeBinary, nullable=False))


class AuditIndexRow(SQLModel, table=True):
    """What AuditEvent search looks up: (param, value) of each event (patient, agent, entity-type)."""

    __tablename__ = "audit_index"
    __table_args__ = (Index("ix_audit_lookup", "param", "value", "event_id"),)
    pk: int | None = Field(default=None, primary_key=True)
    event_id: str = Field(sa_column=Column(ID_TEXT, nullable=False))
    param: str = Field(max_length=32)
    value: str = Field(sa_column=Column(REF_TEXT, nullable=False))


class ExportJob(SQLModel, table=True):
    """One Bulk Data export (Bulk Data Access IG v2.0.0): what was asked, who asked, and where
    it stands. Any API node may run a job: it claims the row for `lease` seconds and renews
    the claim while it writes (app/export/jobs.py), so a job runs on one node at a time and a
    node that dies hands it on. `manifest` holds the finished job's output and error files."""

    __tablename__ = "export_job"
    __table_args__ = (Index("ix_export_status", "status", "lease_until"), Index("ix_export_owner", "owner", "status"))
    id: str = Field(sa_column=Column(ID_TEXT, primary_key=True))
    #: the client that may poll, download and cancel ("" in open mode)
    owner: str = Field(sa_column=Column(Text, nullable=False))
    #: queued, running, done, failed or cancelled
    status: str = Field(max_length=16)
    #: the kick-off request's URL, as the manifest's `request` gives it
    request: str = Field(sa_column=Column(Text, nullable=False))
    #: what to export, as JSON (app/export/params.py ExportRequest)
    params: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    created: int = Field(sa_column=Column(BigInteger, nullable=False))
    #: epoch micros the export's reads began at (the manifest's transactionTime)
    transaction_time: int | None = Field(default=None, sa_column=Column(BigInteger, nullable=True))
    #: the node running it, and until when its claim holds (epoch micros)
    node: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    lease_until: int | None = Field(default=None, sa_column=Column(BigInteger, nullable=True))
    #: what is done so far, for X-Progress
    progress: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    #: {"output": [...], "error": [...]} of a finished job, file names relative to its directory
    manifest: bytes | None = Field(default=None, sa_column=Column(LargeBinary, nullable=True))
    #: why a failed job failed (no patient data)
    error: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    finished: int | None = Field(default=None, sa_column=Column(BigInteger, nullable=True))
    #: when its files are removed (epoch micros)
    expires: int | None = Field(default=None, sa_column=Column(BigInteger, nullable=True))


class SubscriptionRow(SQLModel, table=True):
    """One topic-based Subscription (Subscriptions R5 Backport IG v1.1.0, R4 profile
    backport-subscription), as its client created it: `resource` is the Subscription as this
    server serves it (id, meta and status set here), the other columns are what searches,
    `$status` and the ownership checks read without parsing it."""

    __tablename__ = "subscription"
    __table_args__ = (Index("ix_subscription_owner", "owner", "id"),)
    id: str = Field(sa_column=Column(ID_TEXT, primary_key=True))
    #: the client that created it: only it may read, search, delete it ("" in open mode)
    owner: str = Field(sa_column=Column(Text, nullable=False))
    #: Subscription.status (R4 subscription-status: requested, active, error, off)
    status: str = Field(max_length=16)
    #: Subscription.criteria: the topic's canonical URL
    topic: str = Field(sa_column=Column(Text, nullable=False))
    #: Subscription.channel.endpoint (the `url` search parameter)
    endpoint: str = Field(sa_column=Column(Text, nullable=False))
    #: the Subscription resource as served (JSON)
    resource: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    created: int = Field(sa_column=Column(BigInteger, nullable=False))
    #: how many events were recorded for it (SubscriptionStatus eventsSinceSubscriptionStart)
    events: int = Field(default=0, sa_column=Column(BigInteger, nullable=False))
    #: why its status is `error` (no patient data)
    error: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    #: backport-payload-content: empty, id-only or full-resource
    content: str = Field(max_length=16)
    #: its filters as JSON [[name, value], ...] (app/fhir/topics.py), ANDed
    filters: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    #: the last event number its endpoint acknowledged (2xx); events after it are still to send
    delivered: int = Field(default=0, sa_column=Column(BigInteger, nullable=False))
    #: the node sending its notifications, and until when that claim holds (epoch micros)
    node: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    lease_until: int | None = Field(default=None, sa_column=Column(BigInteger, nullable=True))
    #: failed sends in a row, and when to try again (epoch micros; backoff)
    failures: int = Field(default=0, sa_column=Column(BigInteger, nullable=False))
    next_try: int = Field(default=0, sa_column=Column(BigInteger, nullable=False))
    #: when its endpoint last got a notification (heartbeats are counted from it)
    last_sent: int = Field(default=0, sa_column=Column(BigInteger, nullable=False))
    #: backport-heartbeat-period in seconds, None: no heartbeats
    heartbeat: int | None = Field(default=None, sa_column=Column(BigInteger, nullable=True))
    #: 1 when its creator's scopes let it read every study it is notified of (full-resource is
    #: then sent as asked), else 0 (id-only instead)
    may_read: int = Field(default=0, sa_column=Column(BigInteger, nullable=False))


class StudyChange(SQLModel, table=True):
    """A topic event of a study (app/store/study_events.py), written in the transaction that
    stores the change and deleted once handed to the subscriptions it matches."""

    __tablename__ = "study_change"
    id: int | None = Field(default=None, sa_column=Column(SERIAL, primary_key=True, autoincrement=True))
    recorded: int = Field(sa_column=Column(BigInteger, nullable=False))
    #: available, changed or removed
    kind: str = Field(max_length=16)
    study: str = Field(sa_column=Column(ID_TEXT, nullable=False))
    #: what the filters match on, JSON {name: [values]}
    keys: bytes = Field(sa_column=Column(LargeBinary, nullable=False))


class SubscriptionEvent(SQLModel, table=True):
    """One event of one subscription, numbered from 1 without gaps (SubscriptionStatus
    eventsSinceSubscriptionStart, Subscriptions R5 Backport IG): kept for `$events` and for
    delivery after a restart until the subscription is deleted."""

    __tablename__ = "subscription_event"
    subscription: str = Field(sa_column=Column(ID_TEXT, primary_key=True))
    number: int = Field(sa_column=Column(BigInteger, primary_key=True, autoincrement=False))
    recorded: int = Field(sa_column=Column(BigInteger, nullable=False))
    kind: str = Field(max_length=16)
    study: str = Field(sa_column=Column(ID_TEXT, nullable=False))
