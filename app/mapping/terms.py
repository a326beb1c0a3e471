"""Terms each archive writes its own way, read as the source's mapping profile says.

Modality (0008,0060) through the profile's `modality.synonyms`, Body Part Examined
(0018,0015) through its `body_part` table (PS3.16 Annex L), Institution Name (0008,0080)
through its `institution` names. Each reader also returns the profile rule (file:line) that
decided, for provenance.
"""

from __future__ import annotations

from app.mapping import codes, tags
from app.mapping.context import MappingContext
from app.mapping.profile import body_part_key, institution_key
from app.mapping.values import fhir_code
from app.mapping.vr import text


def modality_coding(
    value: str | None, label: str, noted: set, repairs: list, ctx: MappingContext
) -> tuple[dict | None, str | None]:
    """(Coding, the profile rule that normalized it) of a Modality value.

    A synonym of the profile (`modality.synonyms`, e.g. PET -> PT) gives its DICOM code; a
    value that is neither a DICOM modality (CID 29 / CID 33) nor a synonym is no code of
    any system: it is kept as text (Coding.display) and noted, once per study (`noted`).
    """
    code = fhir_code(value.upper()) if value else None
    if code is None:
        return None, None
    rules = ctx.rules
    rule = None
    if code in rules.modality_synonyms:
        rule = rules.rule("modality", "synonym", code)
        code = rules.modality_synonyms[code]
    coding, known = codes.modality_coding(code)
    if not known:
        if code not in noted:
            noted.add(code)
            repairs.append(
                f"{label} {code!r} is not a DICOM modality (CID 29 or 33) nor a "
                "synonym of the mapping profile; kept as text"
            )
        coding = {"display": code}
    return coding, rule


def body_site(value: str, where: str, ctx: MappingContext, repairs: list) -> tuple[dict, str | None]:
    """(series.bodySite Coding, rule) for a Body Part Examined term (profile `body_part`)."""
    rules = ctx.rules
    coding, known = codes.body_part_coding(value, rules.body_parts)
    if not known:
        repairs.append(
            f"{where}: BodyPartExamined {value!r} is not a PS3.16 Annex L term "
            "nor a term of the mapping profile; kept as display only"
        )
        return coding, None
    key = body_part_key(value)
    return coding, rules.rule("body_part", "term", key) or rules.rule("body_part", "cid4031_meanings")


def location(attrs: dict, ctx: MappingContext, repairs: list) -> tuple[dict | None, str | None]:
    """ImagingStudy.location from Institution Name (0008,0080), named as the profile's
    `institution` says: a variant of `names` becomes its one name; no name, the `default`."""
    rules = ctx.rules
    if not rules.institution_location:
        return None, None
    name = text(attrs, tags.INSTITUTION, "InstitutionName", repairs)
    if name:
        key = institution_key(name)
        if key in rules.institution_names:
            return {"display": rules.institution_names[key]}, rules.rule("institution", "name", key)
        return {"display": name}, rules.rule("institution", "location")
    if rules.institution_default:
        return {"display": rules.institution_default}, rules.rule("institution", "default")
    return None, None
