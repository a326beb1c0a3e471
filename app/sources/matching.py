"""Study-level matching keys for listings, and listing archives that cap their answers.

A listing can be narrowed with `match`, a dict of study-level matching keys by DICOM keyword,
sent to the archive as QIDO-RS query parameters or C-FIND identifier keys so that the
archive does the filtering (PS3.4 C.2.2.2, PS3.18 8.3.4):

    StudyDate          "20240101", "20240101-20240131", "-20231231" or "20240101-" (range)
    PatientID          one value (wildcards `*` `?` are the archive's wildcard matching)
    AccessionNumber    one value
    StudyInstanceUID   one UID or a list: list-of-UID matching
    ModalitiesInStudy  one code or a list: a study matches when it holds any of them

Archives cap how many studies one query returns (Orthanc's `LimitFindResults`, a C-FIND
SCP's maximum, a QIDO server's result limit). `sliced_listing` asks again, with the
StudyDate range cut in parts, for every answer that came back at the cap, down to single
days and then, within a day, StudyTime halves, so the union of the slices is complete.
A date range is cut around the median date of the capped answer (the day itself becomes
a slice of its own), or in halves when the answer has no dates in the range: a crowded
day is isolated at once instead of after twenty halvings of the years 0001-9999.

What the slices cannot see: a study whose StudyDate (or, within a crowded day, StudyTime)
is empty or absent matches no date range. Neither C-FIND nor QIDO-RS can ask for "the
studies without a date": a zero-length key is universal matching (it selects everything,
not the empties) and `""` is matched literally by the archives tried. What is done:

- the unsliced query comes first; when it is under the cap, it is the answer, undated
  studies included, and nothing is sliced;
- the answers of every capped query are kept: an undated study that a capped answer
  holds is listed even though no slice returns it;
- open-ended ranges stay open (`-20231231`, not `00010101-20231231`): Orthanc (1.10)
  stores an empty StudyDate as "" and its string comparison puts it into every
  open-lower range, so there the empty-dated studies come back with the oldest slice;
- when a capped answer held studies no slice returned, more of them may sit beyond the
  cap: the listing reports a gap (`Listing.gaps`), as it does for a slice that is still
  at the cap and cannot be cut further (more studies in one second, or in the open-lower
  slice of year 1, than the cap allows). A listing with gaps is not complete, and must not
  be taken as proof that a study it misses is gone.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import date

#: keyword -> whether a list of values is allowed (list-of-UID matching, ModalitiesInStudy)
KEYS = {
    "StudyDate": False,
    "PatientID": False,
    "AccessionNumber": False,
    "StudyInstanceUID": True,
    "ModalitiesInStudy": True,
}
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_CS = re.compile(r"^[A-Z0-9_ ]{1,16}$")
_DA = re.compile(r"^[0-9]{8}$")
_FIRST_DAY = date.min.toordinal()
_LAST_DAY = date.max.toordinal()
_DAY_SECONDS = 86400


def normalize_match(match: dict | None) -> dict:
    """A checked copy of `match`: lists as tuples, empty values dropped (they match all).

    Raises ValueError naming the key for an unknown keyword, or for a value the archive
    would read as something else (a backslash separates values in C-FIND).
    """
    out: dict = {}
    for key, value in (match or {}).items():
        if key not in KEYS:
            raise ValueError(f"cannot match on {key!r}; supported keys: {', '.join(KEYS)}")
        if isinstance(value, (list, tuple, set, frozenset)):
            if not KEYS[key]:
                raise ValueError(f"{key} takes one value, not a list")
            values = [v.strip() if isinstance(v, str) else v for v in value]
            if not values:
                raise ValueError(f"{key}: an empty list matches nothing; leave the key out to match all")
        elif isinstance(value, str):
            values = [value.strip()]
            if not values[0]:
                continue  # zero length: universal matching
        else:
            raise ValueError(f"{key}: expected a string, got {type(value).__name__}")
        for v in values:
            _check_value(key, v)
        if key == "StudyDate":
            days = DayRange.parse(values[0])
            if days.first is not None or days.last is not None:
                out[key] = days.text()
            continue
        unique = tuple(dict.fromkeys(values))
        out[key] = unique[0] if len(unique) == 1 else unique
    return out


def _check_value(key: str, value: object) -> None:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{key}: every value must be a non-empty string")
    if key == "StudyInstanceUID" and (len(value) > 64 or not _UID.match(value)):
        raise ValueError(f"{key}: {value!r} is not a DICOM UID")
    if key == "ModalitiesInStudy" and not _CS.match(value):
        raise ValueError(f"{key}: {value!r} is not a modality code (CS: A-Z, 0-9, '_', space)")
    if "\\" in value or any(ord(c) < 32 for c in value):
        raise ValueError(f"{key}: a value must not contain a backslash or control characters")


def match_key(match: dict | None) -> tuple:
    """A hashable form of a normalized match, to tell two listings apart."""
    return tuple(sorted((k, v) for k, v in normalize_match(match).items()))


def qido_params(match: dict) -> dict[str, str]:
    """QIDO-RS query parameters: lists comma-separated (PS3.18 8.3.4.1).

    A single value holding a comma is refused: the archive would read it as a list.
    """
    for key, value in match.items():
        if isinstance(value, str) and "," in value:
            raise ValueError(f"{key}: {value!r} holds a comma, which QIDO-RS reads as a list of values")
    return {k: ",".join(v) if isinstance(v, tuple) else v for k, v in match.items()}


def cfind_keys(match: dict) -> dict[str, str | list[str]]:
    """C-FIND identifier keys: lists as multiple values (backslash-separated on the wire)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in match.items()}


def uid_chunks(match: dict, size: int) -> list[dict]:
    """`match` split so that no query carries more than `size` UIDs (URL and PDU sizes)."""
    uids = match.get("StudyInstanceUID")
    if not isinstance(uids, tuple) or len(uids) <= size:
        return [match]
    return [
        {**match, "StudyInstanceUID": chunk if len(chunk) > 1 else chunk[0]}
        for chunk in (uids[i : i + size] for i in range(0, len(uids), size))
    ]


# -- ranges ------------------------------------------------------------------------------
def _day(text: str) -> int:
    if not _DA.match(text):
        raise ValueError(f"StudyDate: {text!r} is not a date YYYYMMDD")
    try:
        return date(int(text[:4]), int(text[4:6]), int(text[6:])).toordinal()
    except ValueError:
        raise ValueError(f"StudyDate: {text!r} is not a calendar date") from None


def _da(ordinal: int) -> str:
    return date.fromordinal(ordinal).strftime("%Y%m%d")


@dataclass(frozen=True)
class DayRange:
    """StudyDate range matching: first..last as date ordinals, None for an open end."""

    first: int | None = None
    last: int | None = None

    @classmethod
    def parse(cls, text: str | None) -> DayRange:
        text = (text or "").strip()
        if not text or text == "-":
            return cls()
        if text.count("-") > 1:
            raise ValueError(f"StudyDate: {text!r} is not a date or a range YYYYMMDD-YYYYMMDD")
        if "-" not in text:
            day = _day(text)
            return cls(day, day)
        lo, hi = text.split("-")
        first = _day(lo) if lo else None
        last = _day(hi) if hi else None
        if first is not None and last is not None and first > last:
            raise ValueError(f"StudyDate: the range {text!r} ends before it starts")
        return cls(first, last)

    def text(self) -> str:
        if self.first is not None and self.first == self.last:
            return _da(self.first)
        lo = _da(self.first) if self.first is not None else ""
        hi = _da(self.last) if self.last is not None else ""
        return f"{lo}-{hi}"

    @property
    def one_day(self) -> bool:
        return self.first is not None and self.first == self.last

    def contains(self, day: int) -> bool:
        return (self.first is None or day >= self.first) and (self.last is None or day <= self.last)

    def halves(self) -> tuple[DayRange, DayRange] | None:
        lo = self.first if self.first is not None else _FIRST_DAY
        hi = self.last if self.last is not None else _LAST_DAY
        if lo >= hi:
            return None
        mid = (lo + hi) // 2
        return DayRange(self.first, mid), DayRange(mid + 1, self.last)

    def around(self, day: int) -> tuple[DayRange, ...] | None:
        """The range cut into the days before `day`, `day` itself, and the days after."""
        lo = self.first if self.first is not None else _FIRST_DAY
        hi = self.last if self.last is not None else _LAST_DAY
        if lo >= hi or not lo <= day <= hi:
            return None
        parts = [DayRange(self.first, day - 1)] if day > lo else []
        parts.append(DayRange(day, day))
        if day < hi:
            parts.append(DayRange(day + 1, self.last))
        return tuple(parts)


@dataclass(frozen=True)
class TimeRange:
    """StudyTime range matching within one day, in seconds; None for an open end.

    Halves share their boundary second (`-120000` and `120000-`): archives compare times
    as strings (Orthanc does), so 11:59:59.5 is above `115959` and would fall between two
    slices that did not overlap; a study at the boundary comes back twice and is listed once.
    """

    first: int | None = None
    last: int | None = None

    def text(self) -> str:
        lo = _tm(self.first) if self.first is not None else ""
        hi = _tm(self.last) if self.last is not None else ""
        return f"{lo}-{hi}"

    def halves(self) -> tuple[TimeRange, TimeRange] | None:
        lo = self.first if self.first is not None else 0
        hi = self.last if self.last is not None else _DAY_SECONDS
        if hi - lo <= 1:
            return None
        mid = (lo + hi) // 2
        return TimeRange(self.first, mid), TimeRange(mid, self.last)


def _tm(seconds: int) -> str:
    return f"{seconds // 3600:02d}{seconds // 60 % 60:02d}{seconds % 60:02d}"


@dataclass(frozen=True)
class _Slice:
    days: DayRange
    times: TimeRange | None = None

    def match(self, base: dict) -> dict:
        out = {k: v for k, v in base.items() if k not in ("StudyDate", "StudyTime")}
        if self.days.first is not None or self.days.last is not None:
            out["StudyDate"] = self.days.text()
        if self.times is not None:
            out["StudyTime"] = self.times.text()
        return out

    def describe(self) -> str:
        days = self.days.text() if (self.days.first, self.days.last) != (None, None) else "any date"
        return f"StudyDate {days}" + (f", StudyTime {self.times.text()}" if self.times else "")

    def parts(self, dates: list[int]) -> tuple[_Slice, ...] | None:
        """This slice cut in parts that together match what it matches; None if it cannot be.

        `dates` are the study dates (ordinals) of its capped answer: the range is cut
        around their median, else in halves.
        """
        if self.times is None:
            inside = sorted(d for d in dates if self.days.contains(d))
            days = self.days.around(inside[len(inside) // 2]) if inside else None
            days = days or self.days.halves()
            if days is not None:
                return tuple(_Slice(d) for d in days)
            if not self.days.one_day:
                return None
            times = TimeRange().halves()
        else:
            times = self.times.halves()
        if times is None:
            return None
        return _Slice(self.days, times[0]), _Slice(self.days, times[1])


# -- the sliced listing ------------------------------------------------------------------
@dataclass
class Listing:
    """What a (possibly sliced) listing found.

    `answers` holds the archive's answers, slices in date order; a study that two
    overlapping time slices both returned is kept once (`overlaps` counts the others),
    while repeats inside one answer (Orthanc answers a study UID once per Patient ID) stay
    for the source to count. `gaps` says, one line each, where the archive may hold studies
    the listing could not get; `queries` counts the queries, `sliced` says whether any
    answer had to be cut, `unsliced` counts studies only a capped answer held.
    """

    answers: list = field(default_factory=list)
    queries: int = 0
    sliced: bool = False
    unsliced: int = 0
    overlaps: int = 0
    gaps: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return not self.gaps


#: query(match) -> (answers, capped): one archive query; capped when the archive cut it
Query = Callable[[dict], tuple[Sequence, bool]]


def sliced_listing(
    query: Query, match: dict, uid_of: Callable, date_of: Callable = lambda a: None, *, uids_per_query: int = 50
) -> Listing:
    """Every study `match` selects: the query as given, then slices of each capped answer.

    `match` is a normalized match (see `normalize_match`); `uid_of(answer)` gives an
    answer's StudyInstanceUID or None, `date_of(answer)` its StudyDate text or None.
    A long UID list is sent `uids_per_query` at a time.
    """
    listing = Listing()
    for chunk in uid_chunks(match, uids_per_query):
        listing.queries += 1
        answers, capped = query(chunk)
        top = _Slice(DayRange.parse(chunk.get("StudyDate")))
        listing.answers.extend(_resolve(query, chunk, (uid_of, date_of), listing, top, list(answers), capped))
    return listing


def _ordinal(text: object) -> int | None:
    if not isinstance(text, str) or not _DA.match(text.strip()):
        return None
    try:
        return _day(text.strip())
    except ValueError:
        return None


def _resolve(
    query: Query, base: dict, read: tuple, listing: Listing, piece: _Slice, answers: list, capped: bool
) -> list:
    """The answers of `piece`; a capped answer is replaced by those of its parts."""
    if not capped:
        return answers
    uid_of, date_of = read
    parts = piece.parts([d for d in (_ordinal(date_of(a)) for a in answers) if d is not None])
    if parts is None:
        listing.gaps.append(
            f"{piece.describe()}: the answer is still at the archive's limit and "
            "cannot be cut further; studies beyond the limit are not listed"
        )
        return answers
    listing.sliced = True
    merged: list = []
    merged_uids: set = set()
    for part_slice in parts:
        listing.queries += 1
        part_answers, part_capped = query(part_slice.match(base))
        part = _resolve(query, base, read, listing, part_slice, list(part_answers), part_capped)
        keep = [a for a in part if uid_of(a) is None or uid_of(a) not in merged_uids]
        listing.overlaps += len(part) - len(keep)
        merged.extend(keep)
        merged_uids.update(uid_of(a) for a in part)
    extra = [a for a in answers if uid_of(a) is not None and uid_of(a) not in merged_uids]
    if extra:
        listing.unsliced += len(extra)
        what = "StudyTime" if piece.times is not None or piece.days.one_day else "StudyDate"
        listing.gaps.append(
            f"{piece.describe()}: {len(extra)} study(ies) whose {what} no slice matches (empty or "
            "absent) were in the archive's capped answer; more such studies may lie beyond its limit"
        )
        merged.extend(extra)
    return merged
