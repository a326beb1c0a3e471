"""An API node loads the whole config, every source's settings included, but never talks to an
archive itself: the archives' client libraries (pynetdicom for DIMSE, dicomweb-client for
DICOMweb) and the PostgreSQL driver of a SQLite store must not be loaded by serving requests.
Each costs a gunicorn worker megabytes of memory it never uses, times the workers of every node."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
import pytest
import yaml

pytestmark = pytest.mark.slow  # a fresh interpreter: a few seconds

ROOT = Path(__file__).resolve().parents[2]

#: run in a fresh interpreter, so that nothing this test process imported counts
_SERVE_AND_LIST_MODULES = """
import sys, orjson
from app.config import load_config
from app.web import create_app

client = create_app(load_config(sys.argv[1])).test_client()
answers = [client.get(path).status_code for path in ("/fhir/metadata", "/fhir/ImagingStudy?_count=1")]
print(orjson.dumps({"answers": answers, "modules": sorted(sys.modules)}).decode())
"""

NOT_FOR_AN_API_NODE = ("pynetdicom", "dicomweb_client", "psycopg")


def test_serving_loads_no_archive_client_nor_the_postgresql_driver(tmp_path):
    (tmp_path / "files").mkdir()
    config = tmp_path / "config.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "store": f"sqlite:///{tmp_path / 'facade.db'}",
                "security": {"open": True},
                "sources": [
                    {"name": "web", "type": "dicomweb", "url": "http://127.0.0.1:9/dicom-web", "changes": "orthanc"},
                    {"name": "dimse", "type": "dimse", "host": "127.0.0.1", "port": 9, "called_aet": "PACS"},
                    {"name": "files", "type": "folder", "path": str(tmp_path / "files")},
                ],
            }
        )
    )
    run = subprocess.run(
        [sys.executable, "-c", _SERVE_AND_LIST_MODULES, str(config)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    seen = orjson.loads(run.stdout.strip().splitlines()[-1])
    assert seen["answers"] == [200, 200]
    loaded = {name.split(".")[0] for name in seen["modules"]}
    assert loaded.isdisjoint(NOT_FOR_AN_API_NODE), sorted(loaded & set(NOT_FOR_AN_API_NODE))
