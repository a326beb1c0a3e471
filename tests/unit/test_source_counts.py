"""An archive's count attributes (IS, US, UL in DICOM JSON, PS3.18 F.2) read as numbers, or as
absent when they are not one: a count never stops a study from being read."""

from __future__ import annotations

import pytest

from app.sources.counts import first_count

NUMBER_OF_SERIES = "00201206"


@pytest.mark.parametrize(
    "value, expected",
    [(12, 12), ("12", 12), (" +3 ", 3), ("²", None), ("٣", None), ("x", None), (True, None), ("", None)],
)
def test_a_count_is_ascii_digits_or_nothing(value, expected):
    answer = {NUMBER_OF_SERIES: {"vr": "IS", "Value": [value]}}
    assert first_count(answer, NUMBER_OF_SERIES) == expected
