"""The search parameters the server supports, as data.

One registry drives the indexer (what rows a stored resource gets), the query parser and
SQL builder, and the CapabilityStatement. Names, types, paths and definition URLs follow
the official R4 SearchParameter resources (FHIR 4.0.1); a path is a dotted element path
from the resource root, with lists flattened at every step.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

R4_SP = "http://hl7.org/fhir/SearchParameter/"


@dataclass(frozen=True)
class SearchParam:
    resource: str
    name: str
    type: str  # token | reference | string | date | special
    paths: tuple[str, ...]
    definition: str
    documentation: str
    #: for references: resource types the parameter may point at
    targets: tuple[str, ...] = ()
    #: where the value lives: None for the index tables, else a column of the resource table
    column: str | None = None
    #: for tokens on a `code` element: the system of its required value set, so that
    #: `system|code` matches as well as `code`
    code_system: str | None = None
    #: for tokens on Identifier elements: `:of-type` applies
    identifiers: bool = False
    #: a server-defined way of matching instead of the type's own ("phonetic")
    matcher: str | None = None
    #: for references to Patients: a value also matches every Patient it carries a
    #: Patient.link to (records of the same person in other archives; beyond base FHIR)
    follows_links: bool = False
    #: every code is in `code_system`: a value naming another system is refused (400)
    only_system: bool = False
    #: whether modifiers apply (the audit trail's parameters take none)
    modifiers: bool = True
    #: references the mapping may give as a display name alone (a DICOM person name, no resource
    #: to point at): a presence row of their own tells `:missing` they are there
    bare_display: bool = False

    @property
    def sortable(self) -> bool:
        return self.matcher is None


def _p(
    resource: str,
    name: str,
    type_: str,
    paths: Iterable[str],
    definition: str,
    documentation: str,
    targets: Iterable[str] = (),
    column: str | None = None,
    code_system: str | None = None,
    identifiers: bool = False,
    matcher: str | None = None,
    follows_links: bool = False,
    only_system: bool = False,
    modifiers: bool = True,
    bare_display: bool = False,
) -> SearchParam:
    return SearchParam(
        resource,
        name,
        type_,
        tuple(paths),
        R4_SP + definition,
        documentation,
        tuple(targets),
        column,
        code_system,
        identifiers,
        matcher,
        follows_links,
        only_system,
        modifiers,
        bare_display,
    )


#: what `patient` and `subject` do beyond base FHIR, said in the CapabilityStatement
LINKED_PATIENTS = (
    " A Patient given by id also finds the studies of every Patient it carries a Patient.link to "
    "(another archive's record of the same person), beyond base FHIR."
)


def _common(resource: str) -> list[SearchParam]:
    return [
        _p(resource, "_id", "token", [], "Resource-id", "Logical id of this artifact", column="id"),
        _p(
            resource,
            "_lastUpdated",
            "date",
            [],
            "Resource-lastUpdated",
            "When the resource version last changed",
            column="last_updated",
        ),
    ]


PRACTITIONER_LIKE = ("Practitioner", "PractitionerRole")

PARAMS: list[SearchParam] = [
    *_common("ImagingStudy"),
    _p(
        "ImagingStudy",
        "basedon",
        "reference",
        ["basedOn"],
        "ImagingStudy-basedon",
        "The order for the image",
        ["ServiceRequest", "CarePlan", "Appointment", "AppointmentResponse", "Task"],
    ),
    _p("ImagingStudy", "bodysite", "token", ["series.bodySite"], "ImagingStudy-bodysite", "The body site studied"),
    _p(
        "ImagingStudy",
        "dicom-class",
        "token",
        ["series.instance.sopClass"],
        "ImagingStudy-dicom-class",
        "The type of the instance",
    ),
    _p(
        "ImagingStudy",
        "encounter",
        "reference",
        ["encounter"],
        "ImagingStudy-encounter",
        "The context of the study",
        ["Encounter"],
    ),
    _p(
        "ImagingStudy",
        "endpoint",
        "reference",
        ["endpoint", "series.endpoint"],
        "ImagingStudy-endpoint",
        "The endpoint for the study or series",
        ["Endpoint"],
    ),
    _p(
        "ImagingStudy",
        "identifier",
        "token",
        ["identifier"],
        "clinical-identifier",
        "Identifiers for the Study, such as DICOM Study Instance UID and Accession number",
        identifiers=True,
    ),
    _p(
        "ImagingStudy",
        "instance",
        "token",
        ["series.instance.uid"],
        "ImagingStudy-instance",
        "SOP Instance UID for an instance",
    ),
    _p(
        "ImagingStudy",
        "interpreter",
        "reference",
        ["interpreter"],
        "ImagingStudy-interpreter",
        "Who interpreted the images",
        PRACTITIONER_LIKE,
        bare_display=True,
    ),
    _p("ImagingStudy", "modality", "token", ["series.modality"], "ImagingStudy-modality", "The modality of the series"),
    _p(
        "ImagingStudy",
        "patient",
        "reference",
        ["subject"],
        "clinical-patient",
        "Who the study is about." + LINKED_PATIENTS,
        ["Patient"],
        follows_links=True,
    ),
    _p(
        "ImagingStudy",
        "performer",
        "reference",
        ["series.performer.actor"],
        "ImagingStudy-performer",
        "The person who performed the study",
        PRACTITIONER_LIKE,
        bare_display=True,
    ),
    _p("ImagingStudy", "reason", "token", ["reasonCode"], "ImagingStudy-reason", "The reason for the study"),
    _p(
        "ImagingStudy",
        "referrer",
        "reference",
        ["referrer"],
        "ImagingStudy-referrer",
        "The referring physician",
        ["Practitioner", "PractitionerRole"],
        bare_display=True,
    ),
    _p(
        "ImagingStudy",
        "series",
        "token",
        ["series.uid"],
        "ImagingStudy-series",
        "DICOM Series Instance UID for a series",
    ),
    _p("ImagingStudy", "started", "date", ["started"], "ImagingStudy-started", "When the study was started"),
    _p(
        "ImagingStudy",
        "status",
        "token",
        ["status"],
        "ImagingStudy-status",
        "The status of the study",
        code_system="http://hl7.org/fhir/imagingstudy-status",
    ),
    _p(
        "ImagingStudy",
        "subject",
        "reference",
        ["subject"],
        "ImagingStudy-subject",
        "Who the study is about." + LINKED_PATIENTS,
        ["Patient", "Device", "Group"],
        follows_links=True,
    ),
    *_common("Patient"),
    _p(
        "Patient", "identifier", "token", ["identifier"], "Patient-identifier", "A patient identifier", identifiers=True
    ),
    _p(
        "Patient",
        "name",
        "string",
        ["name"],
        "Patient-name",
        "A server defined search that may match any of the string fields in the HumanName, "
        "including family, given, prefix, suffix and text",
    ),
    _p(
        "Patient",
        "family",
        "string",
        ["name.family"],
        "individual-family",
        "A portion of the family name of the patient",
    ),
    _p("Patient", "given", "string", ["name.given"], "individual-given", "A portion of the given name of the patient"),
    _p(
        "Patient",
        "phonetic",
        "string",
        ["name"],
        "individual-phonetic",
        "A portion of either family or given name using some kind of phonetic matching algorithm: here every "
        "word of the value must sound (Metaphone, after removing accents) like a word of one of the names",
        matcher="phonetic",
    ),
    _p(
        "Patient",
        "link",
        "reference",
        ["link.other"],
        "Patient-link",
        "All patients linked to the given patient (Patient.link, type seealso: records of the same person)",
        ["Patient", "RelatedPerson"],
    ),
    _p("Patient", "birthdate", "date", ["birthDate"], "individual-birthdate", "The patient's date of birth"),
    _p(
        "Patient",
        "gender",
        "token",
        ["gender"],
        "individual-gender",
        "Gender of the patient",
        code_system="http://hl7.org/fhir/administrative-gender",
    ),
    *_common("Endpoint"),
    _p(
        "Endpoint",
        "status",
        "token",
        ["status"],
        "Endpoint-status",
        "The current status of the Endpoint",
        code_system="http://hl7.org/fhir/endpoint-status",
    ),
    _p(
        "Endpoint",
        "connection-type",
        "token",
        ["connectionType"],
        "Endpoint-connection-type",
        "Protocol/Profile/Standard to be used with this endpoint connection",
    ),
    _p(
        "Endpoint",
        "identifier",
        "token",
        ["identifier"],
        "Endpoint-identifier",
        "Identifies this endpoint",
        identifiers=True,
    ),
    _p("Endpoint", "name", "string", ["name"], "Endpoint-name", "A name that this Endpoint can be identified by"),
    _p(
        "Endpoint",
        "organization",
        "reference",
        ["managingOrganization"],
        "Endpoint-organization",
        "The organization that is managing the endpoint",
        ["Organization"],
    ),
    _p(
        "Endpoint",
        "payload-type",
        "token",
        ["payloadType"],
        "Endpoint-payload-type",
        "The type of content that may be used at this endpoint",
    ),
]

RESOURCE_TYPES = ("ImagingStudy", "Patient", "Endpoint")

BY_RESOURCE: dict[str, dict[str, SearchParam]] = {t: {} for t in RESOURCE_TYPES}
for _param in PARAMS:
    BY_RESOURCE[_param.resource][_param.name] = _param


def served_targets(param: SearchParam) -> tuple[str, ...]:
    """The resource types a reference parameter can point at that this server holds."""
    return tuple(t for t in param.targets if t in RESOURCE_TYPES)


#: _include values the server resolves: (source type, param name) -> target type.
#: Every reference parameter whose target this server holds; derived, never listed by hand.
INCLUDES: dict[tuple[str, str], str] = {
    (p.resource, p.name): served_targets(p)[0] for p in PARAMS if p.type == "reference" and len(served_targets(p)) == 1
}

#: _revinclude values: (source type, param name) -> the type it points at (the searched type)
REVINCLUDES = INCLUDES


#: the audit trail's parameters: AuditEvents live in tables of their own (app/store/tables.py),
#: not in `resource` and its index tables, so no ordinary search (chain, `_has`, include) can
#: reach them; they are searched by `AuditEvent?…` alone, newest first
AUDIT_EVENT_PARAMS: list[SearchParam] = [
    _p(
        "AuditEvent",
        "date",
        "date",
        ["recorded"],
        "AuditEvent-date",
        "Time when the event was recorded",
        column="recorded",
        modifiers=False,
    ),
    _p(
        "AuditEvent",
        "patient",
        "reference",
        ["entity.what"],
        "AuditEvent-patient",
        "A patient whose data the request returned (Patient/id or id)",
        ["Patient"],
        modifiers=False,
    ),
    _p(
        "AuditEvent",
        "agent",
        "reference",
        ["agent.who"],
        "AuditEvent-agent",
        "Who asked: the access token's subject or client_id (agent.who.identifier or agent.altId)",
        matcher="recorded-value",
        modifiers=False,
    ),
    _p(
        "AuditEvent",
        "entity-type",
        "token",
        ["entity.type"],
        "AuditEvent-entity-type",
        "Type of an entity: 2 (system object: the query, the resource read), 1 (person: a patient)",
        code_system="http://terminology.hl7.org/CodeSystem/audit-entity-type",
        only_system=True,
        modifiers=False,
    ),
    _p(
        "AuditEvent",
        "outcome",
        "token",
        ["outcome"],
        "AuditEvent-outcome",
        "0 success, 4 refused or bad request, 8 server failure",
        column="outcome",
        code_system="http://hl7.org/fhir/audit-event-outcome",
        only_system=True,
        modifiers=False,
    ),
]

#: the types a search can name: the served ones, and the audit trail
SEARCHABLE: dict[str, dict[str, SearchParam]] = {**BY_RESOURCE, "AuditEvent": {p.name: p for p in AUDIT_EVENT_PARAMS}}

#: result parameters the server understands (everything else is an unknown parameter); `_format`
#: and `_pretty` are general parameters of every interaction (FHIR R4 http.html 3.1.0.1.10)
CONTROL = {
    "_count",
    "_include",
    "_revinclude",
    "_page",
    "_format",
    "_pretty",
    "_total",
    "_summary",
    "_elements",
    "_sort",
}
#: ... and those the audit trail takes: it pages, newest first, and is served whole
TRAIL_CONTROL = {"_count", "_page", "_format", "_pretty"}


def controls(rtype: str) -> set[str]:
    """The result parameters a search of `rtype` takes."""
    return TRAIL_CONTROL if rtype == "AuditEvent" else CONTROL


def indexed(resource: str) -> list[SearchParam]:
    """Parameters whose values come from the index tables (not resource columns)."""
    return [p for p in BY_RESOURCE[resource].values() if p.column is None]
