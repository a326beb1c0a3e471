"""`Patient/$match` (FHIR R4 OperationDefinition Patient-match): which stored Patients are
the person a client describes.

The input Patient is scored like a newly synced one (same features, blocking keys and
weights as automatic linking), so `$match` and the review queue agree. Each match carries
`search.score` (the points over `identity.auto_link`, capped at 1) and the match-grade
extension: `certain` from `auto_link` on, `probable` from `review`, `possible` from
`possible`; lower scores are not returned.
"""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy.engine import Connection

from app.identity.features import blocking_keys, features
from app.identity.scoring import score
from app.identity.settings import IdentityConfig
from app.store import links

MATCH_GRADE = "http://hl7.org/fhir/StructureDefinition/match-grade"
_DATE = re.compile(r"[0-9]{4}(-[0-9]{2}(-[0-9]{2})?)?")


class MatchInputError(ValueError):
    """The Parameters of a $match request are not usable; the message names the parameter."""


def parse_parameters(body: Any) -> tuple[dict, bool, int | None]:
    """(Patient, onlyCertainMatches, count) from a Parameters resource."""
    if not isinstance(body, dict) or body.get("resourceType") != "Parameters":
        raise MatchInputError("the body must be a Parameters resource")
    patient, only_certain, count = None, False, None
    params = body.get("parameter") or []
    if not isinstance(params, list):
        raise MatchInputError("Parameters.parameter must be a list of parameters")
    for param in params:
        if not isinstance(param, dict):
            raise MatchInputError("Parameters.parameter entries must be objects")
        name = param.get("name")
        if name == "resource":
            patient = param.get("resource")
            if not isinstance(patient, dict) or patient.get("resourceType") != "Patient":
                raise MatchInputError("parameter 'resource' must hold a Patient resource")
        elif name == "onlyCertainMatches":
            if not isinstance(param.get("valueBoolean"), bool):
                raise MatchInputError("parameter 'onlyCertainMatches' needs a valueBoolean")
            only_certain = param["valueBoolean"]
        elif name == "count":
            value = param.get("valueInteger")
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise MatchInputError("parameter 'count' needs a positive valueInteger")
            count = value
    if patient is None:
        raise MatchInputError("parameter 'resource' (the Patient to match) is missing")
    _check_patient(patient)
    return patient, only_certain, count


def _check_patient(patient: dict) -> None:
    names = patient.get("name", [])
    if not isinstance(names, list) or not all(isinstance(n, dict) for n in names):
        raise MatchInputError("parameter 'resource': Patient.name must be a list of HumanName")
    for name in names:
        if not isinstance(name.get("family", ""), str) or not isinstance(name.get("given", []), list):
            raise MatchInputError("parameter 'resource': HumanName.family is a string and given a list")
    idents = patient.get("identifier", [])
    if not isinstance(idents, list) or not all(isinstance(i, dict) for i in idents):
        raise MatchInputError("parameter 'resource': Patient.identifier must be a list of Identifier")
    birth = patient.get("birthDate")
    if birth is not None and not (isinstance(birth, str) and _DATE.fullmatch(birth)):
        raise MatchInputError("parameter 'resource': Patient.birthDate must be a date (YYYY, YYYY-MM or YYYY-MM-DD)")


def match(
    conn: Connection, patient: dict, rules: IdentityConfig, only_certain: bool = False, count: int | None = None
) -> list[tuple[str, float, str, dict]]:
    """(patient id, score 0..1, grade, explanation) of the stored Patients that match, best first."""
    feats = features(patient, rules)
    found = []
    for other, other_feats in links.candidates(conn, blocking_keys(feats)).items():
        result = score(feats, other_feats)
        grade = result.grade(rules.auto_link, rules.review, rules.possible)
        if grade == "certainly-not" or (only_certain and grade != "certain"):
            continue
        found.append((other, min(1.0, max(0.0, result.points / rules.auto_link)), grade, result.as_dict()))
    found.sort(key=lambda m: (-m[3]["points"], m[0]))
    if only_certain and len(found) > 1:
        return []  # R4: with several potential matches, onlyCertainMatches returns none
    return found[:count] if count else found
