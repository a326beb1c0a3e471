"""A folder of DICOM files (and DICOMDIR media) as a source.

The folder is walked recursively in sorted order, each file's header is read once with
pydicom up to the last mapped attribute (never pixel data), and instances are grouped by
StudyInstanceUID, then SeriesInstanceUID:

- study attributes: PATIENT + STUDY tags of the study's first file in walk order;
- series attributes: SERIES tags of the series' first instance;
- instances: INSTANCE tags of each file, in walk order; a SOPInstanceUID seen again in
  the same series (the same image saved twice) is kept once and the study notes it.

What is a DICOM file: a Part 10 file ("DICM" after the 128-byte preamble), or a file
without preamble that pydicom reads (force=True) and that carries both SOPInstanceUID
and StudyInstanceUID. Everything else is skipped and counted. A DICOMDIR is read for
its references (checked against what the walk found), never as an instance. A DICOM file
that cannot be parsed, lacks Study/Series/SOP Instance UID, or whose StudyInstanceUID
cannot be a FHIR id (over 64 characters, characters a UID cannot have), becomes a
StudyFailure with its location (path relative to the folder), unless its study was
otherwise read, in which case the study's `repairs` say which file was left out. A file
cut short inside a mapped attribute loses that attribute, with a repair note.

Query-only attributes (ModalitiesInStudy, NumberOfStudyRelated*) are not invented:
files do not carry them; mapping counts series and instances itself.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import orjson
from pydicom.charset import convert_encodings
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.filereader import read_partial
from pydicom.tag import BaseTag, Tag

from app.ids import valid_id
from app.mapping import tags
from app.sources.base import ChangeFeed, SeriesRecord, StudyFailure, StudyRecord
from app.sources.dicom_json import dataset_to_dicom_json
from app.sources.errors import SourceError

MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"

_DIRECTORY_RECORD_SEQUENCE = 0x00041220

_SERIES_TAGS = sorted(Tag(t) for t in tags.SERIES)
_STUDY_TAGS = sorted(Tag(t) for t in {**tags.PATIENT, **tags.STUDY})
# What pydicom keeps while parsing (it adds SpecificCharacterSet itself). A DICOMDIR's
# record sequence is not kept: its references are found in its bytes (see _referenced_ids).
_SPECIFIC_TAGS: list[BaseTag | int] = sorted(Tag(t) for t in tags.ALL)
# Stop parsing past the highest mapped tag: nothing after it (pixel data, RT/SR content
# of later groups, private groups) is read at all.
_after_last_mapped = max(int(t, 16) for t in tags.ALL).__lt__
# A mapped value larger than this is skipped by seek instead of read (a garbage length in
# a non-DICOM file then costs nothing); pydicom re-reads it from the file if accessed.
_DEFER_SIZE = 1 << 20

# Per-file fast path: the key attributes with plain ASCII VRs are decoded straight from
# the raw bytes (UI, CS, IS: no character set applies). Anything unusual (another VR on
# the wire, a deferred or already converted value, padding inside a value, a number
# pydicom would normalise) goes through `dataset_to_dicom_json`, as do the sequence and
# text attributes; a unit test checks both paths give the same JSON on every test file.
_ASCII_VR = {
    tags.SOP_CLASS_UID: "UI",
    tags.SOP_INSTANCE_UID: "UI",
    tags.STUDY_UID: "UI",
    tags.SERIES_UID: "UI",
    tags.INSTANCE_NUMBER: "IS",
    tags.IMAGE_TYPE: "CS",
    tags.CONTENT_LABEL: "CS",
    tags.IMAGE_LATERALITY: "CS",
}
_VR_OF = {k: vr for k, vr in _ASCII_VR.items() if k in tags.INSTANCE or k in (tags.STUDY_UID, tags.SERIES_UID)}
_FAST = [(Tag(key), key, vr) for key, vr in sorted(_VR_OF.items())]
_SLOW = [Tag(key) for key in sorted(k for k in tags.INSTANCE if k not in _VR_OF)]
_IS_RE = re.compile(r" *[+-]?[0-9]{1,12} *")
_NOT_FAST = object()


def _stop(tag: BaseTag, vr: str | None, length: int) -> bool:
    return _after_last_mapped(tag)


def _fast_value(elem: DataElement | RawDataElement, vr: str) -> object:
    """DICOM JSON "Value" list of a raw ASCII element, or _NOT_FAST."""
    if type(elem) is not RawDataElement or (elem.VR is not None and vr != elem.VR):
        return _NOT_FAST
    raw = elem.value
    if raw is None:
        return _NOT_FAST  # deferred
    if vr == "UI" and (raw[-1:] == b" " or raw[-2:] == b"\x00\x00"):
        return _NOT_FAST  # padding a UID cannot have: the slow path notes it
    try:
        text = raw.decode("ascii").rstrip(" \x00")
    except (UnicodeDecodeError, AttributeError):
        return _NOT_FAST
    if not text:
        return []
    parts = text.split("\\")
    if vr == "IS":
        if all(_IS_RE.fullmatch(p) for p in parts):
            return [int(p) for p in parts]
        return _NOT_FAST
    for part in parts:
        if not part or part.strip() != part or "\x00" in part:
            return _NOT_FAST
    return parts


def _instance_json(ds: Dataset) -> tuple[dict, list[str]]:
    """DICOM JSON of the key attributes of one file: what `dataset_to_dicom_json` gives."""
    out: dict = {}
    slow: list[BaseTag] = []
    get_item = ds.get_item
    for tag, key, vr in _FAST:
        elem = get_item(tag, keep_deferred=True)
        if elem is None:
            continue
        value = _fast_value(elem, vr)
        if value is _NOT_FAST:
            slow.append(tag)
        elif value:
            out[key] = {"vr": vr, "Value": value}
        else:
            out[key] = {"vr": vr}
    slow.extend(tag for tag in _SLOW if tag in ds)
    if not slow:
        return out, []
    extra, repairs = dataset_to_dicom_json(ds, sorted(slow))
    out.update(extra)
    return {key: out[key] for key in sorted(out)}, repairs


def _raw_text(elem: DataElement | RawDataElement | None) -> str:
    """Text of a raw or converted single-valued ASCII element ('' if absent)."""
    if elem is None:
        return ""
    value = elem.value
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    return str(value or "").rstrip(" \x00")


# (0004,1500) ReferencedFileID (CS): explicit VR little/big endian or implicit VR LE.
_REFERENCED_FILE_ID = re.compile(rb"\x04\x00\x00\x15|\x00\x04\x15\x00")
_FILE_ID_VALUE = re.compile(rb"[A-Za-z0-9_ \\;.-]+\x00?")


def _referenced_ids(data: bytes) -> list[list[str]]:
    """The ReferencedFileID values of a DICOMDIR, found in its bytes.

    Cheaper than building a pydicom Dataset per directory record (which costs about a
    quarter of the scan of a DICOMDIR media); a value must look like a file ID (CS
    characters) to count, so stray byte patterns do not.
    """
    ids = []
    for match in _REFERENCED_FILE_ID.finditer(data):
        pos = match.end()
        big_endian = match.group() == b"\x00\x04\x15\x00"
        if data[pos : pos + 2] == b"CS":  # explicit VR: 2-byte length
            length = int.from_bytes(data[pos + 2 : pos + 4], "big" if big_endian else "little")
            start = pos + 4
        elif not big_endian:  # implicit VR: 4-byte length
            length = int.from_bytes(data[pos : pos + 4], "little")
            start = pos + 4
        else:
            continue
        value = data[start : start + length]
        if not 0 < length <= 1024 or len(value) != length or not _FILE_ID_VALUE.fullmatch(value):
            continue
        parts = [p.strip().split(";")[0] for p in value.decode("ascii").rstrip(" \x00").split("\\")]
        parts = [p for p in parts if p]
        if parts:
            ids.append(parts)
    return ids


def _first_value(element: dict | None) -> str | None:
    if not element:
        return None
    values = element.get("Value")
    if not values:
        return None
    value = values[0]
    return value if isinstance(value, str) and value else None


def _cut_element(ds: Dataset, size: int) -> RawDataElement | None:
    """The mapped element the end of the file cuts short, if any (pydicom reads what is left)."""
    for tag in ds.keys():  # noqa: SIM118 - iterating a pydicom Dataset yields elements, not tags
        elem = ds.get_item(tag, keep_deferred=True)
        if type(elem) is RawDataElement and elem.length != 0xFFFFFFFF and elem.value_tell + elem.length > size:
            return elem
    return None


def _uid_problem(uid: str) -> str:
    if len(uid) > 64:
        return f"StudyInstanceUID is {len(uid)} characters long; a UID has at most 64"
    return f"StudyInstanceUID {uid!r} has characters a UID cannot have"


def _has_dicm_prefix(path: str) -> bool:
    try:
        with open(path, "rb") as fp:
            head = fp.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:] == b"DICM"


def _no_match(match: dict | None) -> None:
    if match is not None:
        raise ValueError("a folder answers no query: it is read whole")


class _Study:
    __slots__ = ("uid", "attrs", "series", "repairs", "sops", "duplicates")

    def __init__(self, uid: str, attrs: dict, repairs: list[str]):
        self.uid = uid
        self.attrs = attrs
        self.series: dict[str, SeriesRecord] = {}
        self.repairs: dict[str, None] = dict.fromkeys(repairs)  # ordered set
        self.sops: set[tuple[str, str]] = set()
        self.duplicates = 0

    def record(self) -> StudyRecord:
        repairs = list(self.repairs)
        if self.duplicates:
            repairs.append(f"ignored {self.duplicates} file(s) repeating a SOPInstanceUID already read")
        return StudyRecord(uid=self.uid, attrs=self.attrs, series=list(self.series.values()), repairs=repairs)


class FolderSource:
    """Every study found under `path` (files and DICOMDIR media). A folder answers no query
    and keeps no change feed: each sync reads it whole.

    `extra_tags` (tag numbers) are read as well, into the study and series attributes: the
    private attributes a mapping profile maps (`Profile.private_tag_numbers()`).
    `default_charset` (a Specific Character Set term, a profile's `character_set.default`)
    is how the text of files that declare no Specific Character Set is read.
    """

    def __init__(
        self,
        name: str,
        path: str | Path,
        extra_tags: Iterable[int] = (),
        only: Iterable[str | Path] | None = None,
        default_charset: str | None = None,
    ):
        self.name = name
        self.path = Path(path)
        self._default_charset = default_charset
        #: these files (under `path`) instead of a walk of the folder, e.g. one file to explain
        self._only = [str(Path(p)) for p in only] if only is not None else None
        extra = sorted({Tag(t) for t in extra_tags})
        self._study_tags = sorted({*_STUDY_TAGS, *extra}) if extra else _STUDY_TAGS
        self._series_tags = sorted({*_SERIES_TAGS, *extra}) if extra else _SERIES_TAGS
        self._specific_tags: list[BaseTag | int] = sorted({*_SPECIFIC_TAGS, *extra}) if extra else _SPECIFIC_TAGS
        last = max([*extra, max(_SPECIFIC_TAGS)])
        self._stop: Callable[[BaseTag, str | None, int], bool] = (
            (lambda tag, vr, length: tag > last) if extra else _stop
        )
        self.stats: dict = {}
        self.answers_queries = False
        self.change_feed: ChangeFeed | None = None
        #: a walk of the whole folder sees every study: what it did not see is gone
        self.listing_complete = True
        self._studies: dict[str, _Study] | None = None
        self._failures: list[StudyFailure] = []
        self._total: int | None = None
        self._reset_stats()

    # -- Source protocol -------------------------------------------------------------
    def total(self, match: dict | None = None) -> int | None:
        """Number of items `iter_studies` yields (StudyRecords + StudyFailures).

        Scans the folder if that has not happened yet.
        """
        _no_match(match)
        if self._total is None:
            self._scan()
        return self._total

    def iter_studies(self, match: dict | None = None) -> Iterator[StudyRecord | StudyFailure]:
        """Yield each study (in order of first appearance in the walk), then failures.

        The scan happens on the first call (or reuses the one `total()` made); each
        later call rescans the folder. Studies are released as they are yielded.
        """
        _no_match(match)
        if self._studies is None:
            self._scan()
        studies, failures = self._studies, self._failures
        self._studies, self._failures = None, []
        while studies:
            uid = next(iter(studies))
            yield studies.pop(uid).record()
        yield from failures

    # -- scanning --------------------------------------------------------------------
    def _reset_stats(self) -> None:
        self.stats = {
            "files": 0,  # regular files seen by the walk
            "dicom": 0,  # files read as DICOM instances
            "skipped": 0,  # not DICOM
            "dicomdir": 0,  # DICOMDIR files read
            "dicomdir_refs": 0,  # instance files the DICOMDIRs reference
            "dicomdir_missing": 0,  # ... that the walk did not find as DICOM
            "failed": 0,  # DICOM files that yield a failure or a repair
            "duplicates": 0,  # files repeating an instance already read
            "studies": 0,
            "series": 0,
            "instances": 0,
        }

    def _walk(self, directory: str) -> Iterator[str]:
        try:
            with os.scandir(directory) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            if directory == str(self.path):
                raise SourceError(self.name, str(self.path), f"cannot list folder: {exc}") from exc
            self._fail(None, f"cannot list directory: {type(exc).__name__}", directory)
            return
        for entry in entries:
            try:
                if entry.is_dir(follow_symlinks=False):
                    yield from self._walk(entry.path)
                elif entry.is_file():
                    yield entry.path
            except OSError:
                continue

    def _location(self, path: str) -> str:
        rel = path[self._root_len :]
        return rel.replace(os.sep, "/") if os.sep != "/" else rel

    def _fail(self, uid: str | None, reason: str, path: str) -> None:
        location = self._location(path) if path.startswith(self._root) else path
        # a file name that is not UTF-8 cannot be stored as text: shown with U+FFFD instead
        location = location.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
        self.stats["failed"] += 1
        assert self._studies is not None  # failures are met while a scan fills it
        study = self._studies.get(uid) if uid else None
        if study is not None:
            study.repairs[f"left out {location}: {reason}"] = None
        else:
            self._failures.append(StudyFailure(uid=uid, reason=reason, location=location))

    def _scan(self) -> None:
        if not self.path.is_dir():
            raise SourceError(self.name, str(self.path), "folder does not exist or is not a directory")
        self._reset_stats()
        self._studies = {}
        self._failures = []
        self._root = str(self.path)
        self._root_len = len(os.path.join(self._root, ""))
        dicomdirs: list[str] = []
        found: set[str] = set()  # lower-cased locations of DICOM files, for DICOMDIR checks
        stats = self.stats
        with warnings.catch_warnings():
            # pydicom warns about every oddity of every file; the stats and failures are
            # the report, and a large walk must not flood stderr
            warnings.simplefilter("ignore")
            for path in self._only if self._only is not None else self._walk(self._root):
                stats["files"] += 1
                kind = self._read_one(path, dicomdirs)
                if kind:
                    found.add(self._location(path).lower())
            for path in dicomdirs:
                self._check_dicomdir(path, found)
        # a failure whose study turned up later in the walk becomes a repair of it
        pending, self._failures = self._failures, []
        for failure in pending:
            study = self._studies.get(failure.uid) if failure.uid else None
            if study is not None:
                study.repairs[f"left out {failure.location}: {failure.reason}"] = None
            else:
                self._failures.append(failure)
        stats["studies"] = len(self._studies)
        self._total = len(self._studies) + len(self._failures)

    def _read_one(self, path: str, dicomdirs: list) -> bool:
        """Read one file into the study map; return True if it is DICOM."""
        stats = self.stats
        try:
            with open(path, "rb") as fp:
                ds = read_partial(fp, self._stop, defer_size=_DEFER_SIZE, force=True, specific_tags=self._specific_tags)
                size = os.fstat(fp.fileno()).st_size
                cut = _cut_element(ds, size) if fp.tell() >= size else None
        except Exception as exc:  # noqa: BLE001 - any parse error of any file
            if _has_dicm_prefix(path):
                self._fail(None, f"unreadable DICOM file: {type(exc).__name__}: {exc}"[:300], path)
                return True
            stats["skipped"] += 1
            return False
        part10 = ds.preamble is not None
        truncated = ""
        if cut is not None:
            del ds[cut.tag]
            truncated = (
                f"the file ends inside {tags.ALL.get(f'{cut.tag:08X}', 'an attribute')} "
                f"({cut.tag:08X}), {cut.value_tell + cut.length - size} bytes short: "
                "truncated"
            )

        if _DIRECTORY_RECORD_SEQUENCE in ds or (
            _raw_text(ds.file_meta.get_item(0x00020002, keep_deferred=True)) == MEDIA_STORAGE_DIRECTORY
        ):
            stats["dicomdir"] += 1
            dicomdirs.append(path)
            return True

        charset_assumed = self._default_charset if self._default_charset and 0x00080005 not in ds else None
        if charset_assumed:
            implicit_vr, little_endian = ds.original_encoding
            ds.set_original_encoding(implicit_vr, little_endian, convert_encodings([charset_assumed]))
        try:
            instance, repairs = _instance_json(ds)
        except Exception as exc:  # noqa: BLE001
            if part10:
                self._fail(None, f"unreadable DICOM file: {type(exc).__name__}: {exc}"[:300], path)
                return True
            stats["skipped"] += 1
            return False
        study_uid = _first_value(instance.pop(tags.STUDY_UID, None))
        series_uid = _first_value(instance.pop(tags.SERIES_UID, None))
        sop_uid = _first_value(instance.get(tags.SOP_INSTANCE_UID))
        if not part10 and not (study_uid and sop_uid):
            stats["skipped"] += 1  # read by force, but not an instance: not DICOM
            return False
        missing = f"{truncated}; DICOM file without" if truncated else "DICOM file without"
        if not study_uid:
            self._fail(None, f"{missing} StudyInstanceUID", path)
            return True
        if not valid_id(study_uid):
            self._fail(None, _uid_problem(study_uid), path)
            return True
        if not series_uid:
            self._fail(study_uid, f"{missing} SeriesInstanceUID", path)
            return True
        if not sop_uid:
            self._fail(study_uid, f"{missing} SOPInstanceUID", path)
            return True

        stats["dicom"] += 1
        assert self._studies is not None  # files are read while a scan fills it
        study = self._studies.get(study_uid)
        if study is None:
            attrs, study_repairs = dataset_to_dicom_json(ds, self._study_tags)
            if charset_assumed and not orjson.dumps(attrs).isascii():
                study_repairs.append(
                    f"SpecificCharacterSet (0008,0005) absent; text read as "
                    f"{self._default_charset} (mapping profile character_set.default)"
                )
            study = self._studies[study_uid] = _Study(study_uid, attrs, study_repairs)
        if (series_uid, sop_uid) in study.sops:
            study.duplicates += 1
            stats["duplicates"] += 1
            return True
        study.sops.add((series_uid, sop_uid))
        series = study.series.get(series_uid)
        if series is None:
            series_attrs, series_repairs = dataset_to_dicom_json(ds, self._series_tags)
            series = study.series[series_uid] = SeriesRecord(attrs=series_attrs)
            stats["series"] += 1
            for repair in series_repairs:
                study.repairs[repair] = None
        series.instances.append(instance)
        stats["instances"] += 1
        for repair in repairs:
            study.repairs[repair] = None
        if truncated:
            stats["failed"] += 1
            study.repairs[f"{self._location(path)}: {truncated}; left out"] = None
        return True

    def _check_dicomdir(self, path: str, found: set[str]) -> None:
        """Count the files a DICOMDIR references; report those the walk did not find."""
        try:
            with open(path, "rb") as fp:
                data = fp.read()
        except OSError:
            return
        base = self._location(os.path.dirname(path) + os.sep)  # "" or "sub/dir/"
        for parts in _referenced_ids(data):
            location = base + "/".join(parts)
            self.stats["dicomdir_refs"] += 1
            if location.lower() not in found:
                self.stats["dicomdir_missing"] += 1
                self._failures.append(
                    StudyFailure(
                        uid=None,
                        reason=f"referenced by DICOMDIR {self._location(path)} but missing or not DICOM",
                        location=location,
                    )
                )
