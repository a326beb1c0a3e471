"""FHIR Codings and Identifier systems from coded DICOM attributes.

DICOM codes come as sequence items of the Code Sequence Macro (PS3.3 8.8, Table 8.8-1);
issuers of identifiers as the HL7v2 Hierarchic Designator Macro (PS3.3 10.14): a local
namespace, a universal id and its type. The code tables these read (coding schemes, SNOMED
RT to SNOMED CT) are in codes.py.
"""

from __future__ import annotations

from app.mapping import codes, tags
from app.mapping.values import clean_text, fhir_code
from app.mapping.vr import first, items


def universal_entity_system(
    entity_id: str | None, entity_type: str | None, label: str, repairs: list | None
) -> str | None:
    """Identifier.system from Universal Entity ID (0040,0032) and its type (0040,0033):
    ISO -> urn:oid:<oid>, URI/URL -> the URI itself, UUID -> urn:uuid:<uuid>; other types
    (DNS, EUI64, X400, X500) have no URI form and give None."""
    if not entity_id:
        return None
    kind = (entity_type or "").upper()
    problem = None
    if kind == "ISO":
        oid = entity_id[8:] if entity_id.lower().startswith("urn:oid:") else entity_id
        if codes.OID_RE.fullmatch(oid):
            return "urn:oid:" + oid
        problem = "Universal Entity ID of type ISO is not an OID"
    elif kind in ("URI", "URL"):
        if ":" in entity_id and not any(c.isspace() for c in entity_id):
            return entity_id
        problem = f"Universal Entity ID of type {kind} is not a URI"
    elif kind == "UUID":
        return "urn:uuid:" + entity_id.lower()
    else:
        problem = f"Universal Entity ID type {entity_type!r} has no URI form"
    if repairs is not None:
        repairs.append(f"{label}: {problem}; ignored")
    return None


def coding_from_item(item: dict, label: str, repairs: list | None) -> dict | None:
    """FHIR Coding from one code sequence item (PS3.3 8.8, Basic Code Sequence Macro).

    Code Value, else Long Code Value, else URN Code Value (a URN is its own system,
    urn:ietf:rfc:3986). An unknown coding scheme keeps code and display without `system`.
    """
    meaning = clean_text(first(item, tags.CODE_MEANING), label, repairs)
    designator = first(item, tags.CODING_SCHEME_DESIGNATOR)
    code = fhir_code(first(item, tags.CODE_VALUE) or first(item, tags.LONG_CODE_VALUE))
    if code is not None:
        system, code = codes.coding_system_and_code(designator, code)
        if system is None and designator and repairs is not None:
            repairs.append(f"{label}: coding scheme {designator!r} has no known URI; system left out")
    else:
        urn = fhir_code(first(item, tags.URN_CODE_VALUE))
        if urn is None:
            if meaning is None:
                return None
            return {"display": meaning}
        system, code = codes.RFC3986, urn
    coding: dict = {}
    if system:
        coding["system"] = system
        version = fhir_code(first(item, tags.CODING_SCHEME_VERSION))
        if version:
            coding["version"] = version
    coding["code"] = code
    if meaning:
        coding["display"] = meaning
    return coding


def codeable_concepts(attrs: dict, tag: str, label: str, repairs: list | None) -> list[dict]:
    """One CodeableConcept per code sequence item, text = the code meaning."""
    out: list[dict] = []
    for item in items(attrs, tag):
        coding = coding_from_item(item, label, repairs)
        if coding is None:
            continue
        concept: dict = {}
        if "code" in coding:
            concept["coding"] = [coding]
        if coding.get("display"):
            concept["text"] = coding["display"]
        if concept and concept not in out:
            out.append(concept)
    return out
