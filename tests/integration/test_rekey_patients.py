"""Re-keying Patient ids (issue: unkeyed ids are reversed by trying every Patient ID), on SQLite
and PostgreSQL: a store full of data made with the old, unkeyed ids is refused until `imaging-facade
db upgrade`, which moves every id and every reference to it, row for row, so that history, links,
compartments, quarantine and the audit trail read as before; a re-key killed half-way and run
again ends with the store a re-key in one go makes.

The old release is stood in for by the real code with its digest made unkeyed (the old one,
`legacy_patient_id`): the one thing that release did differently."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner
from sqlalchemy import text

from app.cli import main as cli
from app.identity import keys
from app.identity.keys import legacy_patient_id, legacy_patient_id_for_study, patient_id, patient_id_for_study
from app.store import patient_ids
from app.store.backup import backup, restore
from app.store.repository import Store
from app.store.resources import content_hash
from app.store.schema import SchemaMismatch
from app.sync import sync_source
from app.web import create_app
from tests.support.full_store import KEPT, connected, fill, folder_source_config, snapshot
from tests.support.stores import postgres_database

SECRET = "a-deployment-secret-for-the-rekey-tests"


def _unkeyed(key: bytes, text_: str) -> str:
    return hashlib.sha256(text_.encode("utf-8")).hexdigest()[:40]


def make_old_store(monkeypatch, write_config, tmp_path: Path, url: str, name: str = "config.yaml"):
    """A store full of data whose Patient ids are the old unkeyed digests, as the release before
    the key left it (no scheme, key or check setting)."""
    data = folder_source_config(url, tmp_path / "archive")
    data["identity"] = {"secret": "${PATIENT_ID_SECRET}"}
    monkeypatch.setenv("PATIENT_ID_SECRET", SECRET)
    config = write_config(data, name)
    with monkeypatch.context() as m:
        m.setattr(keys, "_digest", _unkeyed)
        fill(config, tmp_path / "archive")
    old = legacy_patient_id("urn:oid:1.2.1", "1001")
    with connected(url, write=True) as conn:
        conn.execute(  # a Patient/$export naming the patient (the export API makes these)
            text(
                "INSERT INTO export_job (id, owner, status, request, params, created) "
                "VALUES ('job-1', 'someone', 'complete', :request, :params, 1)"
            ),
            {
                "request": f"http://testserver/fhir/Patient/$export?patient=Patient/{old}",
                "params": orjson.dumps({"patient": [f"Patient/{old}"]}),
            },
        )
        conn.execute(  # a Subscription to the patient's studies (the Subscription API makes these)
            text(
                "INSERT INTO subscription (id, owner, status, topic, endpoint, resource, created, events, content, "
                "filters, delivered, failures, next_try, last_sent, may_read) VALUES ('sub-1', 'someone', 'off', "
                "'t', 'https://ehr.example.org', :resource, 1, 0, 'id-only', :filters, 0, 0, 0, 0, 0)"
            ),
            {
                "resource": orjson.dumps({"valueString": f"ImagingStudy?patient=Patient/{old}"}),
                "filters": orjson.dumps([["patient", old]]),
            },
        )
        conn.execute(
            text("DELETE FROM setting WHERE key IN (:a, :b, :c)"),
            {"a": patient_ids.SCHEME_SETTING, "b": patient_ids.KEY_SETTING, "c": patient_ids.CHECK_SETTING},
        )
    return config


SPOOLED = "spooled-before-the-upgrade"


def leave_in_spool(spool: Path, url: str, old_patient: str) -> None:
    """An AuditEvent naming a Patient by its old id, left in the audit spool by a server process
    that ended without storing it (it is stored by the next process, here the upgrade)."""
    record = {
        "status": 200,
        "subtype": "read",
        "action": "R",
        "who": None,
        "client": None,
        "open": True,
        "address": "127.0.0.1",
        "query": f"_id={old_patient}",
        "path": f"/fhir/Patient/{old_patient}",
        "read": f"Patient/{old_patient}",
        "patients": [old_patient],
        "server": "http://testserver/fhir",
    }
    code = (
        "import os, sys, orjson\n"
        "from app.store.audit_spool import AuditSpool\n"
        "spool = AuditSpool(sys.argv[1], sys.argv[2], lambda events, may_exist: None)\n"
        "spool.append(sys.argv[3], 1700000000000000, '0', sys.argv[4].encode(), [['patient', sys.argv[5]]])\n"
        "os._exit(0)\n"
    )
    subprocess.run(
        [sys.executable, "-c", code, str(spool), url, SPOOLED, orjson.dumps(record).decode(), old_patient], check=True
    )


def old_to_new(before: dict, key: bytes) -> dict[str, str]:
    """Each old Patient id and the id the key gives its identifier, found independently of the
    re-key: from the identifiers of the Patient's versions, or the study of a Patient of its own."""
    mapping = {}
    for rtype, rid, _version, _updated, content in before["resource_version"]:
        if rtype != "Patient" or not content or rid in mapping:
            continue
        for ident in orjson.loads(content).get("identifier", []):
            if legacy_patient_id(ident["system"], ident["value"]) == rid:
                mapping[rid] = patient_id(ident["system"], ident["value"], key)
    for _source, uid, pid, _rank, _content in before["patient_contribution"]:
        if pid == legacy_patient_id_for_study(uid):
            mapping[pid] = patient_id_for_study(uid, key)
    return mapping


def substituted(value, mapping: dict[str, str]):
    if isinstance(value, bytes | str):
        raw = value.encode() if isinstance(value, str) else value
        for old, new in mapping.items():
            raw = raw.replace(old.encode(), new.encode())
        return raw.decode() if isinstance(value, str) else raw
    return value


def comparable(rows: dict, table: str, mapping: dict[str, str] | None = None) -> list:
    """A table's rows (old ids replaced when `mapping`), without what a re-key computes afresh:
    resource.content_hash (checked on its own), and the order of a link's two ends."""
    out = []
    for row in rows[table]:
        row = tuple(substituted(v, mapping) if mapping else v for v in row)
        if table == "resource":
            row = row[:4] + row[5:]
        if table == "patient_link":
            row = (min(row[0], row[1]), max(row[0], row[1]), *row[2:])
        if table == "audit_index" or table in ("idx_token", "idx_string", "idx_date", "idx_reference"):
            row = row[1:]  # surrogate keys
        out.append(tuple(bytes(v) if isinstance(v, memoryview) else v for v in row))
    return sorted(out, key=repr)


def test_an_old_store_is_refused_then_rekeyed_with_every_row_intact(monkeypatch, write_config, tmp_path, empty_url):
    config = make_old_store(monkeypatch, write_config, tmp_path, empty_url)
    before = snapshot(empty_url)
    assert all(before[table] for table in KEPT if table != "setting")
    with pytest.raises(SchemaMismatch) as refused:
        Store.from_config(config)
    assert "Patient ids" in str(refused.value)
    result = CliRunner().invoke(cli, ["sync", "--config", str(config.path)])
    assert result.exit_code != 0 and "imaging-facade db upgrade" in result.output

    old_same = legacy_patient_id("urn:oid:1.2.1", "1001")
    leave_in_spool(config.security.audit_spool, empty_url, old_same)
    result = CliRunner().invoke(cli, ["db", "upgrade", "--config", str(config.path), "--batch", "2"])
    assert result.exit_code == 0, result.output
    assert SECRET not in result.output
    assert "stored 1 audit events left in the audit spool" in result.output
    after = snapshot(empty_url)
    spooled = [row for row in after["audit_event"] if row[0] == SPOOLED]
    assert len(spooled) == 1 and old_same.encode() not in bytes(spooled[0][3])
    assert ("patient", patient_id("urn:oid:1.2.1", "1001", SECRET.encode())) in [
        (param, value) for _pk, event, param, value in after["audit_index"] if event == SPOOLED
    ]
    after["audit_event"] = [row for row in after["audit_event"] if row[0] != SPOOLED]
    after["audit_index"] = [row for row in after["audit_index"] if row[1] != SPOOLED]

    mapping = old_to_new(before, SECRET.encode())
    patients = {r[1] for r in before["resource_version"] if r[0] == "Patient"}
    assert patients and set(mapping) == patients  # every Patient found its identifier
    dump = repr(after)
    for old, new in mapping.items():
        assert old not in dump  # no old id is left anywhere, not in the audit trail either
        assert new != old
    for table in sorted(set(before) - {"setting"}):
        assert comparable(after, table) == comparable(before, table, mapping), table
    for rtype, rid, _version, _updated, digest, content in after["resource"]:
        assert digest == content_hash(orjson.loads(content)), (rtype, rid)
    assert "patient_rekey" not in after  # the map from old ids is gone

    store = Store.from_config(config)
    try:
        client = create_app(config, store).test_client()
        same = patient_id("urn:oid:1.2.1", "1001", SECRET.encode())
        other = patient_id("urn:oid:1.2.2", "A77", SECRET.encode())
        found = client.get("/fhir/Patient?identifier=urn:oid:1.2.1|1001").get_json()
        assert [e["resource"]["id"] for e in found["entry"]] == [same]
        linked = client.get(f"/fhir/Patient/{same}").get_json()
        assert linked["link"] == [{"other": {"reference": f"Patient/{other}"}, "type": "seealso"}]
        studies = client.get(f"/fhir/ImagingStudy?patient=Patient/{same}").get_json()
        # the patient's study, and that of the record linked to it (a compartment of linked records)
        assert {e["resource"]["subject"]["reference"] for e in studies["entry"]} == {
            f"Patient/{same}",
            f"Patient/{other}",
        }
        assert client.get(f"/fhir/Patient/{legacy_patient_id('urn:oid:1.2.1', '1001')}").status_code == 404
        events = client.get(f"/fhir/AuditEvent?patient=Patient/{same}").get_json()
        assert events["total"] >= 1
        # a sync of the same archive agrees with the re-keyed ids: nothing changes
        versions = len(after["resource_version"])
        sync_source(store, config.sources[0])
        assert len(snapshot(empty_url)["resource_version"]) == versions
    finally:
        store.close()


#: a re-key, one row a batch, that kills itself (SIGKILL, as `kill -9` would) once the step named
#: on its command line has committed that many batches
_KILLED_REKEY = """
import os, signal, sys
from app.config import load_config
from app.identity import rekey
from app.store.engine import make_engine
from app.store.patient_ids import resolve_key

config = load_config(sys.argv[1])
engine = make_engine(config.store)

def told(step, done):
    if step == sys.argv[2] and done >= int(sys.argv[3]):
        os.kill(os.getpid(), signal.SIGKILL)

rekey.rekey(engine, resolve_key(engine, config.identity.secret), config.identity, 1, told)
"""


def _kill_midway(config_path: Path, step: str, batches: int) -> None:
    killed = subprocess.run(
        [sys.executable, "-c", _KILLED_REKEY, str(config_path), step, str(batches)],
        env={**os.environ, "PATIENT_ID_SECRET": SECRET},
        capture_output=True,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr.decode()


def test_a_rekey_killed_midway_ends_as_one_run_in_one_go(monkeypatch, write_config, tmp_path, empty_url):
    config = make_old_store(monkeypatch, write_config, tmp_path, empty_url)
    copy_file = tmp_path / "old-store.backup"
    backup(empty_url, copy_file)
    with postgres_database() if empty_url.startswith("postgresql") else _sqlite(tmp_path / "twin.db") as twin_url:
        restore(copy_file, twin_url)
        twin = write_config({**folder_source_config(twin_url, tmp_path / "archive"),
                             "identity": {"secret": "${PATIENT_ID_SECRET}"}},
                            "twin.yaml", environ={**os.environ, "PATIENT_ID_SECRET": SECRET})  # fmt: skip
        monkeypatch.setenv("PATIENT_ID_SECRET", SECRET)
        assert CliRunner().invoke(cli, ["db", "upgrade", "--config", str(twin.path)]).exit_code == 0
        in_one_go = snapshot(twin_url)

    for step, batches in (("patients", 2), ("resources", 3), ("versions", 1)):
        _kill_midway(config.path, step, batches)
        with connected(empty_url) as conn:
            state = orjson.loads(conn.execute(text("SELECT value FROM setting WHERE key = 'patient-rekey'")).scalar())
        assert state["step"] == step and state["done"] == batches  # killed there, the batches before kept
    with pytest.raises(SchemaMismatch):  # half re-keyed: still refused
        Store.from_config(config)
    result = CliRunner().invoke(cli, ["db", "upgrade", "--config", str(config.path), "--batch", "3"])
    assert result.exit_code == 0, result.output
    resumed = snapshot(empty_url)
    for table in sorted(set(resumed) | set(in_one_go)):
        assert comparable(resumed, table) == comparable(in_one_go, table), table


class _sqlite:
    def __init__(self, path: Path):
        self.url = f"sqlite:///{path}"

    def __enter__(self) -> str:
        return self.url

    def __exit__(self, *exc) -> None:
        return None
