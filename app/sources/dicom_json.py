"""pydicom Dataset -> DICOM JSON, keeping only the attributes the mapping reads.

Used by every source that holds pydicom datasets (files, C-FIND answers), so they all hand
mapping the same PS3.18 F.2 form that QIDO-RS returns.
"""
from __future__ import annotations

from pydicom.dataset import Dataset
from pydicom.tag import Tag

from app.mapping import tags

MAPPED_TAGS = sorted(Tag(t) for t in tags.ALL)


def dataset_to_dicom_json(ds: Dataset, wanted=MAPPED_TAGS) -> tuple[dict, list[str]]:
    """Return (DICOM JSON of the wanted attributes, repairs).

    An attribute whose value pydicom cannot convert is left out and named in `repairs`
    (for example a DS that is not a number): the study is still indexed, and the report
    says what was dropped.
    """
    subset = Dataset()
    present = [tag for tag in wanted if tag in ds]
    try:
        for tag in present:
            subset.add(ds[tag])
        return subset.to_json_dict(bulk_data_threshold=1 << 20), []
    except Exception:  # fall back to one attribute at a time to find the bad ones
        pass
    out: dict = {}
    repairs: list[str] = []
    for tag in present:
        single = Dataset()
        try:
            single.add(ds[tag])
            out.update(single.to_json_dict(bulk_data_threshold=1 << 20))
        except Exception as exc:  # any value pydicom cannot read is a repair, not a crash
            keyword = tags.ALL.get(f"{tag:08X}", f"{tag:08X}")
            repairs.append(f"dropped {keyword} ({tag:08X}): {type(exc).__name__}")
    return out, repairs


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
