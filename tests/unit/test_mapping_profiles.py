"""Mapping profiles: layering, the checks that refuse a broken profile (with file, line and
reason), and what a profile changes in the mapping of real DICOM files (pydicom's test data).

Expected values are read from the files with plain pydicom, never from the mapping.
"""

from __future__ import annotations

import shutil
import warnings
from dataclasses import replace
from pathlib import Path

import pydicom
import pytest
import yaml
from pydicom.data import get_testdata_file

from app.config import ConfigError, load_config
from app.mapping import map_endpoint, map_study
from app.mapping.claims import STRUCTURE_DEFINITION
from app.mapping.context import MappingContext
from app.mapping.endpoint import REQUIRES_ACCESS_TOKEN
from app.mapping.profile import BASE_FILE, VENDORS_DIR, base_profile, source_profile
from tests.support.keys import TEST_IDENTITY, keyed

DCM = "http://dicom.nema.org/resources/ontology/DCM"
SCT = "http://snomed.info/sct"


def _read(name: str):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(get_testdata_file(name), stop_before_pixels=True)


def line_of(path: Path, text: str) -> int:
    """1-based line of the first line of a file containing `text`."""
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if text in line:
            return number
    raise AssertionError(f"{text!r} not in {path}")


@pytest.fixture
def archive(tmp_path):
    """A folder source's files: real pydicom test files, copied."""

    def make(*names: str) -> Path:
        root = tmp_path / "archive"
        root.mkdir(exist_ok=True)
        for name in names:
            shutil.copyfile(get_testdata_file(name), root / name)
        return root

    return make


@pytest.fixture
def config_with(tmp_path, archive):
    """Write a config with one folder source (and optional extra files) and load it."""

    def make(files=("CT_small.dcm",), files_to_write=None, **source):
        for name, text in (files_to_write or {}).items():
            (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / name).write_text(text)
        data = {
            "store": f"sqlite:///{tmp_path / 'facade.db'}",
            "sources": [{"name": "site-a", "type": "folder", "path": str(archive(*files)), **source}],
        }
        (tmp_path / "config.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
        return load_config(tmp_path / "config.yaml", environ={})

    return make


def mapped_studies(src):
    return {
        m.imaging_study["id"]: m
        for m in (map_study(item, keyed(src.mapping_context())) for item in src.open().iter_studies())
    }


# --- layering ------------------------------------------------------------------------------


def test_base_profile_is_the_shipped_file_and_cites_its_lines():
    profile = base_profile()
    assert profile.layers == ("fhir_profiles/mapping/base.yaml",)
    assert profile.modality_synonyms["PET"] == "PT"
    assert (
        profile.rule("modality", "synonym", "PET") == f"fhir_profiles/mapping/base.yaml:{line_of(BASE_FILE, 'PET: PT')}"
    )
    assert profile.rule("body_part", "term", "HIP") == f"fhir_profiles/mapping/base.yaml:{line_of(BASE_FILE, 'HIP:')}"


def test_layers_merge_base_then_vendor_then_source(tmp_path):
    vendor = tmp_path / "vendor.yaml"
    vendor.write_text(
        "modality:\n  synonyms:\n    PET: NM\n    TOMO: CT\nissuers:\n  HOSP: urn:oid:1.1\n  OTHER: urn:oid:9.9\n"
    )
    own = tmp_path / "own.yaml"
    own.write_text("modality:\n  synonyms:\n    TOMO: MR\n    MRI: null\nissuers:\n  HOSP: urn:oid:2.2\n")
    profile = source_profile(str(vendor), "own.yaml", tmp_path, "config.yaml")
    # base's PET -> PT replaced by the vendor; the source overrides the vendor's TOMO
    assert profile.modality_synonyms["PET"] == "NM"
    assert profile.modality_synonyms["TOMO"] == "MR"
    assert "MRI" not in profile.modality_synonyms  # null removes a base entry
    assert profile.modality_synonyms["NMR"] == "MR"  # untouched base entries stay
    assert profile.issuers == {"HOSP": "urn:oid:2.2", "OTHER": "urn:oid:9.9"}
    assert profile.rule("modality", "synonym", "PET").endswith("vendor.yaml:3")
    assert profile.rule("modality", "synonym", "TOMO").endswith("own.yaml:3")
    assert profile.rule("issuers", "OTHER").endswith("vendor.yaml:7")
    assert [Path(layer).name for layer in profile.layers] == ["base.yaml", "vendor.yaml", "own.yaml"]


def test_private_tag_rules_add_up_and_a_later_rule_replaces_the_same_attribute(tmp_path):
    vendor = tmp_path / "v.yaml"
    vendor.write_text(
        "private_tags:\n"
        "  - {creator: ACME 1.0, group: '0019', element: '10', extension: acme-a}\n"
        "  - {creator: ACME 1.0, group: '0019', element: '11', extension: acme-b}\n"
    )
    profile = source_profile(
        str(vendor),
        {
            "private_tags": [
                {"creator": "ACME 1.0", "group": "0019", "element": "11", "target": "ImagingStudy.description"}
            ]
        },
        tmp_path,
        str(tmp_path / "config.yaml"),
    )
    by_element = {rule.element: rule for rule in profile.private_tags}
    assert by_element[0x10].extension == STRUCTURE_DEFINITION + "acme-a"
    assert by_element[0x11].target == "ImagingStudy.description" and by_element[0x11].extension is None


def test_older_config_keys_are_the_top_layer(config_with):
    config = config_with(
        issuer_systems={"HOSP_A": "urn:oid:1.2.3"},
        patient_id_system="urn:oid:2.999.7",
        profile={"issuers": {"HOSP_B": "urn:oid:4.5.6"}},
    )
    src = config.sources[0]
    assert src.profile.issuers == {"HOSP_A": "urn:oid:1.2.3", "HOSP_B": "urn:oid:4.5.6"}
    assert src.issuer_systems == src.profile.issuers  # what on-demand fetching looks up
    assert src.patient_id_system == "urn:oid:2.999.7"


def test_an_issuer_configured_twice_differently_is_refused(config_with):
    with pytest.raises(ConfigError) as caught:
        config_with(issuer_systems={"HOSP_A": "urn:oid:1.2.3"}, profile={"issuers": {"HOSP_A": "urn:oid:9.9"}})
    message = str(caught.value)
    assert "sources[0].profile" in message and "HOSP_A" in message and "keep one" in message


# --- broken profiles: refused with file, line and reason -----------------------------------


@pytest.mark.parametrize(
    "text, line, expected",
    [
        ("modality:\n  synonyms:\n    PET: [PT\n", 4, "not valid YAML"),
        ("modality:\n  synonym:\n    PET: PT\n", 2, "modality.synonym: unknown key"),
        ("institution:\n  location: maybe\n", 2, "institution.location: Not a valid boolean"),
        ("issuers:\n  HOSP: 12\n", 2, "issuers.HOSP: Not a valid string"),
        ("issuers:\n  HOSP: not a uri\n", 2, "is not a URI"),
        ("modality:\n  synonyms:\n    PET: PET\n", 3, "'PET' is not a DICOM modality code"),
        ("body_part:\n  terms:\n    KNEECAP: '1234567'\n", 3, "'1234567' is not a SNOMED CT code"),
        ("names:\n  format: last-first\n", 2, "names.format: Must be one of"),
        ("dates:\n  formats: ['%d.%m']\n", 2, "must contain a year, a month and a day"),
        (
            "private_tags:\n  - creator: X\n    group: '0010'\n    element: '01'\n    extension: x\n",
            3,
            "private_tags[0].group: '0010' is not a private group",
        ),
        (
            "private_tags:\n  - creator: X\n    group: '0019'\n    element: '01'\n",
            2,
            "give either target (a FHIR element) or extension",
        ),
        ("modality:\n  synonyms:\n    PET: PT\n    PET: NM\n", 4, "key 'PET' is written twice"),
        ("- a list\n", 1, "a profile is a mapping of keys"),
    ],
)
def test_a_broken_profile_file_is_refused_with_file_line_and_reason(config_with, text, line, expected):
    with pytest.raises(ConfigError) as caught:
        config_with(profile="profiles/site-a.yaml", files_to_write={"profiles/site-a.yaml": text})
    message = str(caught.value)
    assert f"site-a.yaml:{line}:" in message, message
    assert expected in message, message
    assert "sources[0].profile" in message


def test_a_broken_inline_profile_names_the_config_line(config_with, tmp_path):
    with pytest.raises(ConfigError) as caught:
        config_with(profile={"modality": {"synonyms": {"PET": "XX"}}})
    message = str(caught.value)
    written = (tmp_path / "config.yaml").read_text().splitlines()
    line = next(i for i, text in enumerate(written, 1) if "PET: XX" in text)
    assert f"config.yaml:{line}: modality.synonyms.PET: 'XX' is not a DICOM modality code" in message


def test_an_unknown_vendor_is_named_with_the_ones_there_are(config_with):
    with pytest.raises(ConfigError) as caught:
        config_with(vendor="acme")
    assert "sources[0].vendor" in str(caught.value) and "'acme'" in str(caught.value)
    assert "ge" in str(caught.value)


def test_a_missing_profile_file_is_named(config_with):
    with pytest.raises(ConfigError) as caught:
        config_with(profile="nowhere.yaml")
    assert "nowhere.yaml: cannot read the profile" in str(caught.value)


def test_check_config_prints_the_file_line_and_reason(tmp_path, config_with):
    from click.testing import CliRunner

    from app.cli import main

    with pytest.raises(ConfigError):
        config_with(profile="p.yaml", files_to_write={"p.yaml": "modality:\n  synonyms:\n    MRI: MRT\n"})
    result = CliRunner().invoke(main, ["check-config", "--config", str(tmp_path / "config.yaml")])
    assert result.exit_code == 2
    assert "p.yaml:3: modality.synonyms.MRI: 'MRT' is not a DICOM modality code" in result.output
    assert "Traceback" not in result.output


# --- what a profile changes in the output of real files ------------------------------------


def test_the_ge_vendor_profile_maps_gems_private_attributes_of_a_real_file(config_with):
    ds = _read("CT_small.dcm")
    block = ds.private_block(0x0009, "GEMS_IDEN_01")
    product, suite = block[0x04].value, block[0x02].value

    plain = mapped_studies(config_with().sources[0])
    with_vendor = mapped_studies(config_with(vendor="ge").sources[0])
    study = with_vendor[ds.StudyInstanceUID].imaging_study
    assert study["extension"] == [{"url": STRUCTURE_DEFINITION + "ge-suite-id", "valueString": suite}]
    assert study["series"][0]["extension"] == [{"url": STRUCTURE_DEFINITION + "ge-product-id", "valueString": product}]
    before = plain[ds.StudyInstanceUID].imaging_study
    assert "extension" not in before and "extension" not in before["series"][0]
    # everything else is the same
    strip = {k: v for k, v in study.items() if k not in ("extension", "series")}
    assert strip == {k: v for k, v in before.items() if k not in ("extension", "series")}


def test_a_private_attribute_can_fill_a_fhir_element(config_with):
    ds = _read("examples_overlay.dcm")  # Siemens: creator SIEMENS MEDCOM HEADER in group 0029
    creator_block = next(
        e.tag.element for e in ds.group_dataset(0x0029) if e.tag.element < 0x100 and e.value == "SIEMENS MEDCOM HEADER"
    )
    element = next(
        e
        for e in ds.group_dataset(0x0029)
        if e.tag.element >> 8 == creator_block and isinstance(e.value, str) and e.value.strip()
    )
    src = config_with(
        files=("examples_overlay.dcm",),
        profile={
            "private_tags": [
                {
                    "creator": "SIEMENS MEDCOM HEADER",
                    "group": "0029",
                    "element": f"{element.tag.element & 0xFF:02X}",
                    "target": "ImagingStudy.series.description",
                }
            ]
        },
    ).sources[0]
    series = mapped_studies(src)[ds.StudyInstanceUID].imaging_study["series"][0]
    assert series["description"] == element.value.strip()


def test_institution_names_become_one_location(config_with):
    ds = _read("JPEG-lossy.dcm")
    assert ds.InstitutionName == "St. John's Memorial"
    src = config_with(
        files=("JPEG-lossy.dcm",),
        profile={"institution": {"names": {"ST JOHNS MEMORIAL": "Saint John's Memorial Hospital"}}},
    ).sources[0]
    assert mapped_studies(src)[ds.StudyInstanceUID].imaging_study["location"] == {
        "display": "Saint John's Memorial Hospital"
    }
    unmapped = mapped_studies(config_with(files=("JPEG-lossy.dcm",)).sources[0])
    assert unmapped[ds.StudyInstanceUID].imaging_study["location"] == {"display": "St. John's Memorial"}
    off = mapped_studies(
        config_with(files=("JPEG-lossy.dcm",), profile={"institution": {"location": False}}).sources[0]
    )
    assert "location" not in off[ds.StudyInstanceUID].imaging_study


def test_a_profile_body_part_term_overrides_the_base_table(config_with):
    ds = _read("JPEG-lossy.dcm")
    assert ds.BodyPartExamined == "WHOLE BODY"
    base = mapped_studies(config_with(files=("JPEG-lossy.dcm",)).sources[0])
    assert base[ds.StudyInstanceUID].imaging_study["series"][0]["bodySite"]["code"] == "38266002"
    # a site whose "WHOLE BODY" studies are in fact trunk scans
    src = config_with(files=("JPEG-lossy.dcm",), profile={"body_part": {"terms": {"WHOLE BODY": "22943007"}}}).sources[
        0
    ]
    assert mapped_studies(src)[ds.StudyInstanceUID].imaging_study["series"][0]["bodySite"] == {
        "system": SCT,
        "code": "22943007",
        "display": "Trunk",
    }


def test_a_vendor_modality_synonym_normalizes_a_vendor_term(tmp_path, archive):
    ds = _read("CT_small.dcm")
    ds.Modality = "CAT"  # an old vendor term for CT
    root = archive()
    ds.save_as(root / "cat.dcm")  # one file, the real header with the vendor's modality term
    ctx = MappingContext("s", "UTC", "urn:x", identity=TEST_IDENTITY)
    from app.sources.folder import FolderSource

    record = next(iter(FolderSource("s", root).iter_studies()))
    assert map_study(record, ctx).imaging_study["series"][0]["modality"] == {"display": "CAT"}
    vendor = tmp_path / "cat.yaml"
    vendor.write_text("modality:\n  synonyms:\n    CAT: CT\n")
    profiled = replace(ctx, profile=source_profile(str(vendor), None, tmp_path, "config.yaml"))
    result = map_study(record, profiled)
    assert result.imaging_study["series"][0]["modality"] == {
        "system": DCM,
        "code": "CT",
        "display": "Computed Tomography",
    }
    assert not any("CAT" in note for note in result.repairs)


def test_name_format_reads_given_family_names(tmp_path, archive):
    ds = _read("CT_small.dcm")
    ds.PatientName = "JANE Q PUBLIC"  # a vendor writing "FIRST MIDDLE LAST" without ^
    root = archive()
    ds.save_as(root / "name.dcm")
    from app.sources.folder import FolderSource

    record = next(iter(FolderSource("s", root).iter_studies()))
    ctx = MappingContext("s", "UTC", "urn:x", identity=TEST_IDENTITY)
    assert map_study(record, ctx).patient["name"] == [{"family": "JANE Q PUBLIC"}]  # DICOM: all family
    profiled = replace(
        ctx, profile=source_profile(None, {"names": {"format": "given-family"}}, tmp_path, "config.yaml")
    )
    result = map_study(record, profiled)
    assert result.patient["name"] == [{"family": "PUBLIC", "given": ["JANE", "Q"]}]
    assert any("names.format" in note for note in result.repairs)
    assert not any("JANE" in note or "PUBLIC" in note for note in result.repairs)  # no patient data


def test_date_formats_read_a_vendor_date_and_say_so(tmp_path, archive):
    ds = _read("CT_small.dcm")
    ds.StudyDate = "19.01.2004"  # DD.MM.YYYY: not a DA
    root = archive()
    ds.save_as(root / "date.dcm")
    from app.sources.folder import FolderSource

    record = next(iter(FolderSource("s", root).iter_studies()))
    ctx = MappingContext("s", "UTC", "urn:x", identity=TEST_IDENTITY)
    assert "started" not in map_study(record, ctx).imaging_study
    profiled = replace(ctx, profile=source_profile(None, {"dates": {"formats": ["%d.%m.%Y"]}}, tmp_path, "config.yaml"))
    result = map_study(record, profiled)
    assert result.imaging_study["started"].startswith("2004-01-19T")
    assert any("%d.%m.%Y" in note for note in result.repairs)


def test_requires_access_token_comes_from_the_profile(tmp_path):
    ctx = MappingContext("pacs", "UTC", "urn:x", wado_url="http://pacs/dicom-web", identity=TEST_IDENTITY)
    assert map_endpoint(ctx)["extension"] == [{"url": REQUIRES_ACCESS_TOKEN, "valueBoolean": False}]
    profiled = replace(
        ctx, profile=source_profile(None, {"endpoint": {"requires_access_token": True}}, tmp_path, "config.yaml")
    )
    assert map_endpoint(profiled)["extension"] == [{"url": REQUIRES_ACCESS_TOKEN, "valueBoolean": True}]


def test_shipped_vendor_profiles_load():
    for path in sorted(VENDORS_DIR.glob("*.yaml")):
        assert source_profile(path.stem, None, None, "config.yaml").layers[1].endswith(path.name)


def test_private_values_are_read_defensively(tmp_path):
    """Private attributes skip the standard checks: an undecoded (UN) value arrives as
    InlineBinary, and an archive may send anything at all."""
    import base64

    from app.mapping import private

    profile = source_profile(
        None,
        {"private_tags": [{"creator": "ACME 1.0", "group": "0019", "element": "10", "extension": "acme"}]},
        tmp_path,
        "config.yaml",
    )
    rule = profile.private_tags[0]
    un = {"vr": "UN", "InlineBinary": base64.b64encode(b"VALUE A\\VALUE B ").decode()}
    # the creator reserved block 0x11 here, so the attribute is (0019,1110)
    attrs = {
        "00190010": {"vr": "LO", "Value": ["OTHER"]},
        "00190011": {"vr": "LO", "Value": ["ACME 1.0 "]},
        "00191110": un,
        "00191010": {"vr": "LO", "Value": ["not ours"]},
    }
    assert private.read(attrs, rule) == (["VALUE A", "VALUE B"], ["00190011", "00191110"])
    for broken in (
        {"00190010": "ACME 1.0"},
        {"00190010": {"Value": ["ACME 1.0"]}, "00191010": ["x"]},
        {"00190010": {"Value": ["ACME 1.0"]}, "00191010": {"InlineBinary": "@@@"}},
        {"00190010": {"Value": [{"Alphabetic": 5}]}},
        "not a dict",
    ):
        assert private.read(broken, rule) == ([], [])


def test_a_default_character_set_reads_undeclared_utf8(tmp_path, archive):
    """A modality that writes UTF-8 without Specific Character Set: read as Latin-1 by
    default, correctly with the profile's character_set.default."""
    from pydicom.dataelem import DataElement

    from app.sources.folder import FolderSource

    ds = _read("CT_small.dcm")
    del ds.SpecificCharacterSet
    ds["InstitutionName"] = DataElement(0x00080080, "LO", "Klinik Süd".encode())
    ds["PatientName"] = DataElement(0x00100010, "PN", "Müller^Hans".encode())
    root = archive()
    ds.save_as(root / "utf8.dcm")
    ctx = MappingContext("s", "UTC", "urn:x", identity=TEST_IDENTITY)
    plain = map_study(next(iter(FolderSource("s", root).iter_studies())), ctx)
    assert plain.imaging_study["location"] == {"display": "Klinik SÃ¼d"}

    profile = source_profile(None, {"character_set": {"default": "ISO_IR 192"}}, tmp_path, "config.yaml")
    record = next(iter(FolderSource("s", root, default_charset=profile.default_character_set).iter_studies()))
    result = map_study(record, replace(ctx, profile=profile))
    assert result.imaging_study["location"] == {"display": "Klinik Süd"}
    assert result.patient["name"] == [{"family": "Müller", "given": ["Hans"]}]
    assert any("read as ISO_IR 192" in note["text"] for note in result.imaging_study["note"])


def test_an_unknown_character_set_is_refused(config_with):
    with pytest.raises(ConfigError) as caught:
        config_with(profile={"character_set": {"default": "LATIN1"}})
    assert "character_set.default: 'LATIN1' is not a DICOM Specific Character Set" in str(caught.value)
