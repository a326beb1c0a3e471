"""Private attributes a mapping profile names (`private_tags`), read from DICOM JSON and
written where each rule says.

A private attribute is found through its creator: (gggg,00xx) holds the creator string and
reserves the block (gggg,xx00-xxFF), so the rule's element EE is (gggg,xxEE) for whichever
block xx the writer chose (PS3.5 7.8.1). Private values are not checked by `checked()`
(only standard attributes are): everything is read defensively here.
"""

from __future__ import annotations

import base64
import binascii

from app.mapping.context import MappingContext
from app.mapping.profile import PrivateTag
from app.mapping.terms import body_site
from app.mapping.values import clean_text
from app.mapping.vr import pn_display


def apply(resource: dict, level: str, attrs: dict, at: str, ctx: MappingContext, repairs: list, where: str) -> None:
    """Write the private attributes the profile maps at `level` ("study" or "series") where
    each rule says: extensions (one per value) or one FHIR element (the first value)."""
    for rule in ctx.rules.private_tags:
        if rule.level != level:
            continue
        values, tags_read = read(attrs, rule)
        if not values:
            continue
        if rule.extension:
            extensions = resource.setdefault("extension", [])
            for value in values:
                ctx.trace(f"{at}.extension[{len(extensions)}]", tags_read, rule.rule)
                extensions.append({"url": rule.extension, "valueString": value})
            continue
        element = rule.target.rsplit(".", 1)[1]
        if element == "bodySite":
            resource["bodySite"], _ = body_site(values[0], where, ctx, repairs)
        elif element == "location":
            resource["location"] = {"display": values[0]}
        else:
            resource[element] = values[0]
        ctx.trace(f"{at}.{element}", tags_read, rule.rule)


def read(attrs: dict, rule: PrivateTag) -> tuple[list[str], list[str]]:
    """(non-empty values, [creator tag, value tag]) of the rule's attribute in `attrs`;
    ([], []) when the creator or the attribute is absent."""
    if not isinstance(attrs, dict):
        return [], []
    group = f"{rule.group:04X}"
    for block in range(0x10, 0x100):
        creator_tag = f"{group}{block:04X}"
        creators = [_text(v) for v in _strings(attrs.get(creator_tag))]
        if not creators or creators[0] != rule.creator:
            continue
        tag = f"{group}{block:02X}{rule.element:02X}"
        values = [v for v in (_text(v) for v in _strings(attrs.get(tag))) if v]
        return (values, [creator_tag, tag]) if values else ([], [])
    return [], []


def _strings(element: object) -> list[str]:
    """The values of a DICOM JSON element as text; bytes of an undecoded (UN) element are
    read as Latin-1 text split on backslashes."""
    if not isinstance(element, dict):
        return []
    values = element.get("Value")
    if isinstance(values, list):
        out = []
        for value in values[:100]:
            if isinstance(value, dict):  # a PN: its groups must be strings
                value = pn_display(value) if all(isinstance(v, str) for v in value.values()) else None
            elif isinstance(value, (int, float)) and not isinstance(value, bool):
                value = str(value)
            if isinstance(value, str):
                out.append(value)
        return out
    inline = element.get("InlineBinary")
    if isinstance(inline, str):
        try:
            raw = base64.b64decode(inline, validate=True)
        except (binascii.Error, ValueError):
            return []
        return raw.decode("latin-1").split("\\")
    return []


def _text(value: str) -> str | None:
    value = value.strip(" \x00\t\r\n")
    return clean_text(value, "private attribute", None) if value else None
