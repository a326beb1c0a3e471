"""pydicom Dataset -> DICOM JSON, keeping only the attributes the mapping reads.

Used by every source that holds pydicom datasets (files, C-FIND answers), so they all hand
mapping the same PS3.18 F.2 form that QIDO-RS returns.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from pydicom import config
from pydicom.charset import convert_encodings
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import BaseTag, Tag

from app.mapping import tags

MAPPED_TAGS = sorted(Tag(t) for t in tags.ALL)
_UI_TAGS = frozenset(Tag(t) for t in (tags.SOP_CLASS_UID, tags.SOP_INSTANCE_UID, tags.STUDY_UID, tags.SERIES_UID))
_CHARSET = Tag(0x00080005)
_UNKNOWN_CHARSET = re.compile(r"Unknown encoding '(.*)' - using default encoding")
_MISSPELLED_CHARSET = re.compile(r"Incorrect value for Specific Character Set '(.*)' - assuming '(.*)'")


@contextmanager
def _converting() -> Iterator[list[warnings.WarningMessage]]:
    """Convert values with pydicom's validation off, catching its warnings.

    pydicom's value validation warns (and logs) with the offending value quoted, patient
    names among them; mapping checks every value it uses itself. What remains are the
    warnings about repairs pydicom makes while decoding (undecodable bytes replaced, a
    character set it does not know), which the caller turns into repair notes.

    Only UserWarnings are taken, the category pydicom warns with: the capture is process-wide,
    and a ResourceWarning from garbage collection (or a DeprecationWarning of another thread)
    arriving meanwhile must not become a repair note of this file; it made the same file
    map differently from one sync to the next.
    """
    with config.disable_value_validation(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("ignore")
        warnings.simplefilter("always", UserWarning)
        yield caught


def _label(tag: int) -> str:
    return f"{tags.ALL.get(f'{tag:08X}', 'attribute')} ({tag:08X})"


def _character_set(ds: Dataset) -> str:
    elem = ds.get_item(_CHARSET, keep_deferred=True)
    value = elem.value if elem is not None else None
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace").strip(" \x00")
    elif value and not isinstance(value, str):  # several values: ISO 2022 code extensions
        value = "\\".join(str(v) for v in value)
    return f"'{value}'" if value else "the default repertoire (ISO_IR 6)"


def _charset_notes(ds: Dataset) -> list[str]:
    """What pydicom assumed about a SpecificCharacterSet it does not know."""
    elem = ds.get_item(_CHARSET, keep_deferred=True)
    if elem is None or not elem.value:
        return []
    value = elem.value
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    names = value.split("\\") if isinstance(value, str) else list(value)
    names = [str(n).strip(" \x00") for n in names]
    with _converting() as caught:
        try:
            convert_encodings(names)
        except Exception:  # noqa: BLE001 - reported below like a warning
            return [f"SpecificCharacterSet {_shown(value)} cannot be used; text read as ISO_IR 100"]
    notes = []
    for warning in caught:
        message = str(warning.message)
        if match := _UNKNOWN_CHARSET.match(message):
            notes.append(
                f"SpecificCharacterSet {match[1]!r} is not a DICOM character set; text read as ISO_IR 100 (Latin-1)"
            )
        elif match := _MISSPELLED_CHARSET.match(message):
            notes.append(f"SpecificCharacterSet {match[1]!r} is misspelled; read as {match[2]!r}")
        else:  # pydicom's other notes on a character set name only character sets
            notes.append(f"SpecificCharacterSet {_shown(value)}: {message}")
    return notes


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _decoding_note(tag: int, ds: Dataset, warning: warnings.WarningMessage) -> str:
    message = str(warning.message)
    if "escape sequence" in message:
        return (
            f"{_label(tag)} has an escape sequence that SpecificCharacterSet "
            f"{_character_set(ds)} does not allow; read as ISO_IR 100 (Latin-1)"
        )
    if "decode" in message:
        return f"{_label(tag)} has bytes that are not valid in {_character_set(ds)}; they were replaced by U+FFFD"
    return f"{_label(tag)} was read with a pydicom warning ({warning.category.__name__})"


def _unreadable(tag: BaseTag, ds: Dataset, exc: Exception) -> str:
    if isinstance(exc, (UnicodeError, LookupError)):
        problem = f"could not be decoded with {_character_set(ds)}"
    elif isinstance(exc, (EOFError, OSError)):
        problem = "could not be read from the file"
    else:
        elem = ds.get_item(tag, keep_deferred=True)
        vr = getattr(elem, "VR", None) or "its"
        problem = f"is not a valid {vr} value"
    return f"{_label(tag)} {problem}; left out"


def _padded_uid(tag: BaseTag, elem: object) -> bool:
    """A raw UI value with padding other than the one trailing NUL PS3.5 allows."""
    if tag not in _UI_TAGS or type(elem) is not RawDataElement or elem.VR not in ("UI", None):
        return False
    value = elem.value
    return isinstance(value, bytes) and (value[-1:] == b" " or value[-2:] == b"\x00\x00")


def dataset_to_dicom_json(ds: Dataset, wanted: Sequence[BaseTag] = MAPPED_TAGS) -> tuple[dict, list[str]]:
    """Return (DICOM JSON of the wanted attributes, repairs).

    An attribute whose value pydicom cannot convert is left out and named in `repairs`
    (for example an IS that is not a number): the study is still indexed, and the report
    says what was dropped. What pydicom repairs silently while converting is named there
    too (bytes not valid in the character set, an unknown SpecificCharacterSet, UID
    padding), so every change to what the file says is reported.
    """
    present = [tag for tag in wanted if tag in ds]
    repairs = [
        f"{_label(tag)} has padding a UID cannot have (spaces or NULs); removed"
        for tag in present
        if _padded_uid(tag, ds.get_item(tag, keep_deferred=True))
    ]
    if present and _CHARSET in ds:
        repairs += _charset_notes(ds)
    out: dict[str, Any] = {}
    with _converting() as caught:
        for tag in present:  # what Dataset.to_json_dict does, one attribute at a time
            seen = len(caught)
            try:
                out[f"{tag:08X}"] = ds[tag].to_json_dict(None, 1 << 20)
            except Exception as exc:  # noqa: BLE001 - a value pydicom cannot read is a repair
                repairs.append(_unreadable(tag, ds, exc))
            repairs += [_decoding_note(tag, ds, warning) for warning in caught[seen:]]
    return out, list(dict.fromkeys(repairs))


def first_uid(answer: dict, key: str) -> str | None:
    """The first value of a UI attribute in an archive's DICOM JSON answer, stripped; None if absent.

    Archive answers are untrusted: a missing element, an empty Value or a non-string all
    give None, so the caller reports the study instead of failing on it.
    """
    element = answer.get(key)
    if not isinstance(element, dict):
        return None
    values = element.get("Value")
    if not isinstance(values, list) or not values:
        return None
    value = values[0]
    return value.strip() if isinstance(value, str) and value.strip() else None
