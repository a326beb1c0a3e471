"""A study held by several archives is one ImagingStudy, made from each archive's copy.

After a merger the same StudyInstanceUID often sits in two PACS. FHIR has one ImagingStudy
per study, so each archive's mapped copy is kept and the served resource is their merge:
the most complete copy as the base (most instances, then source name, so the result does
not depend on which archive synced last), the Endpoints of every archive that holds it,
and the union of their series. A series that only some of the archives hold names those
archives in `series.endpoint`, so an app fetches it from one that has it.

Pure: no I/O; the same copies give the same resource.
"""

from __future__ import annotations

from collections.abc import Iterable

_NO_NUMBER = float("inf")


def _rank(item: tuple[str, dict]) -> tuple[int, str]:
    source, study = item
    return -(study.get("numberOfInstances") or 0), source


def _series_order(series: dict) -> tuple[int | float, str]:
    number = series.get("number")
    return (number if isinstance(number, int) else _NO_NUMBER, series["uid"])


def _union(lists: Iterable[list]) -> list:
    out: list = []
    for values in lists:
        for value in values:
            if value not in out:
                out.append(value)
    return out


def merge_copies(copies: dict[str, dict]) -> dict:
    """One ImagingStudy from the copies of the archives holding it (source name -> copy)."""
    if len(copies) == 1:
        return next(iter(copies.values()))
    ordered = sorted(copies.items(), key=_rank)
    merged = dict(ordered[0][1])
    merged["endpoint"] = _union(study.get("endpoint", []) for _, study in ordered)
    modalities = _union(study.get("modality", []) for _, study in ordered)
    if modalities:
        merged["modality"] = modalities
    holders: dict[str, list[dict]] = {}
    series_by_uid: dict[str, dict] = {}
    for _, study in ordered:
        for series in study.get("series", []):
            series_by_uid.setdefault(series["uid"], series)
            holders.setdefault(series["uid"], [])
            holders[series["uid"]] = _union([holders[series["uid"]], study.get("endpoint", [])])
    everywhere = merged["endpoint"]
    series_list = []
    for uid, series in sorted(series_by_uid.items(), key=lambda item: _series_order(item[1])):
        if holders[uid] != everywhere:
            series = dict(series, endpoint=holders[uid])
        series_list.append(series)
    merged["series"] = series_list
    merged["numberOfSeries"] = len(series_list)
    counts = [s.get("numberOfInstances") for s in series_list]
    if all(isinstance(c, int) for c in counts):
        merged["numberOfInstances"] = sum(counts)
    return merged
