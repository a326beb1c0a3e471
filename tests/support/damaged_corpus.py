"""Damaged copies of real DICOM files (those shipped inside pydicom's wheel), one per named case.

Each case starts from a file we did not write, gives it UIDs of its own (so its outcome can be
told apart from every other file's) and damages it: with pydicom where pydicom writes the bad
value (raw elements keep their bytes and their VR as given), with byte surgery on the written
Part 10 file where it does not (lengths, delimiters, truncation, garbage).

A case says what the sync must do with its file: "repaired" (the study is indexed and the
recorded repairs contain every one of `words`) or "quarantined" (the quarantine reason contains
every one of `words`); "skipped" for a file that is not DICOM by the folder source's rule, and
"read" for a value in a retired form that the mapping reads as it was meant (ImagingStudy.started
then contains `words`).
"""

from __future__ import annotations

import io
import random
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import pydicom
import pydicom.datadict
from pydicom.data import get_charset_files, get_testdata_file
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.tag import Tag
from pydicom.uid import generate_uid

STUDY_UID, SERIES_UID, SOP_UID = 0x0020000D, 0x0020000E, 0x00080018


@dataclass(frozen=True)
class Case:
    name: str
    expect: str  # "repaired", "quarantined", "skipped" or "read"
    words: tuple[str, ...]  # what the repair or the reason must say
    build: Callable[[Case], bytes] = field(repr=False)
    #: the study the file belongs to, when not its own (a file left out of an intact study)
    joins: str | None = None
    #: file name bytes when the name itself is unusual
    filename: bytes | None = None
    #: the StudyInstanceUID written, when it is not the generated one
    uid: str | None = None

    @property
    def study_uid(self) -> str:
        """The study the file should end up in (after padding is removed)."""
        if self.joins:
            return str(real(self.joins).StudyInstanceUID)
        return self.uid or uid_for(self.name, "study")

    @property
    def path_name(self) -> bytes:
        return self.filename or f"{self.name}.dcm".encode()


def uid_for(case: str, level: str) -> str:
    return generate_uid(entropy_srcs=["damaged-headers", case, level])


def _file(name: str) -> str:
    found = [p for p in get_charset_files(name)] or [get_testdata_file(name)]
    if not found or found[0] is None:
        raise LookupError(f"{name} is not in the local pydicom data")
    return found[0]


def real(name: str) -> Dataset:
    """A whole real file (pixels included), read without pydicom's value warnings."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(_file(name))


def own_uids(ds: Dataset, case: str) -> Dataset:
    """Give the copy a study, series and instance of its own."""
    ds.StudyInstanceUID = uid_for(case, "study")
    ds.SeriesInstanceUID = uid_for(case, "series")
    ds.SOPInstanceUID = uid_for(case, "sop")
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return ds


def part10(ds: Dataset) -> bytes:
    out = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def raw(ds: Dataset, tag: int, vr: str, value: bytes) -> None:
    """Put `value` into the dataset as it is: written with this VR and these bytes."""
    little = ds.file_meta.TransferSyntaxUID != "1.2.840.10008.1.2.2"
    implicit = ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2"
    ds[tag] = RawDataElement(Tag(tag), vr, len(value), value, 0, implicit, little, True, False)


def text_value(value: str) -> bytes:
    data = value.encode("latin-1")
    return data + b" " * (len(data) % 2)


def uid_value(value: str) -> bytes:
    data = value.encode("ascii")
    return data + b"\x00" * (len(data) % 2)


def dataset_start(data: bytes) -> int:
    """Offset of the data set in a Part 10 file (after the file meta group)."""
    start = data.index(b"DICM") + 4
    return start + 12 + int.from_bytes(data[start + 8 : start + 12], "little")  # (0002,0000) UL


def element_offset(data: bytes, tag: int, little: bool = True) -> int:
    """Offset of the first data set element `tag` (byte surgery)."""
    group, elem = tag >> 16, tag & 0xFFFF
    order = "little" if little else "big"
    needle = group.to_bytes(2, order) + elem.to_bytes(2, order)
    position = data.find(needle, dataset_start(data))
    if position < 0:
        raise LookupError(f"{tag:08X} not found")
    return position


CASES: list[Case] = []


def case(
    name: str, expect: str, *words: str, joins: str | None = None, filename: bytes | None = None, uid: str | None = None
):
    def register(build):
        CASES.append(Case(name, expect, words, build, joins=joins, filename=filename, uid=uid))
        return build

    return register


def edited(base: str, **values):
    """A builder: the base file with its own UIDs and these attributes set (None deletes)."""

    def build(c: Case) -> bytes:
        ds = own_uids(real(base), c.name)
        for keyword, value in values.items():
            if value is None:
                delattr(ds, keyword)
            else:
                raw(ds, Tag(keyword), pydicom.datadict.dictionary_VR(keyword), text_value(value))
        return part10(ds)

    return build


# ---------------------------------------------------------------------- dates and times

for _name, _base, _keyword, _value, _words in [
    ("study_date_month_13", "CT_small.dcm", "StudyDate", "20231345", ("StudyDate", "20231345")),
    ("study_date_year_only", "CT_small.dcm", "StudyDate", "2023", ("StudyDate", "'2023'")),
    ("study_date_word", "MR_small.dcm", "StudyDate", "yesterday", ("StudyDate", "yesterday")),
    ("study_date_seven_digits", "CT_small.dcm", "StudyDate", "2023011", ("StudyDate", "2023011")),
    ("study_date_range", "CT_small.dcm", "StudyDate", "20230101-20230131", ("StudyDate", "20230101-20230131")),
    ("series_date_feb_30", "MR_small.dcm", "SeriesDate", "20230230", ("SeriesDate", "20230230")),
    ("study_time_hour_25", "CT_small.dcm", "StudyTime", "256199", ("StudyTime", "256199")),
    ("study_time_letters", "MR_small.dcm", "StudyTime", "12h30", ("StudyTime", "12h30")),
    ("tz_offset_out_of_range", "CT_small.dcm", "TimezoneOffsetFromUTC", "+2500", ("TimezoneOffsetFromUTC", "+2500")),
    ("tz_offset_words", "CT_small.dcm", "TimezoneOffsetFromUTC", "UTC+1", ("TimezoneOffsetFromUTC", "UTC+1")),
    ("big_endian_study_date", "MR_small_bigendian.dcm", "StudyDate", "20231345", ("StudyDate", "20231345")),
    ("implicit_vr_study_time", "MR_small_implicit.dcm", "StudyTime", "99", ("StudyTime", "'99'")),
]:
    case(_name, "repaired", *_words)(edited(_base, **{_keyword: _value}))


case("study_time_colon", "read", "T12:30:00")(edited("CT_small.dcm", StudyTime="12:30"))


@case("study_date_length_overrun", "quarantined", "StudyDate", "truncated")
def _(c: Case) -> bytes:
    """StudyDate's length field says 0x4000: the element swallows the rest of the header."""
    data = bytearray(part10(own_uids(real("CT_small.dcm"), c.name)))
    at = element_offset(data, 0x00080020)
    assert data[at + 4 : at + 6] == b"DA"
    data[at + 6 : at + 8] = (0x4000).to_bytes(2, "little")
    return bytes(data[: at + 8 + 0x3000])


# ---------------------------------------------------------------------- wrong VRs


@case("study_date_as_us", "repaired", "StudyDate", "VR US")
def _(c: Case) -> bytes:
    """A US value in the StudyDate element (explicit VR says US)."""
    ds = own_uids(real("CT_small.dcm"), c.name)
    raw(ds, 0x00080020, "US", (20231).to_bytes(2, "little"))
    return part10(ds)


@case("patient_name_as_fd", "repaired", "PatientName", "VR FD")
def _(c: Case) -> bytes:
    ds = own_uids(real("MR_small.dcm"), c.name)
    raw(ds, 0x00100010, "FD", b"\x00\x00\x00\x00\x00\x00\xf0\x3f")
    return part10(ds)


@case("instance_number_as_da", "repaired", "InstanceNumber", "VR DA")
def _(c: Case) -> bytes:
    ds = own_uids(real("CT_small.dcm"), c.name)
    raw(ds, 0x00200013, "DA", b"20230101")
    return part10(ds)


@case("modality_as_sq", "repaired", "Modality", "VR SQ")
def _(c: Case) -> bytes:
    ds = own_uids(real("CT_small.dcm"), c.name)
    item = Dataset()
    item.CodeValue = "CT"
    ds[0x00080060] = DataElement(0x00080060, "SQ", Sequence([item]))
    return part10(ds)


@case("implicit_vr_us_bytes_in_da", "repaired", "StudyDate")
def _(c: Case) -> bytes:
    """Implicit VR: two binary bytes where the dictionary says DA."""
    ds = own_uids(real("MR_small_implicit.dcm"), c.name)
    raw(ds, 0x00080020, "DA", (20231).to_bytes(2, "little"))
    return part10(ds)


# ---------------------------------------------------------------------- character sets


@case("charset_unknown", "repaired", "SpecificCharacterSet", "ISO_IR 999")
def _(c: Case) -> bytes:
    ds = own_uids(real("chrGerm.dcm"), c.name)
    raw(ds, 0x00080005, "CS", b"ISO_IR 999")
    return part10(ds)


@case("charset_misspelled", "repaired", "SpecificCharacterSet", "ISO-IR 100")
def _(c: Case) -> bytes:
    ds = own_uids(real("chrFren.dcm"), c.name)
    raw(ds, 0x00080005, "CS", b"ISO-IR 100")
    return part10(ds)


@case("latin1_bytes_under_utf8", "repaired", "PatientName", "ISO_IR 192")
def _(c: Case) -> bytes:
    ds = own_uids(real("chrX1.dcm"), c.name)
    raw(ds, 0x00100010, "PN", "Müller^Jürgen".encode("latin-1") + b" ")
    return part10(ds)


@case("latin1_description_under_utf8", "repaired", "StudyDescription", "ISO_IR 192")
def _(c: Case) -> bytes:
    ds = own_uids(real("chrX1.dcm"), c.name)
    raw(ds, 0x00081030, "LO", "Schädel nativ".encode("latin-1") + b" ")
    return part10(ds)


@case("iso2022_unknown_escape", "repaired", "PatientName", "escape")
def _(c: Case) -> bytes:
    ds = own_uids(real("chrH31.dcm"), c.name)
    raw(ds, 0x00100010, "PN", b"Yamada^Tarou=\x1b$Z;3ED\x1b(B^\x1b$ZB@O:\x1b(B")
    return part10(ds)


@case("iso2022_broken_bytes", "repaired", "PatientName", "ISO 2022 IR 87")
def _(c: Case) -> bytes:
    """A valid escape to JIS X 0208 followed by bytes that are no JIS X 0208 characters."""
    ds = own_uids(real("chrH31.dcm"), c.name)
    raw(ds, 0x00100010, "PN", b"Yamada^Tarou=\x1b$B\xff\xfe\xfd\xfc\x1b(B")
    return part10(ds)


# ---------------------------------------------------------------------- missing and bad UIDs


@case("no_study_uid", "quarantined", "StudyInstanceUID")
def _(c: Case) -> bytes:
    ds = own_uids(real("CT_small.dcm"), c.name)
    del ds.StudyInstanceUID
    return part10(ds)


@case("empty_study_uid", "quarantined", "StudyInstanceUID")
def _(c: Case) -> bytes:
    ds = own_uids(real("MR_small.dcm"), c.name)
    raw(ds, STUDY_UID, "UI", b"")
    return part10(ds)


@case("no_series_uid", "quarantined", "SeriesInstanceUID")
def _(c: Case) -> bytes:
    ds = own_uids(real("CT_small.dcm"), c.name)
    del ds.SeriesInstanceUID
    return part10(ds)


@case("no_sop_uid", "quarantined", "SOPInstanceUID")
def _(c: Case) -> bytes:
    ds = own_uids(real("rtplan.dcm"), c.name)
    del ds.SOPInstanceUID
    return part10(ds)


@case(
    "no_sop_uid_in_intact_study", "repaired", "no_sop_uid_in_intact_study.dcm", "SOPInstanceUID", joins="MR_small.dcm"
)
def _(c: Case) -> bytes:
    ds = real("MR_small.dcm")  # the intact MR study, one more file without its SOP UID
    ds.SeriesInstanceUID = uid_for(c.name, "series")
    del ds.SOPInstanceUID
    return part10(ds)


@case(
    "no_series_uid_in_intact_study",
    "repaired",
    "no_series_uid_in_intact_study.dcm",
    "SeriesInstanceUID",
    joins="CT_small.dcm",
)
def _(c: Case) -> bytes:
    ds = real("CT_small.dcm")
    ds.SOPInstanceUID = uid_for(c.name, "sop")
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    del ds.SeriesInstanceUID
    return part10(ds)


@case(
    "study_uid_letters",
    "repaired",
    "StudyInstanceUID",
    "not a valid DICOM UID",
    uid="1.2.826.0.1.3680043.8.498.12abc.1",
)
def _(c: Case) -> bytes:
    ds = own_uids(real("CT_small.dcm"), c.name)
    raw(ds, STUDY_UID, "UI", uid_value(c.study_uid))
    return part10(ds)


@case("study_uid_over_64", "quarantined", "StudyInstanceUID", "64")
def _(c: Case) -> bytes:
    ds = own_uids(real("CT_small.dcm"), c.name)
    raw(ds, STUDY_UID, "UI", b"1.2.826.0.1.3680043.8.498." + b"1234567890" * 5)
    return part10(ds)


@case("study_uid_trailing_spaces", "repaired", "StudyInstanceUID", "padding")
def _(c: Case) -> bytes:
    ds = own_uids(real("MR_small.dcm"), c.name)
    raw(ds, STUDY_UID, "UI", text_value(c.study_uid + "   "))
    return part10(ds)


@case("study_uid_trailing_nuls", "repaired", "StudyInstanceUID", "padding")
def _(c: Case) -> bytes:
    ds = own_uids(real("CT_small.dcm"), c.name)
    value = c.study_uid.encode() + b"\x00\x00\x00"
    raw(ds, STUDY_UID, "UI", value + b"\x00" * (len(value) % 2))
    return part10(ds)


@case("study_uid_inner_nul", "quarantined", "StudyInstanceUID")
def _(c: Case) -> bytes:
    ds = own_uids(real("CT_small.dcm"), c.name)
    raw(ds, STUDY_UID, "UI", b"1.2.826.0.1.3680043\x00.8.498.77")
    return part10(ds)


@case("series_uid_inner_nul", "quarantined", "SeriesInstanceUID")
def _(c: Case) -> bytes:
    ds = own_uids(real("MR_small.dcm"), c.name)
    raw(ds, SERIES_UID, "UI", b"1.2.826.0.1.3680043\x00.8.498.77")
    return part10(ds)


@case("sop_uid_over_64", "repaired", "SOPInstanceUID")
def _(c: Case) -> bytes:
    ds = own_uids(real("CT_small.dcm"), c.name)
    raw(ds, SOP_UID, "UI", b"1.2.826.0.1.3680043.8.498." + b"1234567890" * 5)
    return part10(ds)


# ---------------------------------------------------------------------- oversized values


@case("patient_name_100k", "repaired", "PatientName", "truncated")
def _(c: Case) -> bytes:
    """Implicit VR: a PN value of 100 kB (its 4-byte length allows it)."""
    ds = own_uids(real("rtplan.dcm"), c.name)
    raw(ds, 0x00100010, "PN", b"Oversized" * 5556 + b"^" + b"Name" * 12500 + b" ")
    return part10(ds)


@case("patient_name_100k_explicit_vr", "repaired", "PatientName", "VR UN")
def _(c: Case) -> bytes:
    """Explicit VR: PN has a 2-byte length, so pydicom writes a 100 kB name as UN."""
    ds = own_uids(real("CT_small.dcm"), c.name)
    raw(ds, 0x00100010, "PN", b"Oversized" * 5556 + b"^" + b"Name" * 12500 + b" ")
    return part10(ds)


@case("study_description_100k", "repaired", "StudyDescription", "truncated")
def _(c: Case) -> bytes:
    ds = own_uids(real("MR_small_implicit.dcm"), c.name)
    raw(ds, 0x00081030, "LO", b"Brain " * 16667 + b"  ")
    return part10(ds)


@case("other_patient_ids_10000", "repaired", "OtherPatientIDsSequence", "10000")
def _(c: Case) -> bytes:
    ds = own_uids(real("CT_small.dcm"), c.name)
    items = []
    for n in range(10000):
        item = Dataset()
        item.PatientID = f"OTHER-{n:05d}"
        item.IssuerOfPatientID = "DAMAGED-CORPUS"
        items.append(item)
    ds.OtherPatientIDsSequence = Sequence(items)
    return part10(ds)


# ---------------------------------------------------------------------- broken structure


@case("truncated_mid_element", "quarantined", "truncated", "PatientName", "StudyInstanceUID")
def _(c: Case) -> bytes:
    data = part10(own_uids(real("CT_small.dcm"), c.name))
    at = element_offset(data, 0x00100010)  # cut inside PatientName's value
    return data[: at + 8 + 5]


@case("truncated_after_uids", "repaired", "truncated", "InstanceNumber")
def _(c: Case) -> bytes:
    data = part10(own_uids(real("CT_small.dcm"), c.name))
    at = element_offset(data, 0x00200013)  # cut inside InstanceNumber's value
    return data[: at + 8 + 1]


@case("truncated_mid_tag", "quarantined", "StudyInstanceUID")
def _(c: Case) -> bytes:
    data = part10(own_uids(real("MR_small.dcm"), c.name))
    return data[: element_offset(data, 0x00080060) + 3]


@case("truncated_after_preamble", "quarantined", "StudyInstanceUID")
def _(c: Case) -> bytes:
    return part10(real("CT_small.dcm"))[:132]


@case("garbage_dataset", "quarantined", "StudyInstanceUID")
def _(c: Case) -> bytes:
    """Preamble and file meta intact, the data set replaced by random bytes."""
    data = part10(own_uids(real("CT_small.dcm"), c.name))
    at = element_offset(data, 0x00080005)
    return data[:at] + random.Random(c.name).randbytes(4000)


@case("garbage_after_dicm", "quarantined", "StudyInstanceUID")
def _(c: Case) -> bytes:
    data = part10(real("MR_small.dcm"))
    return data[:132] + random.Random(c.name).randbytes(4000)


@case("zero_bytes", "skipped")
def _(c: Case) -> bytes:
    return b""


@case("sequence_without_delimiter", "quarantined", "unreadable")
def _(c: Case) -> bytes:
    """An undefined-length ProcedureCodeSequence whose delimiter is missing: the elements
    after it are read as if they were items."""
    ds = own_uids(real("CT_small.dcm"), c.name)
    item = Dataset()
    item.CodeValue = "CTHEAD"
    item.CodingSchemeDesignator = "99LOCAL"
    item.CodeMeaning = "CT head"
    ds.ProcedureCodeSequence = Sequence([item])
    ds["ProcedureCodeSequence"].is_undefined_length = True
    data = part10(ds)
    at = element_offset(data, 0x00081032)
    delimiter = data.index(b"\xfe\xff\xdd\xe0\x00\x00\x00\x00", at)
    return data[:delimiter] + data[delimiter + 8 :]


# ---------------------------------------------------------------------- odd values


for _name, _base, _keyword, _value, _words in [
    ("patient_sex_x", "CT_small.dcm", "PatientSex", "X", ("PatientSex", "'X'")),
    ("birth_date_in_future", "MR_small.dcm", "PatientBirthDate", "29991231", ("PatientBirthDate", "after")),
    ("birth_date_invalid", "CT_small.dcm", "PatientBirthDate", "19801332", ("PatientBirthDate",)),
    ("instance_number_1a", "CT_small.dcm", "InstanceNumber", "1a", ("InstanceNumber",)),
    ("instance_number_negative", "MR_small.dcm", "InstanceNumber", "-5", ("InstanceNumber",)),
    ("instance_number_too_big", "CT_small.dcm", "InstanceNumber", "99999999999", ("InstanceNumber",)),
    ("series_number_1a", "MR_small.dcm", "SeriesNumber", "1a", ("SeriesNumber",)),
    (
        "study_instances_not_a_number",
        "CT_small.dcm",
        "NumberOfStudyRelatedInstances",
        "many",
        ("NumberOfStudyRelatedInstances",),
    ),
    ("modality_unknown", "CT_small.dcm", "Modality", "XX", ("Modality", "'XX'")),
    ("modality_missing", "MR_small.dcm", "Modality", None, ("Modality missing",)),
    ("sop_class_missing", "CT_small.dcm", "SOPClassUID", None, ("SOPClassUID",)),
    ("patient_id_missing", "MR_small.dcm", "PatientID", None, ("PatientID",)),
    (
        "description_control_chars",
        "CT_small.dcm",
        "StudyDescription",
        "Head\x01\x02CT",
        ("StudyDescription", "control characters"),
    ),
]:
    case(_name, "repaired", *_words)(edited(_base, **{_keyword: _value}))


@case("duplicate_instance", "repaired", "repeating a SOPInstanceUID", joins="rtplan.dcm")
def _(c: Case) -> bytes:
    return part10(real("rtplan.dcm"))


@case("latin1_file_name", "quarantined", "StudyInstanceUID", filename="Sch\xe4del.dcm".encode("latin-1"))
def _(c: Case) -> bytes:
    ds = own_uids(real("MR_small.dcm"), c.name)
    del ds.StudyInstanceUID
    return part10(ds)


#: intact real files the damaged ones sit beside (several transfer syntaxes and charsets)
INTACT = [
    "CT_small.dcm",
    "MR_small.dcm",
    "rtplan.dcm",
    "test-SR.dcm",
    "waveform_ecg.dcm",
    "JPEG2000.dcm",
    "chrFren.dcm",
    "chrRuss.dcm",
    "chrH32.dcm",
    "chrX2.dcm",
]
