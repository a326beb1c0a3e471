"""What the CapabilityStatement says of Bulk Data export (Bulk Data Access IG v2.0.0, "Server
Capability Documentation": the operations by their canonical OperationDefinitions, and the
IG's CapabilityStatement instantiated) and of the Groups it exports."""

from __future__ import annotations

from app.api.interactions import GROUP_READ, GROUP_SEARCH

BULK_DATA = "http://hl7.org/fhir/uv/bulkdata/CapabilityStatement/bulk-data"
_DEFINITIONS = "http://hl7.org/fhir/uv/bulkdata/OperationDefinition"

EXPORT_DOCUMENTATION = (
    "Bulk Data export (Bulk Data Access IG v2.0.0) with 'Prefer: respond-async': 202 and Content-Location "
    "(the status URL); status polling answers 202 with X-Progress and Retry-After, then 200 with the manifest "
    "and Expires; DELETE on the status URL cancels and removes the files. Parameters: _outputFormat (ndjson: "
    "application/fhir+ndjson, application/ndjson, ndjson), _since (resources whose meta.lastUpdated is later), "
    "_type, _typeFilter (search queries; several of one type are ORed); any other parameter answers 400 unless "
    "'Prefer: handling=lenient'. Needs a SMART Backend Services token with system-level scopes (system/*.rs); "
    "a token bound to a patient gets 403; what the scopes do not cover is not exported, and a _type naming it "
    "gets 403. Status, files and cancel are the kick-off client's only. Output files expire after "
    "export.retention seconds and are removed."
)
GROUP_EXPORT_DOCUMENTATION = (
    "Each source (archive) is a Group of the Patients its studies name; a Group export writes those Patients, "
    "their ImagingStudies and the Endpoints the studies point at. " + EXPORT_DOCUMENTATION
)


def system_operation() -> dict:
    return {"name": "export", "definition": f"{_DEFINITIONS}/export", "documentation": EXPORT_DOCUMENTATION}


def patient_operation() -> dict:
    return {
        "name": "export",
        "definition": f"{_DEFINITIONS}/patient-export",
        "documentation": "Every Patient, ImagingStudy and Endpoint. " + EXPORT_DOCUMENTATION,
    }


def group_resource() -> dict:
    return {
        "type": "Group",
        "profile": "http://hl7.org/fhir/StructureDefinition/Group",
        "documentation": "Each configured source (archive) as an actual person Group of the Patients its studies "
        "name (Group/{source name}); read and search need a Group scope and are refused to a token bound to a "
        "patient (membership spans patients).",
        "interaction": [{"code": GROUP_READ.restful}, {"code": GROUP_SEARCH.restful}],
        "searchParam": [
            {"name": "_id", "definition": "http://hl7.org/fhir/SearchParameter/Resource-id", "type": "token"},
            {
                "name": "name",
                "definition": "http://hl7.org/fhir/SearchParameter/Group-name",
                "type": "string",
                "documentation": "the source's name; starts with, case-insensitive",
            },
            {
                "name": "identifier",
                "definition": "http://hl7.org/fhir/SearchParameter/Group-identifier",
                "type": "token",
                "documentation": "urn:imaging-facade:source|<source name>",
            },
        ],
        "operation": [
            {
                "name": "export",
                "definition": f"{_DEFINITIONS}/group-export",
                "documentation": GROUP_EXPORT_DOCUMENTATION,
            }
        ],
    }
