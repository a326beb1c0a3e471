"""`Group/{source}`: each source (archive) as a Group of the patients it holds, the groups a
Bulk Data Group export names (Bulk Data Access IG v2.0.0: a server with Group export SHOULD
support reading and searching Group). Groups are made from the store when asked, never stored:
`actual` person Groups whose members are the Patients the source's studies name.

Membership spans patients, so a token bound to one patient may not read or search Groups
(app/security/authorize.py, across-patients interactions, with a Group scope).
Search takes `_id`, `name` (FHIR string search: starts with, case-insensitive) and `identifier`
(`urn:imaging-facade:source|<name>`).
"""

from __future__ import annotations

import re

import orjson
from flask import Blueprint, Response, request

from app.api.interactions import GROUP_READ, GROUP_SEARCH, serves
from app.api.state import current_state
from app.errors import FhirError
from app.fhir.bundle import search_url
from app.fhir.routes import _check_id, _json, check_format
from app.ids import valid_id
from app.store.groups import group_members

bp = Blueprint("fhir_groups", __name__)
#: Group.identifier.system of a source's Group
GROUP_SYSTEM = "urn:imaging-facade:source"
_SEARCH = ("_id", "name", "identifier")
#: parameters every interaction takes, which select nothing here
_GENERAL = ("_format", "_pretty")


@bp.before_request
def _negotiate() -> None:
    check_format()


def group_names() -> list[str]:
    """The configured sources that can be a Group (their names are FHIR ids), in config order."""
    return [src.name for src in current_state().config.sources if valid_id(src.name)]


def group(name: str) -> dict:
    members = group_members(current_state().reader, name)
    body: dict = {
        "resourceType": "Group",
        "id": name,
        "identifier": [{"system": GROUP_SYSTEM, "value": name}],
        "active": True,
        "type": "person",
        "actual": True,
        "name": name,
        "quantity": len(members),
    }
    if members:
        body["member"] = [{"entity": {"reference": f"Patient/{pid}"}} for pid in members]
    return body


@bp.get("/Group/<rid>", defaults={"rtype": "Group"})
@serves(GROUP_READ)
def read_group(rtype: str, rid: str) -> Response:
    _check_id(rtype, rid)
    if rid not in group_names():
        raise FhirError(404, "not-found", f"Group/{rid} is not known (each source is a Group)")
    return _json(orjson.dumps(group(rid)))


def _matches(name: str, params: list[tuple[str, str]]) -> bool:
    for key, value in params:
        values = value.split(",")
        if key == "_id" and name not in values:
            return False
        if key == "name" and not any(name.casefold().startswith(v.casefold()) for v in values):
            return False
        if key == "identifier":
            wanted = {(v.partition("|")[0], v.partition("|")[2]) if "|" in v else (None, v) for v in values}
            if (GROUP_SYSTEM, name) not in wanted and (None, name) not in wanted:
                return False
    return True


@bp.get("/Group", defaults={"rtype": "Group"})
@serves(GROUP_SEARCH)
def search_groups(rtype: str) -> Response:
    params = [(k, v) for k, v in request.args.items(multi=True) if k not in _GENERAL]
    unknown = sorted({k for k, _ in params if k not in _SEARCH})
    strict = "handling=strict" in (p.strip() for p in re.split(r"[;,]", request.headers.get("Prefer", "")))
    if unknown and strict:
        raise FhirError(
            400,
            "not-supported",
            f"unknown search parameter(s) for Group: {', '.join(unknown)} (known: _id, name, identifier)",
        )
    params = [(k, v) for k, v in params if k in _SEARCH]
    state = current_state()
    found = [group(name) for name in group_names() if _matches(name, params)]
    bundle = {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": len(found),
        "link": [{"relation": "self", "url": search_url(state.base_url, "Group", params)}],
        "entry": [
            {"fullUrl": f"{state.base_url}/Group/{g['id']}", "resource": g, "search": {"mode": "match"}} for g in found
        ],
    }
    return _json(orjson.dumps(bundle))
