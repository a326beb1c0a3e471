"""What a mapping profile layer may say: its marshmallow schema, and the code tables the
checks use (DICOM modality codes, SNOMED CT codes of PS3.16, Specific Character Sets).

Every check refuses a value with a reason a profile author can act on; profile.py adds the
file and line.
"""

from __future__ import annotations

import re
from functools import cache
from typing import Any, cast

from marshmallow import RAISE, Schema, ValidationError, fields, validate, validates_schema

from app.mapping.claims import STRUCTURE_DEFINITION

#: private attributes mapped to extensions get URLs under our canonical (app/mapping/claims.py)
EXTENSION_BASE = STRUCTURE_DEFINITION
_NAME_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
_HEX_GROUP = re.compile(r"[0-9A-Fa-f]{4}")
_HEX_BYTE = re.compile(r"[0-9A-Fa-f]{2}")


# --- what a layer may say ------------------------------------------------------------------


def _uri(value: object) -> None:
    if not isinstance(value, str) or ":" not in value or any(c.isspace() for c in value):
        raise ValidationError(f"{value!r} is not a URI (e.g. urn:oid:1.2.3 or https://hospital.example/mrn)")


def _modality_code(value: object) -> None:
    if value not in modality_codes():
        raise ValidationError(
            f"{value!r} is not a DICOM modality code (CID 29 acquisition modalities or CID 33 modalities)"
        )


def _snomed_code(value: object) -> None:
    if not isinstance(value, str) or value not in snomed_meanings():
        raise ValidationError(
            f"{value!r} is not a SNOMED CT code that DICOM PS3.16 lists (CID 4031 and the Annex L body parts are)"
        )


def _strptime_format(value: object) -> None:
    if not isinstance(value, str) or "%" not in value:
        raise ValidationError(f"{value!r} is not a strptime format such as %d.%m.%Y")
    from datetime import datetime

    try:
        datetime(2001, 2, 3).strftime(value)
    except ValueError as exc:
        raise ValidationError(f"{value!r} is not a valid strptime format: {exc}") from exc
    if not {"%Y", "%m", "%d"} <= set(re.findall(r"%.", value)) and not {"%Y", "%b", "%d"} <= set(
        re.findall(r"%.", value)
    ):
        raise ValidationError(f"{value!r} must contain a year, a month and a day (%Y, %m or %b, %d)")


class Strict(Schema):
    class Meta:
        unknown = RAISE


class SystemSchema(Strict):
    system = fields.String(allow_none=True, validate=_uri)


class ModalitySchema(Strict):
    synonyms = fields.Dict(
        keys=fields.String(validate=validate.Length(min=1, max=16)),
        values=fields.String(allow_none=True, validate=_modality_code),
    )


class BodyPartSchema(Strict):
    cid4031_meanings = fields.Boolean()
    terms = fields.Dict(
        keys=fields.String(validate=validate.Length(min=1, max=64)),
        values=fields.String(allow_none=True, validate=_snomed_code),
    )


class InstitutionSchema(Strict):
    location = fields.Boolean()
    names = fields.Dict(
        keys=fields.String(validate=validate.Length(min=1)),
        values=fields.String(allow_none=True, validate=validate.Length(min=1, max=200)),
    )
    default = fields.String(allow_none=True, validate=validate.Length(min=1, max=200))


class NamesSchema(Strict):
    format = fields.String(validate=validate.OneOf(["dicom", "given-family", "family-given"]))


class DatesSchema(Strict):
    formats = fields.List(fields.String(validate=_strptime_format))


def _character_set(value: object) -> None:
    from pydicom.charset import python_encoding

    if value not in python_encoding or not value:
        raise ValidationError(
            f"{value!r} is not a DICOM Specific Character Set defined term (e.g. ISO_IR 100, ISO_IR 192)"
        )


class CharacterSetSchema(Strict):
    default = fields.String(allow_none=True, validate=_character_set)


class EndpointSchema(Strict):
    requires_access_token = fields.Boolean()


#: FHIR elements a private attribute may fill, and the level it is read at
PRIVATE_TARGETS = {
    "ImagingStudy.description": "study",
    "ImagingStudy.location": "study",
    "ImagingStudy.series.description": "series",
    "ImagingStudy.series.bodySite": "series",
}


class PrivateTagSchema(Strict):
    creator = fields.String(required=True, validate=validate.Length(min=1, max=64))
    group = fields.String(required=True)
    element = fields.String(required=True)
    target = fields.String(validate=validate.OneOf(sorted(PRIVATE_TARGETS)))
    extension = fields.String()
    level = fields.String(validate=validate.OneOf(["study", "series"]))

    @validates_schema(skip_on_field_errors=False)
    def _shape(self, data: dict[str, Any], **_: Any) -> None:
        problems: dict[str, list[str]] = {}
        group = data.get("group")
        if group is not None and (
            not isinstance(group, str)
            or not _HEX_GROUP.fullmatch(group)
            or int(group, 16) % 2 == 0
            or int(group, 16) < 9
        ):
            problems["group"] = [f"{group!r} is not a private group: four hex digits, odd, from 0009 on"]
        element = data.get("element")
        if element is not None and (not isinstance(element, str) or not _HEX_BYTE.fullmatch(element)):
            problems["element"] = [
                f"{element!r} is not an element within the creator's block: two hex digits (the EE of gggg,xxEE)"
            ]
        if ("target" in data) == ("extension" in data):
            problems["target"] = ["give either target (a FHIR element) or extension (a name), not both or neither"]
        name = data.get("extension")
        if name is not None and not _NAME_RE.fullmatch(name):
            problems["extension"] = [
                f"{name!r} is not an extension name: lower-case letters, digits and '-' "
                f"(it becomes {EXTENSION_BASE}<name>)"
            ]
        if "target" in data and "level" in data and data["level"] != PRIVATE_TARGETS.get(data["target"]):
            problems["level"] = [f"{data['target']} is filled at {PRIVATE_TARGETS[data['target']]} level"]
        if problems:
            raise ValidationError(problems)


class LayerSchema(Strict):
    description = fields.String()
    vendor = fields.String(validate=validate.Length(min=1))
    patient_id = fields.Nested(SystemSchema)
    accession = fields.Nested(SystemSchema)
    issuers = fields.Dict(
        keys=fields.String(validate=validate.Length(min=1)), values=fields.String(allow_none=True, validate=_uri)
    )
    modality = fields.Nested(ModalitySchema)
    body_part = fields.Nested(BodyPartSchema)
    institution = fields.Nested(InstitutionSchema)
    names = fields.Nested(NamesSchema)
    dates = fields.Nested(DatesSchema)
    character_set = fields.Nested(CharacterSetSchema)
    endpoint = fields.Nested(EndpointSchema)
    private_tags = fields.List(fields.Nested(PrivateTagSchema))


# --- code tables the checks use ---------------------------------------------------------------


@cache
def modality_codes() -> frozenset:
    from pydicom.sr.codedict import codes

    return frozenset(getattr(cid, name).value for cid in (codes.cid29, codes.cid33) for name in cid.dir())


@cache
def snomed_meanings() -> dict[str, str]:
    """SNOMED CT code -> meaning, for every SCT concept in pydicom's copy of PS3.16."""
    from pydicom.sr._concepts_dict import concepts

    # {keyword: {code: (meaning, CIDs)}}, which pydicom's untyped table does not say
    sct = cast(dict[str, dict[str, tuple[str, list[int]]]], concepts["SCT"])
    out: dict[str, str] = {}
    for by_code in sct.values():
        for code, (meaning, _cids) in by_code.items():
            out.setdefault(code, meaning)
    return out
