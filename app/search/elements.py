"""`_summary` and `_elements`: the subsets of a stored resource a client may ask for.

The element lists are the R4 (4.0.1) StructureDefinitions of the types served here,
reduced to what the subsetting rules need (FHIR R4 search 3.1.1.5.8 and 3.1.1.5.9):
which elements are `isSummary`, which are mandatory (`min` >= 1), and which are backbone
elements whose own children are marked one by one. A conformance test checks these lists
against the official StructureDefinitions.

Subsetting works on the stored JSON as plain dicts (orjson), never on models, and only
when a client asks for it; a subset carries the SUBSETTED tag so it is never taken for
the whole resource.
"""

from __future__ import annotations

from typing import Any

#: top-level elements of each type ([x] choices by their stem)
ELEMENTS: dict[str, tuple[str, ...]] = {
    "ImagingStudy": (
        "id",
        "meta",
        "implicitRules",
        "language",
        "text",
        "contained",
        "extension",
        "modifierExtension",
        "identifier",
        "status",
        "modality",
        "subject",
        "encounter",
        "started",
        "basedOn",
        "referrer",
        "interpreter",
        "endpoint",
        "numberOfSeries",
        "numberOfInstances",
        "procedureReference",
        "procedureCode",
        "location",
        "reasonCode",
        "reasonReference",
        "note",
        "description",
        "series",
    ),
    "Patient": (
        "id",
        "meta",
        "implicitRules",
        "language",
        "text",
        "contained",
        "extension",
        "modifierExtension",
        "identifier",
        "active",
        "name",
        "telecom",
        "gender",
        "birthDate",
        "deceased",
        "address",
        "maritalStatus",
        "multipleBirth",
        "photo",
        "contact",
        "communication",
        "generalPractitioner",
        "managingOrganization",
        "link",
    ),
    "Endpoint": (
        "id",
        "meta",
        "implicitRules",
        "language",
        "text",
        "contained",
        "extension",
        "modifierExtension",
        "identifier",
        "status",
        "connectionType",
        "name",
        "managingOrganization",
        "contact",
        "period",
        "payloadType",
        "payloadMimeType",
        "address",
        "header",
    ),
}

#: element paths (below the resource) marked isSummary
SUMMARY: dict[str, frozenset[str]] = {
    "ImagingStudy": frozenset(
        {
            "id",
            "meta",
            "implicitRules",
            "identifier",
            "status",
            "modality",
            "subject",
            "encounter",
            "started",
            "basedOn",
            "referrer",
            "interpreter",
            "endpoint",
            "numberOfSeries",
            "numberOfInstances",
            "procedureReference",
            "procedureCode",
            "location",
            "reasonCode",
            "reasonReference",
            "note",
            "description",
            "series",
            "series.modifierExtension",
            "series.uid",
            "series.number",
            "series.modality",
            "series.description",
            "series.numberOfInstances",
            "series.endpoint",
            "series.bodySite",
            "series.laterality",
            "series.specimen",
            "series.started",
            "series.performer",
            "series.performer.modifierExtension",
            "series.performer.function",
            "series.performer.actor",
            "series.instance.modifierExtension",
        }
    ),
    "Patient": frozenset(
        {
            "id",
            "meta",
            "implicitRules",
            "identifier",
            "active",
            "name",
            "telecom",
            "gender",
            "birthDate",
            "deceased",
            "address",
            "contact.modifierExtension",
            "communication.modifierExtension",
            "managingOrganization",
            "link",
            "link.modifierExtension",
            "link.other",
            "link.type",
        }
    ),
    "Endpoint": frozenset(
        {
            "id",
            "meta",
            "implicitRules",
            "identifier",
            "status",
            "connectionType",
            "name",
            "managingOrganization",
            "period",
            "payloadType",
            "payloadMimeType",
            "address",
        }
    ),
}

#: backbone elements: their children are kept or dropped one by one
BACKBONE: dict[str, frozenset[str]] = {
    "ImagingStudy": frozenset({"series", "series.instance", "series.performer"}),
    "Patient": frozenset({"communication", "contact", "link"}),
    "Endpoint": frozenset(),
}

#: top-level elements with min >= 1
MANDATORY: dict[str, tuple[str, ...]] = {
    "ImagingStudy": ("status", "subject"),
    "Patient": (),
    "Endpoint": ("status", "connectionType", "payloadType", "address"),
}

SUMMARY_MODES = ("true", "text", "data", "count", "false")
SUBSETTED = {
    "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
    "code": "SUBSETTED",
    "display": "subsetted",
}
_ALWAYS = ("resourceType", "id", "meta")


_CHOICES = ("deceased", "multipleBirth")


def element_of(rtype: str, key: str) -> str | None:
    """The element a JSON key belongs to (`deceasedBoolean` -> `deceased`, `_birthDate` -> `birthDate`)."""
    key = key.lstrip("_")
    if key in ELEMENTS[rtype]:
        return key
    for stem in _CHOICES:
        if key.startswith(stem) and key[len(stem) : len(stem) + 1].isupper() and stem in ELEMENTS[rtype]:
            return stem
    return None


def _keep_summary(node: Any, rtype: str, prefix: str) -> Any:
    """The summary part of a backbone element (or of the resource when prefix is '')."""
    if isinstance(node, list):
        return [_keep_summary(item, rtype, prefix) for item in node]
    out = {}
    for key, value in node.items():
        name = element_of(rtype, key) if not prefix else key.lstrip("_")
        path = f"{prefix}{name}" if name else None
        if path is None or path not in SUMMARY[rtype]:
            continue
        out[key] = _keep_summary(value, rtype, path + ".") if path in BACKBONE[rtype] else value
    return out


def _tagged(resource: dict) -> dict:
    meta = dict(resource.get("meta", {}))
    meta["tag"] = [*meta.get("tag", []), SUBSETTED]
    resource["meta"] = meta
    return resource


def summarize(resource: dict, mode: str) -> dict:
    """The `_summary=<mode>` form of a resource (mode true, text or data)."""
    rtype = resource["resourceType"]
    if mode == "true":
        out = {"resourceType": rtype, **_keep_summary(resource, rtype, "")}
    elif mode == "text":
        keep = {*_ALWAYS, "text", *MANDATORY[rtype]}
        out = {k: v for k, v in resource.items() if k in keep or element_of(rtype, k) in keep}
    else:  # data
        out = {k: v for k, v in resource.items() if k != "text"}
    return _tagged(out)


def select_elements(resource: dict, names: frozenset[str]) -> dict:
    """The `_elements` form: the named top-level elements plus the mandatory ones."""
    rtype = resource["resourceType"]
    keep = {*_ALWAYS, *names, *MANDATORY[rtype]}
    return _tagged({k: v for k, v in resource.items() if k in keep or element_of(rtype, k) in keep})
