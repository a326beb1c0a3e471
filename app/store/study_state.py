"""What storing a study reads before it writes, read for many studies at once.

Storing one archive's copy of a study looks at the copies every archive holds, at what the
study said about its patient last time, and at the ImagingStudy as stored (or its tombstone).
Asked study by study that is four round trips each; asked for a batch's studies with `IN`,
three for the whole batch (Store.batch keeps them until each study is stored, see
Store.read_ahead).

The patient's side is not read ahead: studies of one batch share patients, and storing one
changes what the next one must see.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import bindparam, null, select
from sqlalchemy.engine import Connection, Row

from app.store import tables as t

_COPIES = select(t.StudyCopy.study_uid, t.StudyCopy.source, t.StudyCopy.content, t.StudyCopy.archive_key).where(
    t.StudyCopy.study_uid.in_(bindparam("uids", expanding=True))
)
_CONTRIBUTIONS = select(
    t.PatientContribution.study_uid, t.PatientContribution.patient_id, t.PatientContribution.content
).where(
    t.PatientContribution.source == bindparam("key_source"),
    t.PatientContribution.study_uid.in_(bindparam("uids", expanding=True)),
)
#: content_hash NULL marks a tombstone's version (as Store._put reads it)
_STUDIES = (
    select(t.Resource.id, t.Resource.version, t.Resource.content_hash)
    .where(t.Resource.rtype == "ImagingStudy", t.Resource.id.in_(bindparam("uids", expanding=True)))
    .union_all(
        select(t.Tombstone.id, t.Tombstone.version, null().cast(t.Resource.content_hash.type)).where(
            t.Tombstone.rtype == "ImagingStudy", t.Tombstone.id.in_(bindparam("uids", expanding=True))
        )
    )
)


@dataclass
class StudyState:
    """One study as the store held it before a source's copy of it is stored."""

    #: source -> its copy (content, archive_key), every archive holding the study
    copies: dict[str, Row] = field(default_factory=dict)
    #: what the study said about its patient (patient_id, content), from this source; None if new
    contribution: Row | None = None
    #: the ImagingStudy's version and content hash, and its tombstone's version (hash None)
    resource: list[Row] = field(default_factory=list)


def read_states(conn: Connection, source: str, uids: list[str]) -> dict[str, StudyState]:
    """The state of each study in `uids` before `source`'s copy of it is stored."""
    states = {uid: StudyState() for uid in uids}
    params = {"uids": list(states), "key_source": source}
    for row in conn.execute(_COPIES, params):
        states[row.study_uid].copies[row.source] = row
    for row in conn.execute(_CONTRIBUTIONS, params):
        states[row.study_uid].contribution = row
    for row in conn.execute(_STUDIES, params):
        states[row.id].resource.append(row)
    return states
