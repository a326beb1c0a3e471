"""The FHIR NPM package of our profiles, for IG tooling (validators, SUSHI, IG Publisher).

A `package/` folder with `package.json`, the `.index.json` that FHIR package loaders read, and
one file per StructureDefinition of fhir_profiles/structure, as the FHIR NPM Package
specification lays it out (https://confluence.hl7.org/display/FHIR/NPM+Package+Specification),
in `imaging-facade.fhir-<version>.tgz`. The version is the product's (pyproject.toml); every
StructureDefinition must carry the same. Built by scripts/build_fhir_package.py.
"""

from __future__ import annotations

import io
import json
import tarfile
import tomllib
from pathlib import Path

from app.fhir.definitions import load_definitions
from app.mapping.claims import CANONICAL

ROOT = Path(__file__).resolve().parents[2]
NAME = "imaging-facade.fhir"


def manifest(version: str) -> dict:
    return {
        "name": NAME,
        "version": version,
        "description": "FHIR R4 profiles of the imaging-facade server: ImagingStudy, Patient and WADO-RS Endpoint",
        "author": "imaging-facade",
        "canonical": CANONICAL,
        "url": CANONICAL,
        "fhirVersions": ["4.0.1"],
        "type": "fhir.ig",
        "dependencies": {"hl7.fhir.r4.core": "4.0.1"},
    }


def build(out: Path) -> Path:
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    definitions = load_definitions()
    files: dict[str, bytes] = {"package.json": json.dumps(manifest(version), indent=2).encode()}
    index = []
    for rid, definition in definitions.items():
        if definition.get("version") != version:
            raise ValueError(
                f"StructureDefinition/{rid} has version {definition.get('version')}, the product {version}"
            )
        filename = f"StructureDefinition-{rid}.json"
        files[filename] = json.dumps(definition, indent=2).encode()
        index.append(
            {
                "filename": filename,
                "resourceType": "StructureDefinition",
                "id": rid,
                "url": definition["url"],
                "version": version,
                "kind": definition["kind"],
                "type": definition["type"],
            }
        )
    files[".index.json"] = json.dumps({"index-version": 1, "files": index}, indent=2).encode()
    out.mkdir(parents=True, exist_ok=True)
    tarball = out / f"{NAME}-{version}.tgz"
    with tarfile.open(tarball, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(f"package/{name}")
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    return tarball
