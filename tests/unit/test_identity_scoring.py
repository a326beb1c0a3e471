"""Match features, blocking keys and scores (app.identity): each score explains itself."""

from __future__ import annotations

from dataclasses import replace

import pytest

from app.config import ConfigError
from app.identity.features import blocking_keys, features, sound
from app.identity.keys import patient_id, patient_key
from app.identity.scoring import score
from app.identity.settings import DEFAULT, IdentityConfig
from app.mapping import map_study
from app.mapping.context import MappingContext
from app.mapping.record import SeriesRecord, StudyRecord
from tests.support.keys import TEST_KEY

IDE = {"url": "http://hl7.org/fhir/StructureDefinition/iso21090-EN-representation", "valueCode": "IDE"}
SYL = {"url": "http://hl7.org/fhir/StructureDefinition/iso21090-EN-representation", "valueCode": "SYL"}


def patient(family="Miller", given=("John",), birth="1970-03-05", gender="male", ids=(("urn:a", "1"),), extra_names=()):
    body = {
        "resourceType": "Patient",
        "identifier": [{"system": s, "value": v} for s, v in ids],
        "name": [{"family": family, "given": list(given)}, *extra_names],
        "gender": gender,
    }
    if birth:
        body["birthDate"] = birth
    return body


def scored(a: dict, b: dict, rules: IdentityConfig = DEFAULT):
    result = score(features(a, rules), features(b, rules))
    return result, {c[0]: (c[1], c[2]) for c in result.contributions}


def grade(result, rules: IdentityConfig = DEFAULT) -> str:
    return result.grade(rules.auto_link, rules.review, rules.possible)


def test_the_same_person_in_two_archives_is_certain_and_says_why():
    result, parts = scored(patient(), patient(ids=[("urn:b", "77")]))
    assert grade(result) == "certain"
    assert parts["family name (alphabetic)"] == (7.0, "same")
    assert parts["given name (alphabetic)"] == (6.0, "same first given name")
    assert parts["birth date"] == (8.0, "same")
    assert parts["sex"] == (1.0, "same")
    assert result.points == sum(p for _, p, _ in result.contributions)
    assert result.as_dict()["points"] == result.points


def test_twins_are_not_linked():
    """Same family name and birth date, another given name and sex: two people."""
    result, parts = scored(patient(), patient(given=["Jane"], gender="female", ids=[("urn:b", "78")]))
    assert parts["given name (alphabetic)"][0] < 0
    assert parts["sex"] == (-8.0, "differs")
    assert result.points < DEFAULT.review and grade(result) == "certainly-not"
    same_sex, parts = scored(patient(), patient(given=["Peter"], ids=[("urn:b", "78")]))
    assert parts["given name (alphabetic)"] == (-5.0, "first given name differs")
    assert same_sex.points < DEFAULT.auto_link


def test_john_and_jane_sound_alike_but_are_not_one_name():
    _, parts = scored(patient(), patient(given=["Jane"]))
    assert parts["given name (alphabetic)"][1] == "first given name differs"


def test_namesakes_are_not_linked():
    result, parts = scored(patient(), patient(birth="1982-11-23", ids=[("urn:b", "5")]))
    assert parts["birth date"] == (-10.0, "differs")
    assert result.points < DEFAULT.review


@pytest.mark.parametrize(
    "other, feature, reason",
    [
        (dict(family="Müller"), "family name (alphabetic)", "sounds alike or nearly the same spelling"),
        (dict(given=["Jon"]), "given name (alphabetic)", "first given name sounds alike or nearly the same spelling"),
        (dict(birth="1970-05-03"), "birth date", "day and month swapped"),
        (dict(birth="1970-03-06"), "birth date", "one digit differs"),
        (dict(given=["John", "Paul"]), "given name (alphabetic)", "same first given name"),
    ],
)
def test_one_error_still_links(other, feature, reason):
    result, parts = scored(patient(), patient(**{"ids": [("urn:b", "9")], **other}))
    assert parts[feature][1] == reason
    assert grade(result) == "certain", result.as_dict()


def test_family_and_given_name_swapped():
    result, parts = scored(patient(), patient(family="John", given=["Miller"], ids=[("urn:b", "9")]))
    assert parts["name order"] == (-2.0, "family and given name swapped")
    assert grade(result) == "certain"


def test_a_missing_birth_date_waits_for_review():
    result, parts = scored(patient(), patient(birth=None, ids=[("urn:b", "9")]))
    assert parts["birth date"] == (0.0, "missing on one side")
    assert grade(result) == "probable"


def test_ideographic_group_agrees_where_romanizations_differ():
    kanji = [
        {"extension": [IDE], "family": "佐藤", "given": ["太郎"]},
        {"extension": [SYL], "family": "さとう", "given": ["たろう"]},
    ]
    a = patient(family="SATO", given=["TARO"], extra_names=kanji)
    b = patient(family="SATOU", given=["TAROU"], extra_names=kanji, ids=[("urn:b", "2")])
    result, parts = scored(a, b)
    assert parts["family name (ideographic)"] == (7.0, "same")
    assert grade(result) == "certain"
    assert {"n:" + "|".join(sorted(("佐藤", "太郎")))} <= set(blocking_keys(features(a, DEFAULT)))


def test_a_shared_identifier_is_certain_on_its_own():
    """An Other Patient ID that is another record's Patient ID: one person, whatever the names say."""
    a = patient(ids=[("urn:a", "1")])
    b = patient(family="Smith", given=["Bob"], birth=None, ids=[("urn:b", "77"), ("urn:a", "1")])
    result, parts = scored(a, b)
    assert parts["identifier"] == (30.0, "an identifier in the same namespace in common")
    assert grade(result) == "certain"


def test_same_issuer_other_number_counts_against():
    _, parts = scored(patient(ids=[("urn:a", "1")]), patient(ids=[("urn:a", "2")]))
    assert parts["identifier"] == (-6.0, "different identifiers from one issuer")


def test_same_namespace_rule_makes_two_systems_one():
    rules = IdentityConfig.from_data({"same_namespace": [["urn:a", "urn:a-old"]]})
    a, b = patient(ids=[("urn:a", "1")]), patient(family="X", given=["Y"], ids=[("urn:a-old", "1")])
    assert features(b, rules)["ids"] == [["urn:a", "1"]]
    _, parts = scored(a, b, rules)
    assert parts["identifier"][0] == 30.0
    _, without = scored(a, b)
    assert without["identifier"] == (2.0, "the same identifier value under another issuer")


def test_explanations_quote_no_patient_data():
    a = patient(family="Zyxwvut", given=["Qwerty"], birth="1911-01-02", ids=[("urn:a", "SECRET1")])
    b = patient(family="Zyxwvutt", given=["Qwerty"], birth="1911-02-01", ids=[("urn:a", "SECRET2")])
    text = str(score(features(a, DEFAULT), features(b, DEFAULT)).as_dict())
    for secret in ("Zyx", "zyx", "Qwerty", "qwerty", "1911", "SECRET"):
        assert secret not in text


def test_blocking_keys_survive_the_errors_scoring_forgives():
    def keys(p):
        return set(blocking_keys(features(p, DEFAULT)))

    base = keys(patient())
    assert base & keys(patient(family="John", given=["Miller"]))  # swapped
    assert base & keys(patient(birth="1970-05-03", family="Mueller"))  # transposed, family misspelled
    assert base & keys(patient(birth=None))  # no birth date
    assert base & keys(patient(birth="1971-03-05", family="Müllner"))  # year typo and family typo
    assert "i:1" in base
    assert not base & keys(patient(family="Smith", given=["Bob"], birth="1980-01-01", ids=[("urn:b", "5")]))


def test_blocking_keys_survive_a_name_typo_with_the_birth_date_missing_or_wrong():
    def keys(p):
        return {k for k in blocking_keys(features(p, DEFAULT)) if not k.startswith("i:")}

    base = keys(patient(family="Akroyd", given=["Imogen"], birth=None))
    typo = keys(patient(family="Akroyd", given=["Imogxn"], birth="1930-12-06"))  # sound of Imogen lost
    assert base & typo == {f"p:{sound('akroyd')}|imog"}
    # family and given swapped, and a typo that changes the sound of one of them
    swapped = keys(patient(family="Snell", given=["Sophie"], birth=None))
    typo_swapped = keys(patient(family="Sophie", given=["Snelk"], birth="1923-11-14"))
    assert swapped & typo_swapped == {f"p:{sound('sophie')}|snel"}
    compound = keys(patient(family="Sal T", given=["Lachan"], birth="1927-03-29"))
    assert compound & keys(patient(family="Salt", given=["Lachlan"], birth=None))
    assert not base & keys(patient(family="Akroyd", given=["Zoe"], birth=None))


def test_blocking_keys_meet_an_other_patient_id_one_typo_away():
    def keys(family, given, other):
        ids = (("urn:archive", family + given), ("urn:national", other))
        found = blocking_keys(features(patient(family=family, given=[given], birth=None, ids=ids), DEFAULT))
        return {k for k in found if k.startswith("e:")}

    base = keys("Excell", "Alice", "4503763")
    assert base & keys("Ebert", "Anna", "4503673")  # two digits swapped; other names, same initials
    assert base & keys("Ebert", "Anna", "4503768")  # one digit changed
    assert base & keys("Ebert", "Anna", "450376")  # one digit dropped
    assert base & keys("Anna", "Ebert", "45037631")  # one digit added (and the names swapped)
    assert not base & keys("Riding", "Zoe", "4503673")  # other initials: a dense number sequence
    assert not base & keys("Ebert", "Anna", "4530673")  # two typos
    # an archive's own Patient IDs get no such keys: its neighbouring numbers are other patients
    own = set(blocking_keys(features(patient(ids=(("urn:a", "1234567"),)), DEFAULT)))
    assert not {k for k in own if k.startswith("e:")}


def test_a_patient_is_keyed_in_its_namespace():
    rules = IdentityConfig.from_data({"same_namespace": [["urn:a", "urn:a-old"]]}).with_key(TEST_KEY)
    old = {
        "resourceType": "Patient",
        "id": patient_id("urn:a-old", "1", TEST_KEY),
        "identifier": [{"system": "urn:a-old", "value": "1"}],
    }
    record = StudyRecord(
        uid="1.2.3",
        attrs={"0020000D": {"vr": "UI", "Value": ["1.2.3"]}, "00100020": {"vr": "LO", "Value": ["1"]}},
        series=[
            SeriesRecord(
                attrs={"0020000E": {"vr": "UI", "Value": ["1.2.3.1"]}, "00080060": {"vr": "CS", "Value": ["CT"]}}
            )
        ],
    )
    ctx = MappingContext(source="a", timezone="UTC", patient_id_system="urn:a-old", identity=rules)
    resolved = map_study(record, ctx)
    assert resolved.patient["id"] == patient_id("urn:a", "1", TEST_KEY)
    assert resolved.imaging_study["subject"]["reference"] == f"Patient/{patient_id('urn:a', '1', TEST_KEY)}"
    assert resolved.patient["identifier"] == old["identifier"]  # the identifier stays as the archive said
    assert patient_key(resolved.patient, rules) == ("urn:a", "1")
    assert map_study(record, replace(ctx, identity=DEFAULT.with_key(TEST_KEY))).patient["id"] == old["id"]


@pytest.mark.parametrize(
    "identity, key",
    [
        ({"same_namespace": [["urn:a"]]}, "identity.same_namespace"),
        ({"same_namespace": [["urn:a", "urn:b"], ["urn:b", "urn:c"]]}, "identity.same_namespace"),
        ({"auto_link": 5, "review": 10}, "identity.auto_link"),
        ({"threshold": 5}, "identity.threshold"),
    ],
)
def test_bad_identity_config_names_the_key(write_config, identity, key):
    with pytest.raises(ConfigError) as err:
        write_config({"store": "sqlite:///x.db", "identity": identity})
    assert key in str(err.value)
