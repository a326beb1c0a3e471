"""What a study was ordered under: its accession number and the reason for the procedure.

Both may be written at study level or only in the Request Attributes Sequence (0040,0275),
the Request Attributes Macro (PS3.3 10.6) of the procedure steps that made the study; the
study level wins where it has a value.
"""

from __future__ import annotations

from app.mapping import codes, tags
from app.mapping.codings import codeable_concepts, universal_entity_system
from app.mapping.context import MappingContext
from app.mapping.values import clean_text
from app.mapping.vr import first, items, text


def accession_identifier(attrs: dict, ctx: MappingContext, repairs: list) -> tuple[dict | None, str | None]:
    """(Accession identifier, the rule that gave its system): value (0008,0050) (or of the
    first Request Attributes item that has one) and system from its Issuer of Accession
    Number Sequence (0008,0051)."""
    source = attrs
    value = first(attrs, tags.ACCESSION)
    if value is None:
        for item in items(attrs, tags.REQUEST_ATTRIBUTES):
            value = first(item, tags.ACCESSION)
            if value is not None:
                source = item
                break
    value = clean_text(value, "AccessionNumber", repairs)
    if value is None:
        return None, None
    issuers = items(source, tags.ACCESSION_ISSUER) or (
        items(attrs, tags.ACCESSION_ISSUER) if source is not attrs else []
    )
    issuer = issuers[0] if issuers else {}
    local = first(issuer, tags.LOCAL_NAMESPACE_ENTITY_ID)
    system, rule = _accession_system(issuer, local, ctx, repairs)
    identifier: dict = {"type": codes.copy_concept(codes.ACCESSION_TYPE)}
    if system:
        identifier["system"] = system
    identifier["value"] = value
    if local:
        identifier["assigner"] = {"display": local}
    return identifier, rule


def _accession_system(
    issuer: dict, local: str | None, ctx: MappingContext, repairs: list
) -> tuple[str | None, str | None]:
    """(Identifier.system, rule): the issuer's Universal Entity ID, else its local namespace as
    configured, else the source's accession system."""
    system = universal_entity_system(
        first(issuer, tags.UNIVERSAL_ENTITY_ID),
        first(issuer, tags.UNIVERSAL_ENTITY_ID_TYPE),
        "IssuerOfAccessionNumberSequence",
        repairs,
    )
    rule = None
    if system is None and local:
        system, rule = ctx.issuer(local)
        if system is None:
            repairs.append(
                f"Issuer of Accession Number {local!r} is not configured in "
                "issuer_systems nor in the mapping profile's issuers"
            )
    if system is None:
        system, rule = ctx.accession_default()
    return system, rule


def reasons(attrs: dict, repairs: list) -> list[dict]:
    """ImagingStudy.reasonCode: the study's coded and written reasons, else those of every
    Request Attributes item, each once."""
    found = _reasons_at(attrs, repairs)
    if not found:
        for item in items(attrs, tags.REQUEST_ATTRIBUTES):
            for concept in _reasons_at(item, repairs):
                if concept not in found:
                    found.append(concept)
    return found


def _reasons_at(level: dict, repairs: list) -> list[dict]:
    """The coded reasons of one level, and its written reason unless a code already says it."""
    found = codeable_concepts(level, tags.REASON_CODES, "ReasonForRequestedProcedureCode", repairs)
    reason = text(level, tags.REASON_TEXT, "ReasonForTheRequestedProcedure", repairs)
    if reason and not any(c.get("text") == reason for c in found):
        found.append({"text": reason})
    return found
