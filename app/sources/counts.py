"""An archive's answer checked against the archive's own counts.

QIDO-RS and C-FIND answer a study's NumberOfStudyRelatedSeries and a series'
NumberOfSeriesRelatedInstances. When fewer series or instances come than those counts
say, the archive cut its answer (Orthanc's LimitFindResults / LimitFindInstances cut
QIDO-RS answers without a word) or the study changed while it was read: either way the
record would leave part of the study out, so the source reports a StudyFailure instead.
"""

from __future__ import annotations


class ShortAnswer(Exception):
    """An archive answered fewer series or instances than it says there are, or said it cut
    its answer: indexing what came would leave part of the study out."""


def first_count(answer: dict, key: str) -> int | None:
    """The value of a count attribute (IS/US/UL) in a DICOM JSON answer; None if absent or not a number."""
    element = answer.get(key)
    if not isinstance(element, dict):
        return None
    values = element.get("Value")
    if not isinstance(values, list) or not values:
        return None
    value = values[0]
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return int(value)
    digits = value.strip().lstrip("+") if isinstance(value, str) else ""
    if digits.isascii() and digits.isdigit():  # isdigit() alone takes "²", which int() refuses
        return int(value.strip())
    return None


def check_count(where: str, what: str, got: int, answer: dict, key: str) -> None:
    """Raise ShortAnswer when fewer `what` came than `answer`'s count attribute `key` says.

    More than counted is fine: Orthanc counts per Orthanc study, and answers a study UID
    held under two Patient IDs with the series of both.
    """
    counted = first_count(answer, key)
    if counted is not None and got < counted:
        raise ShortAnswer(
            f"{where}: the archive answered {got} {what}(s) but counts {counted}; its answer was cut "
            "(a limit such as Orthanc's LimitFindResults or LimitFindInstances) or it changed while read"
        )
