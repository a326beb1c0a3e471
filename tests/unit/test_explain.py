"""`imaging-facade map FILE`: every element of the resources a real file becomes names the DICOM
tags and the profile rule (file:line) that produced it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from pydicom.data import get_testdata_file

from app.cli import main
from app.mapping import map_study
from app.mapping.context import MappingContext
from app.mapping.profile import BASE_FILE, VENDORS_DIR
from app.sync.explain import ExplainError, explain_file
from testbed.orthanc import readable_testdata_files
from tests.support.keys import TEST_IDENTITY

CTX = MappingContext("explain", "UTC", "urn:imaging-facade:source:explain", identity=TEST_IDENTITY)


def line_of(path: Path, text: str) -> int:
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if text in line:
            return number
    raise AssertionError(f"{text!r} not in {path}")


def by_path(explanation) -> dict:
    return {row["path"]: row for row in explanation.rows}


@pytest.mark.parametrize("path", readable_testdata_files(), ids=lambda p: Path(p).name)
def test_every_element_of_a_real_file_has_an_origin(path):
    try:
        explanation = explain_file(path, CTX)
    except ExplainError as exc:  # what a sync quarantines or skips is refused with the reason
        assert "DICOMDIR" in str(exc) or "without StudyInstanceUID" in str(exc), exc  # noqa: PT017
        return
    study, patient, endpoint = explanation.resources
    assert [r["resourceType"] for r in explanation.resources] == ["ImagingStudy", "Patient", "Endpoint"]
    for row in explanation.rows:
        # every element is explained by a recorded element of its own resource, not a bare default
        assert row["from"] is not None and row["from"].startswith(row["resource"]), row
        assert row["rule"], row
    rows = by_path(explanation)
    assert rows["ImagingStudy.identifier[0].value"]["tags"] == ["(0020,000D) StudyInstanceUID"]
    for index, series in enumerate(study["series"]):
        assert rows[f"ImagingStudy.series[{index}].uid"]["tags"] == ["(0020,000E) SeriesInstanceUID"]
        assert "(0008,0060) Modality" in rows[f"ImagingStudy.series[{index}].modality.display"]["tags"]
        for i, _ in enumerate(series.get("instance", [])):
            assert rows[f"ImagingStudy.series[{index}].instance[{i}].sopClass.code"]["tags"] == [
                "(0008,0016) SOPClassUID"
            ]
    # the resources explained are the ones a sync would store
    assert study == map_study(_record(path), CTX).imaging_study


def _record(path):
    from app.sources.folder import FolderSource

    return next(iter(FolderSource("explain", Path(path).parent, only=[path]).iter_studies()))


def test_profile_rules_are_cited_with_their_file_and_line(tmp_path):
    path = get_testdata_file("JPEG-lossy.dcm")  # NM, BodyPartExamined "WHOLE BODY", institution name
    explanation = explain_file(path, CTX)
    rows = by_path(explanation)
    body = rows["ImagingStudy.series[0].bodySite.code"]
    assert body["tags"] == ["(0018,0015) BodyPartExamined"]
    assert body["rule"] == f"fhir_profiles/mapping/base.yaml:{line_of(BASE_FILE, 'WHOLEBODY:')}"
    assert rows["ImagingStudy.location.display"]["tags"] == ["(0008,0080) InstitutionName"]


def test_vendor_private_tag_rules_are_cited(tmp_path):
    from app.mapping.profile import source_profile

    ctx = MappingContext(
        "ge", "UTC", "urn:x", profile=source_profile("ge", None, None, "config.yaml"), identity=TEST_IDENTITY
    )
    rows = by_path(explain_file(get_testdata_file("CT_small.dcm"), ctx))
    ge = VENDORS_DIR / "ge.yaml"
    row = rows["ImagingStudy.series[0].extension[0].valueString"]
    assert row["value"] == "HiSpeed CT/i"
    assert row["tags"] == ["(0009,0010)", "(0009,1004)"]  # the creator slot and the attribute in its block
    assert row["rule"] == f"fhir_profiles/mapping/vendors/ge.yaml:{line_of(ge, 'creator: GEMS_IDEN_01')}"


def test_map_command_json_and_source_profile(tmp_path):
    archive = tmp_path / "archive"
    archive.mkdir()
    shutil.copyfile(get_testdata_file("CT_small.dcm"), archive / "ct.dcm")
    (tmp_path / "config.yaml").write_text(
        yaml.safe_dump(
            {
                "store": "sqlite:///facade.db",
                "sources": [
                    {
                        "name": "site-a",
                        "type": "folder",
                        "path": "archive",
                        "timezone": "Europe/Berlin",
                        "profile": {"institution": {"names": {"JFK IMAGING CENTER": "Kennedy Imaging"}}},
                    }
                ],
            }
        )
    )
    result = CliRunner().invoke(
        main,
        ["map", str(archive / "ct.dcm"), "--source", "site-a", "--config", str(tmp_path / "config.yaml"), "--json"],
    )
    assert result.exit_code == 0, result.output
    body = json.loads(result.output)
    study = body["resources"][0]
    assert study["location"] == {"display": "Kennedy Imaging"}
    assert body["resources"][2]["id"] == "site-a"
    row = next(r for r in body["elements"] if r["path"] == "ImagingStudy.location.display")
    config_line = line_of(tmp_path / "config.yaml", "JFK IMAGING CENTER")
    assert row["rule"].endswith(f"config.yaml:{config_line}")
    assert body["profileLayers"][0] == "fhir_profiles/mapping/base.yaml"


def test_map_command_readable_output_names_tags_and_rules():
    result = CliRunner().invoke(main, ["map", get_testdata_file("JPEG-lossy.dcm")], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "BodyPartExamined" in result.output
    assert f"base.yaml:{line_of(BASE_FILE, 'WHOLEBODY:')}" in result.output
    assert "profile layers: fhir_profiles/mapping/base.yaml" in result.output


@pytest.mark.parametrize("content, reason", [(None, "no such file"), (b"not dicom", "not a DICOM file")])
def test_map_command_refuses_what_is_not_a_dicom_file(tmp_path, content, reason):
    path = tmp_path / "x.dcm"
    if content is not None:
        path.write_bytes(content)
    result = CliRunner().invoke(main, ["map", str(path)])
    assert result.exit_code == 2
    assert reason in result.output and "Traceback" not in result.output


def test_map_command_unknown_source_is_named(tmp_path):
    (tmp_path / "config.yaml").write_text("store: sqlite:///x.db\n")
    result = CliRunner().invoke(
        main, ["map", get_testdata_file("CT_small.dcm"), "--source", "nope", "--config", str(tmp_path / "config.yaml")]
    )
    assert result.exit_code == 2 and "no source named 'nope'" in result.output
