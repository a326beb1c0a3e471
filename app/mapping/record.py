"""What mapping reads: one study's metadata as DICOM JSON (PS3.18 F.2), as every source yields it.

QIDO-RS answers in DICOM JSON, pydicom makes it from files and C-FIND answers
(`Dataset.to_json_dict`), so mapping has a single input format whatever protocol the study
came from.
"""

from __future__ import annotations

from dataclasses import dataclass, field


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
