"""Patients: each is the merge of what its studies say about it, with a Patient.link to every
record of the same person; and the API's reads of a patient's compartment.

A Patient is rebuilt from its contributions (one per study, `patient_contribution`) whenever
one changes, so the result does not depend on the order studies were synced in, and
re-syncing the same archive changes nothing. Which links it carries comes from the link
decisions (app/store/links.py) that identity matching and people make.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence

import orjson
from sqlalchemy import bindparam, delete, insert, select, update
from sqlalchemy.engine import Connection, Row
from sqlmodel import col

from app.store import links
from app.store import tables as t
from app.store.reader import Reader
from app.store.resources import NEW, Resources, read_current

#: Patient.link type for another record of the same person in another system. R4: "seealso: the
#: patient resource containing this link is in use and valid, but points to another patient
#: resource that is known to contain data about the same person ... both should be regarded as
#: equally valid". `replaced-by`/`replaces` say one record is obsolete and `refer` that one is
#: not authoritative; two archives' records are neither, so every link here is `seealso`.
LINK_TYPE = "seealso"

_THE_CONTRIBUTION = (
    col(t.PatientContribution.source) == bindparam("key_source"),
    col(t.PatientContribution.study_uid) == bindparam("key_uid"),
)
_UPDATE_CONTRIBUTION = update(t.PatientContribution).where(*_THE_CONTRIBUTION)
_CONTRIBUTIONS_TO = select(col(t.PatientContribution.rank), col(t.PatientContribution.content)).where(
    col(t.PatientContribution.patient_id) == bindparam("key_patient")
)


def with_links(patient: dict, linked: list[str]) -> dict:
    """The Patient with a Patient.link (`seealso`) to each linked Patient id, or none."""
    patient = {k: v for k, v in patient.items() if k != "link"}
    if linked:
        patient["link"] = [{"other": {"reference": f"Patient/{other}"}, "type": LINK_TYPE} for other in linked]
    return patient


def merge_patient(contributions: list[dict]) -> dict:
    """One Patient from what its studies say, the most recent study first.

    Demographics come from the most recent study; identifiers from all studies are united,
    so an Other Patient ID seen once stays searchable.
    """
    merged = dict(contributions[0])
    identifiers, seen = [], set()
    for body in contributions:
        for ident in body.get("identifier", []):
            key = (ident.get("system"), ident.get("value"))
            if key not in seen:
                seen.add(key)
                identifiers.append(ident)
    if identifiers:
        merged["identifier"] = identifiers
    return merged


class Patients:
    """Writes of Patients: their contributions, and the merge that is served."""

    def __init__(self, resources: Resources):
        self.resources = resources

    def contribute(
        self, conn: Connection, source: str, uid: str, patient: dict, rank: str, previous: Row | None
    ) -> None:
        """Keep what a study says about its patient (`previous`: what it said, or None) and
        rebuild the Patients that changes."""
        contribution = orjson.dumps(patient, option=orjson.OPT_SORT_KEYS)
        key = {"key_source": source, "key_uid": uid}
        if previous is None:
            conn.execute(
                insert(t.PatientContribution),
                dict(source=source, study_uid=uid, patient_id=patient["id"], rank=rank, content=contribution),
            )
        elif previous.patient_id != patient["id"] or previous.content != contribution:
            conn.execute(_UPDATE_CONTRIBUTION, dict(key, patient_id=patient["id"], rank=rank, content=contribution))
        touched = {patient["id"]}
        if previous is not None and previous.patient_id != patient["id"]:
            touched.add(previous.patient_id)
        if previous is None or previous.content != contribution or len(touched) > 1:
            for patient_id in sorted(touched):
                self._refresh(conn, patient_id)

    @staticmethod
    def withdraw(conn: Connection, source: str, uid: str) -> str | None:
        """The archive no longer holds the study: what it said about its patient goes. Returns
        that patient, whom the caller refreshes once the study is settled, or None."""
        where = (col(t.PatientContribution.source) == source, col(t.PatientContribution.study_uid) == uid)
        previous = conn.execute(select(col(t.PatientContribution.patient_id)).where(*where)).first()
        conn.execute(delete(t.PatientContribution).where(*where))
        return previous.patient_id if previous is not None else None

    def refresh(self, conn: Connection, patient_ids: Iterable[str]) -> None:
        """Store new versions of Patients whose links changed (in the caller's transaction)."""
        for patient_id in sorted(set(patient_ids)):
            self._refresh(conn, patient_id)

    def _refresh(self, conn: Connection, patient_id: str) -> None:
        rows = conn.execute(_CONTRIBUTIONS_TO, {"key_patient": patient_id}).all()
        if not rows:
            partners = links.linked_ids(conn, patient_id)
            self.resources.delete_in(conn, "Patient", patient_id)
            links.forget_patient(conn, patient_id)
            for partner in partners:  # their Patient.link to this one goes
                self._refresh(conn, partner)
            return
        merged = merge_patient([orjson.loads(r.content) for r in sorted(rows, key=lambda r: r.rank, reverse=True)])
        partners = self.resources.existing(conn, "Patient", links.linked_ids(conn, patient_id))
        if self.resources.put_in(conn, with_links(merged, partners)) == NEW:
            for partner in partners:  # back after a deletion: a person's link to it holds again, both ways
                self._refresh(conn, partner)


# ---- the API's reads


def _patient_id(reference: str, base_url: str) -> str | None:
    """The id of a `Patient/<id>` reference (relative, or absolute on this server), else None."""
    if base_url and reference.startswith(base_url + "/"):
        reference = reference[len(base_url) + 1 :]
    parts = reference.split("/")
    if len(parts) == 2 and parts[0] == "Patient" and parts[1]:
        return parts[1]
    return None


def linked_patients(reader: Reader, patient: str, base_url: str = "") -> tuple[str, ...]:
    """`patient` and the Patients linked to it one hop either way (its Patient.link, and the
    records whose links point at it), sorted: the compartment of a token for `patient`."""
    ids = {patient}
    found = read_current(reader, "Patient", patient)
    if found is not None:
        body = orjson.loads(found[2])
        for link in body.get("link", []) if isinstance(body.get("link"), list) else []:
            reference = (link.get("other") or {}).get("reference") if isinstance(link, dict) else None
            if isinstance(reference, str):
                other = _patient_id(reference, base_url)
                if other:
                    ids.add(other)
    rows = reader.all(
        "SELECT rid FROM idx_reference WHERE rtype = ? AND param = ? AND target_id = ? AND target_type = ?",
        ["Patient", "link", patient, "Patient"],
    )
    ids.update(r[0] for r in rows)
    return tuple(sorted(ids))


def links_within(content: bytes, patients: Collection[str], base_url: str = "") -> bytes:
    """A stored Patient's JSON with only the Patient.link entries that name one of `patients`.

    A patient-context token sees its patient and the records linked one hop either way; the
    links of those records may name records further away, and would tell that they exist and
    belong to the same person. A Patient without links (most) is returned as it is, unparsed."""
    if b'"link"' not in content:
        return content
    body = orjson.loads(content)
    links = body.get("link")
    if not isinstance(links, list):
        return content
    kept = [link for link in links if _names_one_of(link, patients, base_url)]
    if len(kept) == len(links):
        return content
    if kept:
        body["link"] = kept
    else:
        del body["link"]
    return orjson.dumps(body)


def _names_one_of(link: object, patients: Collection[str], base_url: str) -> bool:
    other = link.get("other") if isinstance(link, dict) else None
    reference = other.get("reference") if isinstance(other, dict) else None
    return isinstance(reference, str) and _patient_id(reference, base_url) in patients


def identifiers_of(reader: Reader, patients: Sequence[str]) -> set[tuple[str, str]]:
    """(system, value) of every identifier of the stored Patients `patients`."""
    marks = ", ".join("?" * len(patients))
    sql = f"SELECT system, code FROM idx_token WHERE rtype = ? AND param = ? AND rid IN ({marks})"
    rows = reader.all(sql, ["Patient", "identifier", *patients])
    return {(r[0], r[1]) for r in rows if r[0]}


def all_patient_ids(conn: Connection) -> list[str]:
    """The id of every stored Patient, in order (a rematch walks them all)."""
    query = select(col(t.Resource.id)).where(col(t.Resource.rtype) == "Patient").order_by(col(t.Resource.id))
    return list(conn.execute(query).scalars())
