"""The official FHIR R4 definitions (npm package hl7.fhir.r4.examples@4.0.1), for tests that
check the server against them.

The package is fetched once with `npm pack` into `.cache/` and unpacked next to the tarball,
so a test can read single definitions without decompressing the whole archive again.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tarfile
import tempfile
from functools import cache
from pathlib import Path

from testbed import services

PACKAGE = "hl7.fhir.r4.examples@4.0.1"
CACHE = Path(__file__).resolve().parents[2] / ".cache"
TARBALL = CACHE / "hl7.fhir.r4.examples-4.0.1.tgz"
UNPACKED = CACHE / "hl7.fhir.r4.examples-4.0.1"


@cache
def package_dir() -> Path:
    """The unpacked package's `package/` folder, fetching and unpacking it when missing.

    Unpacking goes to a temporary folder that is renamed into place, so a concurrent test
    process never reads a half-written package.
    """
    services.require("the npm package of the R4 definitions")
    if not (UNPACKED / "package").is_dir():
        CACHE.mkdir(exist_ok=True)
        if not TARBALL.exists():
            subprocess.run(
                ["npm", "pack", PACKAGE, "--pack-destination", str(CACHE)], check=True, capture_output=True, timeout=300
            )
        staging = Path(tempfile.mkdtemp(dir=CACHE, prefix=".unpacking-"))
        try:
            with tarfile.open(TARBALL) as tar:
                # the "data" filter refuses links and paths out of the folder (Python >= 3.11.4)
                tar.extractall(staging, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
            try:
                os.rename(staging, UNPACKED)
            except OSError:  # another process unpacked it first
                if not (UNPACKED / "package").is_dir():
                    raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return UNPACKED / "package"


def definition(resource_type: str, name: str) -> dict:
    """One resource of the package by type and id, e.g. ("StructureDefinition", "Patient")."""
    return json.loads((package_dir() / f"{resource_type}-{name}.json").read_text())


@cache
def search_parameters() -> dict[tuple[str, str], dict]:
    """(base resource type, code) -> the official R4 SearchParameter resource.

    The package also holds example SearchParameters (ids `example…`) that reuse codes such as
    `_id`; they are not definitions.
    """
    found = {}
    for path in sorted(package_dir().glob("SearchParameter-*.json")):
        resource = json.loads(path.read_text())
        if resource["id"].startswith("example"):
            continue
        for base in resource.get("base", []):
            found[(base, resource["code"])] = resource
    return found
