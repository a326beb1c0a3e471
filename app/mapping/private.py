"""Private attributes a mapping profile names (`private_tags`), read from DICOM JSON.

A private attribute is found through its creator: (gggg,00xx) holds the creator string and
reserves the block (gggg,xx00-xxFF), so the rule's element EE is (gggg,xxEE) for whichever
block xx the writer chose (PS3.5 7.8.1). Private values are not checked by `checked()`
(only standard attributes are): everything is read defensively here.
"""
from __future__ import annotations

import base64
import binascii

from app.mapping.values import clean_text
from app.mapping.vr import pn_display
from app.mapping.profile import PrivateTag


def _strings(element) -> list[str]:
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
