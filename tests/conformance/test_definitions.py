"""Our profiles are resolvable (FHIR R4 profiling.html#resolution): `StructureDefinition/{id}` and
`StructureDefinition?url=` answer the canonical URLs every served resource names in
`meta.profile`, and the same files are published as a FHIR NPM package that npm installs."""

from __future__ import annotations

import json
import shutil
import subprocess
import tarfile

import pytest
from pydicom.data import get_testdata_file

from app.fhir.definitions import STRUCTURE_DIR
from app.fhir.package import NAME, build
from app.mapping.claims import PROFILES
from app.sync import sync_source

FILES = {json.loads(p.read_text())["id"]: json.loads(p.read_text()) for p in STRUCTURE_DIR.glob("*.json")}


@pytest.fixture(scope="module")
def api(tmp_path_factory, _empty_sqlite_store):
    """An open server over the conformance data set, on SQLite (the definitions do not touch the store)."""
    import yaml

    from app.config import load_config
    from app.store.repository import Store
    from app.web import create_app
    from tests.support import search_data
    from tests.support.stores import new_sqlite_store, open_config_data

    folder = tmp_path_factory.mktemp("definitions")
    (folder / "archive").mkdir()
    shutil.copyfile(get_testdata_file("CT_small.dcm"), folder / "archive" / "CT_small.dcm")
    path = folder / "config.yaml"
    files = {"name": "files", "type": "folder", "path": str(folder / "archive")}
    path.write_text(yaml.safe_dump(open_config_data(new_sqlite_store(folder, _empty_sqlite_store), [files])))
    config = load_config(path)
    store = Store.from_config(config)
    search_data.load(store)
    sync_source(store, config.sources[0])  # mapped from a real file: it claims our profiles
    yield create_app(config, store).test_client()
    store.close()


def matches(api, query: str) -> list[str]:
    answer = api.get(f"/fhir/StructureDefinition?{query}")
    assert answer.status_code == 200, answer.get_json()
    body = answer.get_json()
    assert body["type"] == "searchset" and body["total"] == len(body.get("entry", []))
    return sorted(e["resource"]["id"] for e in body.get("entry", []))


def test_each_profile_reads_as_its_file(api):
    assert set(FILES) == {url.rsplit("/", 1)[1] for url in PROFILES.values()}
    for rid, definition in FILES.items():
        answer = api.get(f"/fhir/StructureDefinition/{rid}")
        assert answer.status_code == 200
        assert answer.content_type == "application/fhir+json"
        assert answer.get_json() == definition
    missing = api.get("/fhir/StructureDefinition/us-core-patient")
    assert missing.status_code == 404 and missing.get_json()["resourceType"] == "OperationOutcome"


def test_every_profile_a_served_resource_claims_resolves_by_its_canonical_url(api):
    claimed = set()
    for rtype in ("ImagingStudy", "Patient", "Endpoint"):
        for entry in api.get(f"/fhir/{rtype}?_count=50").get_json()["entry"]:
            claimed.update(entry["resource"].get("meta", {}).get("profile", []))
    assert claimed == set(PROFILES.values())
    for url in claimed:
        (found,) = matches(api, f"url={url}")
        assert FILES[found]["url"] == url
        assert matches(api, f"url={url}|0.1.0") == [found]  # url|version (search.html#versions)
        assert matches(api, f"url={url}|9.9.9") == []


def test_search_by_type_name_and_id_and_a_bad_parameter(api):
    assert matches(api, "type=ImagingStudy") == ["imaging-facade-imagingstudy"]
    assert matches(api, "name=imagingfacadepat") == ["imaging-facade-patient"]  # string: starts with, any case
    assert matches(api, "_id=imaging-facade-endpoint,imaging-facade-patient") == [
        "imaging-facade-endpoint",
        "imaging-facade-patient",
    ]
    assert len(matches(api, "")) == len(FILES)
    bad = api.get("/fhir/StructureDefinition?derivation=constraint")
    assert bad.status_code == 400 and "derivation" in bad.get_json()["issue"][0]["diagnostics"]


def test_the_capability_statement_lists_them(api):
    statement = api.get("/fhir/metadata").get_json()
    (entry,) = [r for r in statement["rest"][0]["resource"] if r["type"] == "StructureDefinition"]
    assert {i["code"] for i in entry["interaction"]} == {"read", "search-type"}
    assert {p["name"] for p in entry["searchParam"]} == {"url", "_id", "name", "type"}


def test_the_npm_package_holds_every_profile_with_its_index(tmp_path):
    tarball = build(tmp_path / "dist")
    with tarfile.open(tarball) as tar:
        names = set(tar.getnames())
        manifest = json.load(tar.extractfile("package/package.json"))
        index = json.load(tar.extractfile("package/.index.json"))
        packaged = {e["id"]: json.load(tar.extractfile(f"package/{e['filename']}")) for e in index["files"]}
    assert all(name.startswith("package/") for name in names)
    assert manifest["name"] == NAME and manifest["fhirVersions"] == ["4.0.1"]
    assert manifest["dependencies"] == {"hl7.fhir.r4.core": "4.0.1"}
    assert tarball.name == f"{NAME}-{manifest['version']}.tgz"
    assert index["index-version"] == 1
    assert packaged == FILES
    for entry in index["files"]:
        assert f"package/{entry['filename']}" in names
        assert (entry["url"], entry["version"], entry["type"]) == (
            FILES[entry["id"]]["url"],
            FILES[entry["id"]]["version"],
            FILES[entry["id"]]["type"],
        )


@pytest.mark.npm
@pytest.mark.slow
def test_npm_reads_the_package(tmp_path):
    """FHIR packages are npm packages: npm itself reads ours (name, version, every file). Its one
    dependency, the R4 core package, is on the FHIR package registry, not the npm registry, so
    npm is asked to pack it, not to install it with its dependency."""
    tarball = build(tmp_path / "dist")
    with tarfile.open(tarball) as tar:
        tar.extractall(tmp_path, filter="data")
    done = subprocess.run(
        [shutil.which("npm") or "npm", "pack", "--dry-run", "--json", "--ignore-scripts"],
        cwd=tmp_path / "package", capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    (packed,) = json.loads(done.stdout)
    assert packed["name"] == NAME
    assert packed["filename"] == tarball.name
    assert {f["path"] for f in packed["files"]} == {p.name for p in (tmp_path / "package").iterdir()}
