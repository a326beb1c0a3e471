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

from sqlalchemy import bindparam, inspect, null, select
from sqlalchemy.engine import Connection, Row
from sqlmodel import col

from app.store import tables as t

_COPIES = select(
    col(t.StudyCopy.study_uid), col(t.StudyCopy.source), col(t.StudyCopy.content), col(t.StudyCopy.archive_key)
).where(col(t.StudyCopy.study_uid).in_(bindparam("uids", expanding=True)))
_CONTRIBUTIONS = select(
    col(t.PatientContribution.study_uid), col(t.PatientContribution.patient_id), col(t.PatientContribution.content)
).where(
    col(t.PatientContribution.source) == bindparam("key_source"),
    col(t.PatientContribution.study_uid).in_(bindparam("uids", expanding=True)),
)
#: content_hash NULL marks a tombstone's version (as Store._put reads it)
_STUDIES = (
    select(col(t.Resource.id), col(t.Resource.version), col(t.Resource.content_hash))
    .where(col(t.Resource.rtype) == "ImagingStudy", col(t.Resource.id).in_(bindparam("uids", expanding=True)))
    .union_all(
        select(
            col(t.Tombstone.id), col(t.Tombstone.version), null().cast(inspect(t.Resource).columns["content_hash"].type)
        ).where(col(t.Tombstone.rtype) == "ImagingStudy", col(t.Tombstone.id).in_(bindparam("uids", expanding=True)))
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
    for copy in conn.execute(_COPIES, params):
        states[copy.study_uid].copies[copy.source] = copy
    for said in conn.execute(_CONTRIBUTIONS, params):
        states[said.study_uid].contribution = said
    for version in conn.execute(_STUDIES, params):
        states[version.id].resource.append(version)
    return states
