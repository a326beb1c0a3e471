"""`StructureDefinition/{id}` and `StructureDefinition?url=`: the profiles our resources claim,
resolvable where `meta.profile` and the CapabilityStatement's `supportedProfile` point.

A validator or an EHR that meets `http://imaging-facade.org/fhir/StructureDefinition/...`
fetches the definition from the server that claims it (FHIR R4 resource.html#canonical,
profiling.html#resolution). They are the files of fhir_profiles/structure, read once at start
and served as they are; the same files are published as a FHIR NPM package
(scripts/build_fhir_package.py) for IG tooling. Public like /metadata: they describe the
server, not a patient.
"""

from __future__ import annotations

from pathlib import Path

import orjson
from flask import Flask, Response, request

from app.api.interactions import Interaction, serves
from app.fhir.bundle import match_bundle
from app.fhir.errors import FhirError
from app.ids import valid_id

STRUCTURE_DIR = Path(__file__).resolve().parents[2] / "fhir_profiles" / "structure"
FHIR_JSON = "application/fhir+json"
#: conformance resources: public, not audited (they hold no patient data)
READ_DEFINITION = Interaction("read", "read", public=True)
SEARCH_DEFINITIONS = Interaction("search-type", "search-type", public=True)
#: the search parameters answered (FHIR R4 StructureDefinition search parameters), and those
#: every search accepts and this one has nothing to do with
SEARCH_PARAMS = ("url", "_id", "name", "type")
IGNORED = ("_format", "_pretty", "_summary", "_elements", "_count", "_total")


def load_definitions(folder: Path = STRUCTURE_DIR) -> dict[str, dict]:
    """id -> StructureDefinition, from the files."""
    found = {}
    for path in sorted(folder.glob("*.json")):
        resource = orjson.loads(path.read_bytes())
        found[resource["id"]] = resource
    return found


def init_app(app: Flask, base_url: str) -> None:
    definitions = load_definitions()
    served = {rid: orjson.dumps(resource) for rid, resource in definitions.items()}

    @app.get("/fhir/StructureDefinition/<rid>")
    @serves(READ_DEFINITION)
    def read_definition(rid: str) -> Response:
        if not valid_id(rid) or rid not in served:
            raise FhirError(404, "not-found", f"StructureDefinition/{rid} is not known")
        return Response(served[rid], content_type=FHIR_JSON)

    @app.get("/fhir/StructureDefinition")
    @serves(SEARCH_DEFINITIONS)
    def search_definitions() -> Response:
        matches = list(definitions.values())
        for name, value in request.args.items(multi=True):
            if name in IGNORED:
                continue
            base = name.split(":", 1)[0]
            if base not in SEARCH_PARAMS or base != name:
                raise FhirError(400, "not-supported", f"parameter '{name}' is not supported on StructureDefinition")
            wanted = value.split(",")
            if name == "url":  # a canonical, optionally `url|version` (FHIR R4 search.html#versions)
                pairs = [w.partition("|") for w in wanted]
                matches = [
                    m for m in matches if any(m["url"] == u and v in ("", m.get("version")) for u, _, v in pairs)
                ]
            elif name == "name":  # a string: starts with, ignoring case (FHIR R4 search.html#string)
                matches = [m for m in matches if any(m["name"].lower().startswith(w.lower()) for w in wanted)]
            else:
                element = {"_id": "id", "type": "type"}[name]
                matches = [m for m in matches if m.get(element) in wanted]
        entries = [
            {"fullUrl": f"{base_url}/StructureDefinition/{m['id']}", "resource": m, "search": {"mode": "match"}}
            for m in matches
        ]
        query = request.query_string.decode("ascii", "replace")
        return Response(
            match_bundle(entries, f"{base_url}/StructureDefinition" + (f"?{query}" if query else "")),
            content_type=FHIR_JSON,
        )
