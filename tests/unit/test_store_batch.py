"""store.studies.put_many (the bulk load of the benchmarks) stores what store.studies.put one by one
stores."""

from __future__ import annotations

import orjson
from sqlalchemy import select, text
from sqlmodel import SQLModel

from app.store import tables as t
from app.store.repository import Store

DCM = "http://dicom.nema.org/resources/ontology/DCM"


def _patient(pid: str, family: str, birth: str) -> dict:
    return {
        "resourceType": "Patient",
        "id": pid,
        "identifier": [{"system": "urn:oid:1.2.3", "value": pid}],
        "name": [{"family": family, "given": ["Zoë"]}],
        "gender": "female",
        "birthDate": birth,
    }


def _study(uid: str, pid: str, started: str, description: str = "CT chest") -> dict:
    return {
        "resourceType": "ImagingStudy",
        "id": uid,
        "status": "available",
        "identifier": [{"system": "urn:dicom:uid", "value": f"urn:oid:{uid}"}],
        "modality": [{"system": DCM, "code": "CT"}],
        "subject": {"reference": f"Patient/{pid}"},
        "started": started,
        "description": description,
        "series": [
            {
                "uid": f"{uid}.1",
                "modality": {"system": DCM, "code": "CT"},
                "instance": [
                    {
                        "uid": f"{uid}.1.{i}",
                        "sopClass": {"system": "urn:ietf:rfc:3986", "code": "urn:oid:1.2.840.10008.5.1.4.1.1.2"},
                    }
                    for i in range(3)
                ],
            }
        ],
    }


# new studies, a patient whose newer study changes the demographics, a study moving to another
# patient (both refreshed), a patient losing its only study (deleted, within the same batch),
# an identical study again and a changed one
SEQUENCE = [
    (_study("1.2.1", "alice", "2020-01-01"), _patient("alice", "Müller", "1970-01-01")),
    (_study("1.2.2", "alice", "2021-01-01"), _patient("alice", "Meier", "1970-01-02")),
    (_study("1.2.3", "bob", "2019-05-05"), _patient("bob", "Rossi", "1980-01-01")),
    (_study("1.2.1", "carol", "2020-01-01"), _patient("carol", "Silva", "1990-01-01")),
    (_study("1.2.3", "carol", "2019-05-05"), _patient("carol", "Silva", "1990-01-01")),
    (_study("1.2.3", "carol", "2019-05-05"), _patient("carol", "Silva", "1990-01-01")),
    (_study("1.2.2", "alice", "2021-01-01", "CT chest and abdomen"), _patient("alice", "Meier", "1970-01-02")),
]


def _snapshot(store: Store) -> dict:
    def rows(table, *columns):
        with store.engine.connect() as conn:
            return sorted(tuple(r) for r in conn.execute(select(*[getattr(table, c) for c in columns])))

    def without_time(r) -> tuple:
        if not r.content:  # a deletion's version holds no resource
            return r.rtype, r.id, r.version, b""
        body = {**orjson.loads(r.content), "meta": {"versionId": str(r.version)}}
        return r.rtype, r.id, r.version, orjson.dumps(body)

    with store.engine.connect() as conn:
        resources = sorted(
            without_time(r)
            for r in conn.execute(select(t.Resource.rtype, t.Resource.id, t.Resource.version, t.Resource.content))
        )
        versions = sorted(
            without_time(r)
            for r in conn.execute(
                select(
                    t.ResourceVersion.rtype, t.ResourceVersion.id, t.ResourceVersion.version, t.ResourceVersion.content
                )
            )
        )
    return {
        "resources": resources,
        "versions": versions,
        "tokens": rows(t.TokenIndex, "rtype", "rid", "param", "system", "code"),
        "strings": rows(t.StringIndex, "rtype", "rid", "param", "norm", "value"),
        "dates": rows(t.DateIndex, "rtype", "rid", "param", "low", "high"),
        "refs": rows(t.ReferenceIndex, "rtype", "rid", "param", "target_type", "target_id"),
        "contributions": rows(t.PatientContribution, "source", "study_uid", "patient_id", "rank", "content"),
        "copies": rows(t.StudyCopy, "source", "study_uid", "content"),
        "tombstones": rows(t.Tombstone, "rtype", "id", "version"),
    }


def test_put_studies_stores_what_put_study_stores(store_url):
    store = Store(store_url)
    one_by_one = [store.studies.put(study, patient, "pacs") for study, patient in SEQUENCE]
    expected = _snapshot(store)
    SQLModel.metadata.drop_all(store.engine)
    with store.engine.begin() as conn:  # an empty database again, without a schema version either
        conn.execute(text("DROP TABLE alembic_version"))
    store.close()

    store = Store(store_url)
    try:
        batched = store.studies.put_many(SEQUENCE[:5], "pacs") + store.studies.put_many(SEQUENCE[5:], "pacs")
        assert batched == one_by_one == ["new", "new", "new", "updated", "updated", "unchanged", "updated"]
        assert _snapshot(store) == expected
        patients = {r[1]: r[2] for r in expected["resources"] if r[0] == "Patient"}
        assert patients == {"alice": 2, "carol": 1}  # alice changed once, bob gone
        assert not [r for r in expected["strings"] if r[1] == "bob"]
    finally:
        store.close()
