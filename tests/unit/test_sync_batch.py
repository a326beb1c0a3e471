"""A sync stores its studies a batch at a time (app.sync.batch.StudyBatch) and loses nothing by it.

A run that is stopped, or whose archive fails, stores what it mapped; a study the store
refuses keeps the studies before it, as one transaction per study did; identity matching
that fails keeps its study and undoes only its own writes; a change feed's cursor never
passes a study that is not stored yet.
"""

from __future__ import annotations

import orjson
import pytest
from sqlalchemy import event, select

import app.sync.batch
from app.identity.features import features
from app.identity.reconcile import digest
from app.sources.base import SeriesRecord, StudyFailure, StudyRecord
from app.sources.errors import SourceError
from app.sources.orthanc_changes import ChangeEvent, ChangesPage
from app.store import links
from app.store import tables as t
from app.store.repository import Store
from app.sync.batch import BATCH_SIZE
from app.sync.run import sync_changes, sync_source

ROOT = "1.2.826.0.1.3680043.8.498.77"
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"


def el(vr: str, *values) -> dict:
    return {"vr": vr, "Value": list(values)}


def uid(n: int) -> str:
    return f"{ROOT}.{n}"


def record(n: int) -> StudyRecord:
    attrs = {
        "0020000D": el("UI", uid(n)),
        "00100010": el("PN", {"Alphabetic": f"Doe^Jane{n}"}),
        "00100020": el("LO", f"MRN-{n}"),
        "00100040": el("CS", "F"),
        "00080020": el("DA", "20240101"),
    }
    instance = {"00080016": el("UI", CT_IMAGE), "00080018": el("UI", f"{uid(n)}.1.1")}
    series = SeriesRecord(attrs={"0020000E": el("UI", f"{uid(n)}.1"), "00080060": el("CS", "CT")}, instances=[instance])
    return StudyRecord(uid=uid(n), attrs=attrs, series=[series])


class ListSource:
    """Studies as a source yields them; the archive goes down before item `down_at`."""

    def __init__(self, items, down_at: int | None = None):
        self.items = items
        self.down_at = down_at
        self.name = "pacs"
        self.stats: dict = {}
        self.listing_complete = True
        self.answers_queries = True
        self.change_feed = None

    def total(self, match=None) -> int:
        return len(self.items)

    def iter_studies(self, match=None):
        for n, item in enumerate(self.items):
            if n == self.down_at:
                raise SourceError("pacs", "http://pacs", "connection refused")
            if match is None or match.get("StudyInstanceUID") == item.uid:
                yield item


class Feed:
    """An Orthanc change feed of fixed pages."""

    def __init__(self, pages: list[ChangesPage]):
        self._pages = pages

    def pages(self, since: int):
        yield from (page for page in self._pages if page.last > since)

    def deleted_studies(self, known):
        return []


@pytest.fixture
def setup(store_url, write_config):
    config = write_config(
        {
            "store": store_url,
            "security": {"open": True},
            "sources": [{"name": "pacs", "type": "dicomweb", "url": "http://127.0.0.1:9/dicom-web", "timezone": "UTC"}],
        }
    )
    store = Store.from_config(config)
    yield store, config.sources[0]
    store.close()


def stored(store: Store) -> set[str]:
    with store.engine.connect() as conn:
        return set(conn.execute(select(t.Resource.id).where(t.Resource.rtype == "ImagingStudy")).scalars())


def test_a_stop_mid_batch_stores_what_was_mapped(setup):
    store, src = setup
    assert BATCH_SIZE > 3
    seen = []

    def progress(summary, _total):
        seen.append((summary.done, len(stored(store))))

    summary = sync_source(
        store, src, progress=progress, source=ListSource([record(n) for n in range(10)]), stop=lambda: len(seen) == 3
    )
    assert seen == [(1, 0), (2, 0), (3, 0)]  # counted as done while waiting for their batch
    assert stored(store) == {uid(0), uid(1), uid(2)}
    assert (summary.new, summary.done, summary.pending) == (3, 3, 0)
    assert "pending" not in summary.as_dict()


def test_an_archive_failing_mid_batch_keeps_what_was_mapped(setup):
    store, src = setup
    summary = sync_source(store, src, source=ListSource([record(n) for n in range(10)], down_at=4))
    assert summary.error and summary.new == 4
    assert stored(store) == {uid(n) for n in range(4)}
    assert store.sync_state.get("pacs").last_full is None  # the run did not complete


def test_a_study_the_store_refuses_keeps_the_studies_before_it(setup, monkeypatch):
    store, src = setup
    put_study = store.studies.put

    def refuse_the_third(study, *args, **kwargs):
        if study["id"] == uid(2):
            raise RuntimeError("refused")
        return put_study(study, *args, **kwargs)

    monkeypatch.setattr(store.studies, "put", refuse_the_third)
    with pytest.raises(RuntimeError):
        sync_source(store, src, source=ListSource([record(n) for n in range(6)]))
    assert stored(store) == {uid(0), uid(1)}


def test_failed_identity_matching_keeps_its_study_and_undoes_only_its_own_writes(setup, monkeypatch):
    store, src = setup
    reconcile_pending = app.sync.batch.reconcile_pending
    failing = "MRN-1"

    def fail_for_one(conn, store_, work, rules):
        changed = reconcile_pending(conn, store_, work, rules)
        patient = links.stored_patient(conn, work.patient_id)
        if patient["identifier"][0]["value"] == failing:  # a new version, then a failure
            store_.resources.put_in(conn, {**patient, "name": [{"family": "Changed"}]})
            raise RuntimeError("matching failed")
        return changed

    monkeypatch.setattr(app.sync.batch, "reconcile_pending", fail_for_one)
    summary = sync_source(store, src, source=ListSource([record(n) for n in range(3)]))
    assert summary.new == 3 and summary.error is None
    assert stored(store) == {uid(0), uid(1), uid(2)}
    with store.engine.connect() as conn:
        patients = {
            r.id: r
            for r in conn.execute(
                select(t.Resource.id, t.Resource.version, t.Resource.content).where(t.Resource.rtype == "Patient")
            )
        }
        filed = set(conn.execute(select(t.PatientMatch.patient_id)).scalars())
        versions = set(
            conn.execute(
                select(t.ResourceVersion.id, t.ResourceVersion.version).where(t.ResourceVersion.rtype == "Patient")
            )
        )
        names = {
            (r.rid, r.norm)
            for r in conn.execute(
                select(t.StringIndex.rid, t.StringIndex.norm).where(
                    t.StringIndex.rtype == "Patient", t.StringIndex.param == "family"
                )
            )
        }
    assert len(patients) == 3 and all(p.version == 1 for p in patients.values())
    assert versions == {(pid, 1) for pid in patients}  # the failed matching's version 2 is undone
    failed = next(pid for pid, p in patients.items() if failing.encode() in p.content)
    assert filed == set(patients) - {failed}  # its matching's writes are undone, the others' kept
    assert {n for rid, n in names if rid == failed} == {"doe"}  # its index rows are version 1's


def test_a_quarantined_study_between_stored_ones(setup):
    store, src = setup
    items = [record(0), StudyFailure(uid(1), "unreadable header"), record(2)]
    summary = sync_source(store, src, source=ListSource(items))
    assert (summary.new, summary.failed) == (2, 1)
    assert [q.study_uid for q in store.quarantine.entries("pacs")] == [uid(1)]
    again = sync_source(store, src, source=ListSource([record(n) for n in range(3)]))
    assert (again.new, again.unchanged, again.failed, again.released) == (1, 2, 0, 1)
    assert store.quarantine.entries("pacs") == []  # stored fine now: released, and counted


def test_a_change_feed_cursor_never_passes_a_study_not_stored(setup, monkeypatch):
    store, src = setup
    source = ListSource([record(n) for n in range(6)])
    source.change_feed = Feed(
        [
            ChangesPage(events=[ChangeEvent("study", f"o{n}", uid(n)) for n in range(3)], last=10, done=False),
            ChangesPage(events=[ChangeEvent("study", f"o{n}", uid(n)) for n in range(3, 6)], last=20),
        ]
    )
    cursors = []
    update = store.sync_state.update

    def note_cursor(name, **values):
        if "cursor" in values:
            cursors.append((values["cursor"]["seq"], stored(store)))
        update(name, **values)

    monkeypatch.setattr(store.sync_state, "update", note_cursor)
    events = []
    summary = sync_changes(store, src, source, {"seq": 0}, stop=lambda: events.append(1) or len(events) == 5)
    assert cursors[0] == (10, {uid(0), uid(1), uid(2)})
    assert all(seq == 10 for seq, _ in cursors)  # stopped in the second page: its cursor did not move
    assert stored(store) == {uid(n) for n in range(5)}  # but the study in hand, and the one before, are stored
    assert summary.new == 5


def test_a_study_deleted_while_waiting_in_its_batch_is_found_and_removed(setup):
    store, src = setup
    source = ListSource([record(0), record(1)])
    source.change_feed = Feed(
        [
            ChangesPage(
                events=[
                    ChangeEvent("study", "o0", uid(0)),
                    ChangeEvent("study", "o1", uid(1)),
                    ChangeEvent("deleted", "o0", None),
                ],
                last=5,
            )
        ]
    )
    summary = sync_changes(store, src, source, {"seq": 0})
    assert (summary.new, summary.deleted) == (2, 1)
    assert stored(store) == {uid(1)}


def patient_study(n: int, mrn: str, name: str, birth: str, day: str) -> StudyRecord:
    """Study n of patient `mrn`, saying `name` and `birth` about it, dated `day`."""
    study = record(n)
    study.attrs.update(
        {
            "00100020": el("LO", mrn),
            "00100010": el("PN", {"Alphabetic": name}),
            "00100030": el("DA", birth),
            "00080020": el("DA", day),
        }
    )
    return study


def test_matching_is_skipped_only_for_a_patient_whose_filed_features_are_its_own(setup):
    """A study that leaves its patient's features as filed is not matched (no savepoint); one
    that changes them in the same batch is, and finds the record of the same person."""
    store, src = setup
    savepoints = []

    @event.listens_for(store.engine, "before_cursor_execute")
    def note(conn, cursor, statement, params, context, executemany):
        if statement.startswith("SAVEPOINT"):
            savepoints.append(statement)

    items = [
        patient_study(0, "MRN-A", "Doe^Jane", "19700101", "20240101"),
        patient_study(1, "MRN-A", "Doe^Jane", "19700101", "20240102"),  # the same features
        patient_study(2, "OTHER-B", "Roe^Anna", "19800505", "20240101"),
        patient_study(3, "MRN-A", "Roe^Anna", "19800505", "20240103"),
    ]  # newest: the patient changes
    summary = sync_source(store, src, source=ListSource(items))
    assert summary.new == 4 and summary.error is None
    assert len(savepoints) == 3  # the first study of each patient, and the one that changed A
    with store.engine.connect() as conn:
        patients = {
            r.id: orjson.loads(r.content)
            for r in conn.execute(select(t.Resource.id, t.Resource.content).where(t.Resource.rtype == "Patient"))
        }
        filed = {r.patient_id: r.digest for r in conn.execute(select(t.PatientMatch.patient_id, t.PatientMatch.digest))}
        pairs = {(r.a, r.b) for r in conn.execute(select(t.PatientLink.a, t.PatientLink.b))}
    assert filed == {pid: digest(features(p, src.identity)) for pid, p in patients.items()}
    assert pairs == {tuple(sorted(patients))}  # A, once it says Roe^Anna 1980-05-05, meets B


def test_a_study_read_twice_in_one_batch_is_stored_twice_in_order(setup, monkeypatch):
    """The second time sees what the first stored (a change feed reports a study again when
    it grows): a new version, not a second version 1, and the batch stays one transaction
    (not refused, then stored study by study)."""
    store, src = setup
    batches = []
    batch = store.batch
    monkeypatch.setattr(store, "batch", lambda: batches.append(1) or batch())
    grown = record(0)
    instance = {"00080016": el("UI", CT_IMAGE), "00080018": el("UI", f"{uid(0)}.2.1")}
    grown.series.append(
        SeriesRecord(attrs={"0020000E": el("UI", f"{uid(0)}.2"), "00080060": el("CS", "MR")}, instances=[instance])
    )
    summary = sync_source(store, src, source=ListSource([record(0), record(1), grown, record(1)]))
    assert (summary.new, summary.updated, summary.unchanged) == (2, 1, 1)
    assert len(batches) == 1
    with store.engine.connect() as conn:
        study = conn.execute(
            select(t.Resource.version, t.Resource.content).where(
                t.Resource.rtype == "ImagingStudy", t.Resource.id == uid(0)
            )
        ).one()
        versions = conn.execute(select(t.ResourceVersion.version).where(t.ResourceVersion.id == uid(0))).scalars().all()
    assert study.version == 2 and sorted(versions) == [1, 2]
    assert orjson.loads(study.content)["numberOfSeries"] == 2
