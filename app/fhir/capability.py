"""The CapabilityStatement, generated from the parameter registry: it lists what works."""

from __future__ import annotations

from app.api.interactions import READ, SEARCH_TYPE, SYSTEM_INTERACTIONS, TYPE_INTERACTIONS
from app.fhir import bulk_capability, subscription_capability
from app.mapping.claims import PROFILES
from app.search.params import AUDIT_EVENT_PARAMS, BY_RESOURCE, INCLUDES, RESOURCE_TYPES, REVINCLUDES

SOFTWARE_VERSION = "0.1.0"


COMPARTMENT_POLICY = (
    "SMART on FHIR: a token with a patient in context sees that Patient and the Patients linked to it by "
    "Patient.link one hop either way (its stored links, and records whose links point at it), their "
    "ImagingStudies, and the Endpoints those studies point at (Endpoint is not in the Patient compartment; "
    "an ImagingStudy scope covers them). Every search is restricted to that compartment, also in chains, "
    "_has and every _include/_revinclude; a search naming another patient (ImagingStudy?patient=, subject=, "
    "Patient?_id=) answers 403; a read of a resource outside answers 404, as for one that does not exist. "
    "SMART v2 granular scopes (e.g. patient/ImagingStudy.rs?modality=MR) are ANDed with every search and "
    "read of their type and ORed among themselves. Paging links are valid only for the token that made them. "
    "Every read, search and refused request is recorded as an AuditEvent (IHE Basic Audit Log Patterns), "
    "searchable at AuditEvent with a user- or system-level AuditEvent scope."
)


#: what the system-level interactions (SYSTEM_INTERACTIONS, in their order) do here
SYSTEM_DOCUMENTATION = (
    "Every version of every served type the token may search, newest first, deletions as entries without a "
    "resource; _since, _at, _count and signed paging links, as for type history.",
    "A batch Bundle of GET entries (at most 100), each checked and audited as if sent alone; other methods get "
    "405 in their entry, and a transaction Bundle is refused with 405.",
)


def capability_statement(base_url: str, released: str, security: dict) -> dict:
    """`security` is the rest.security element (app/security/discovery.py builds it from the config);
    the interactions are the table's (app/api/interactions.py)."""
    resources = []
    for rtype in RESOURCE_TYPES:
        params = BY_RESOURCE[rtype]
        resources.append(
            {
                "type": rtype,
                "profile": f"http://hl7.org/fhir/StructureDefinition/{rtype}",
                # the constraint profiles every served resource claims (fhir_profiles/structure)
                "supportedProfile": [PROFILES[rtype]],
                "interaction": [{"code": interaction.restful} for interaction in TYPE_INTERACTIONS],
                "versioning": "versioned",
                "readHistory": True,
                "conditionalRead": "full-support",
                "searchInclude": [f"{s}:{p}" for (s, p) in INCLUDES if s == rtype] + ["*"],
                "searchRevInclude": [f"{s}:{p}" for (s, p), t in REVINCLUDES.items() if t == rtype] + ["*"],
                "searchParam": [
                    {"name": p.name, "definition": p.definition, "type": p.type, "documentation": p.documentation}
                    for p in params.values()
                ],
            }
        )
        if rtype == "Patient":
            resources[-1]["operation"] = [
                {
                    "name": "match",
                    "definition": "http://hl7.org/fhir/OperationDefinition/Patient-match",
                    "documentation": "POST a Parameters with 'resource' (a Patient), optional 'onlyCertainMatches' and "
                    "'count'; answers a searchset with search.score and the match-grade extension "
                    "(certain, probable, possible), scored like automatic record linkage.",
                },
                bulk_capability.patient_operation(),
            ]
    resources.append(
        {
            "type": "AuditEvent",
            "profile": "http://hl7.org/fhir/StructureDefinition/AuditEvent",
            "documentation": "The audit trail of this server, newest first; searching it and reading one event "
            "(AuditEvent/{id}) need a user- or system-level AuditEvent scope (a patient-context token gets 403).",
            "interaction": [{"code": READ.restful}, {"code": SEARCH_TYPE.restful}],
            "searchParam": [
                {"name": p.name, "definition": p.definition, "type": p.type, "documentation": p.documentation}
                for p in AUDIT_EVENT_PARAMS
            ],
        }
    )
    resources.append(bulk_capability.group_resource())
    resources.append(subscription_capability.subscription_resource(base_url))
    resources.append(
        {
            "type": "StructureDefinition",
            "profile": "http://hl7.org/fhir/StructureDefinition/StructureDefinition",
            "documentation": "The profiles the served resources claim in meta.profile (fhir_profiles/structure); "
            "readable without a token, like this statement. Also published as a FHIR NPM package.",
            "interaction": [{"code": "read"}, {"code": "search-type"}],
            "searchParam": [
                {"name": "url", "definition": "http://hl7.org/fhir/SearchParameter/conformance-url", "type": "uri"},
                {"name": "_id", "definition": "http://hl7.org/fhir/SearchParameter/Resource-id", "type": "token"},
                {
                    "name": "name",
                    "definition": "http://hl7.org/fhir/SearchParameter/conformance-name",
                    "type": "string",
                    "documentation": "exact match",
                },
                {
                    "name": "type",
                    "definition": "http://hl7.org/fhir/SearchParameter/StructureDefinition-type",
                    "type": "token",
                },
            ],
        }
    )
    security = {**security, "description": f"{security.get('description', '')} {COMPARTMENT_POLICY}".strip()}
    return {
        "resourceType": "CapabilityStatement",
        "id": "imaging-facade",
        "status": "active",
        "date": released,
        "publisher": "imaging-facade",
        "kind": "instance",
        "instantiates": [bulk_capability.BULK_DATA],
        "software": {"name": "imaging-facade", "version": SOFTWARE_VERSION},
        "implementation": {"description": "FHIR R4 ImagingStudy facade over DICOM archives", "url": base_url},
        "fhirVersion": "4.0.1",
        "format": ["json", "application/fhir+json", "application/json", "xml", "application/fhir+xml"],
        "rest": [
            {
                "mode": "server",
                "documentation": (
                    "Read-only (POST Patient/$match only reads too), but for Subscriptions: a client creates and "
                    "deletes its own. Search results are ordered by resource id; "
                    "paging links are signed and stateless. "
                    "Date search values without a time zone are read in the server's configured zone. "
                    "Search by POST [type]/_search with a form body returns what GET returns. "
                    "Reference parameters can be chained (patient.identifier, subject:Patient.name, "
                    "endpoint.status, also several levels) and reverse-chained with _has "
                    "(Patient?_has:ImagingStudy:patient:modality=MR). _include and _revinclude accept "
                    ":iterate and *; included resources carry search.mode=include, do not count toward "
                    "_count, and each page carries those of its own matches, never truncated. "
                    "Unknown parameters are ignored unless the request carries 'Prefer: handling=strict'. "
                    "Modifiers: token :not, :text, :of-type (identifier), :missing; string :exact, :contains, "
                    ":missing; reference :[type], :identifier, :missing; date :missing. Patient phonetic matches "
                    "every word of the value by Metaphone. "
                    "_sort takes several parameters, '-' for descending; a repeating element sorts by its lowest "
                    "value ascending and its highest descending, dates by the start of their period, resources "
                    "without a value last; ties are broken by id. Paging links expire after server.page_ttl "
                    "seconds (400 then). _total=estimate counts exactly up to 1000 matches, beyond that it is "
                    "PostgreSQL's planner estimate (absent on SQLite). _summary (true, text, data, count, false) "
                    "and _elements work on searches and reads; _elements applies to the matches, _summary to "
                    "included resources too. _pretty=true indents the JSON of any interaction. "
                    "Responses are gzip-compressed when the client accepts it. "
                    "History (instance, type and system) is newest first, lists a deletion as an entry with "
                    "request.method DELETE and no resource (a vread of that version answers 410), and takes _since "
                    "(an instant), _at (versions current during the period a dateTime covers), _count and signed "
                    "paging links; type and system history need the search permission and show only what a search "
                    "would. "
                    "A study that no archive holds any more answers 410 on read; a study held by several "
                    "archives is one ImagingStudy with an Endpoint for each. Sources in on-demand mode may "
                    "answer a patient search with 503 and Retry-After while the archive is asked. "
                    "At most 50 parameters per search and 100 comma-separated values per parameter. "
                    "Records of one person in several archives are linked with Patient.link (type seealso, on both "
                    "Patients) by automatic record linkage or by an administrator; Patient?link=Patient/<id> finds "
                    "them. Beyond base FHIR, ImagingStudy?patient=<id> (and subject=Patient/<id>) also returns the "
                    "studies of every Patient linked to <id>."
                ),
                "security": security,
                "resource": resources,
                "interaction": [
                    {"code": interaction.restful, "documentation": documentation}
                    for interaction, documentation in zip(SYSTEM_INTERACTIONS, SYSTEM_DOCUMENTATION, strict=True)
                ],
                "operation": [bulk_capability.system_operation()],
            }
        ],
    }
