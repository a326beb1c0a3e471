"""The one shape every source yields: study metadata as DICOM JSON (PS3.18 F.2).

QIDO-RS answers in DICOM JSON, pydicom makes it from files (`Dataset.to_json_dict`), so
mapping has a single input format whatever protocol the study came from.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Protocol


@dataclass
class SeriesRecord:
    """One series: its series-level attributes and one DICOM JSON object per instance."""

    attrs: dict
    instances: list[dict] = field(default_factory=list)


@dataclass
class StudyRecord:
    """One study as a source saw it.

    `attrs` holds study- and patient-level attributes (a QIDO-RS study answer, or the
    first file of the study). Query-only attributes such as ModalitiesInStudy or
    NumberOfStudyRelatedInstances are present only when the archive answered them.
    `repairs` lists what the source had to fix to read the study (for the sync report).
    """

    uid: str
    attrs: dict
    series: list[SeriesRecord] = field(default_factory=list)
    repairs: list[str] = field(default_factory=list)


@dataclass
class StudyFailure:
    """A study the source found but could not read; it goes to quarantine with `reason`."""

    uid: str | None
    reason: str
    location: str | None = None


class Source(Protocol):
    """What the sync needs from any archive adapter."""

    name: str
    #: counters a source keeps while iterating, e.g. {"files": 120, "skipped": 3}
    stats: dict

    def iter_studies(self) -> Iterator[StudyRecord | StudyFailure]:
        """Yield every study of the archive, one at a time."""
        ...

    def total(self) -> int | None:
        """Number of studies `iter_studies` will yield, once known (None if unknown)."""
        ...
