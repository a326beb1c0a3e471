"""SMART scopes: parse a token's scope string into grants, and say what a request needs.

Both grammars of SMART App Launch are honoured (scopes-and-launch-context):

- v2: `<patient|user|system>/<Type|*>.<c r u d s, in that order>[?param=value&...]`, e.g.
  `patient/ImagingStudy.rs`, `system/*.rs`, `patient/ImagingStudy.rs?modality=MR` (granular);
- v1: `<patient|user|system>/<Type|*>.<read|write|*>`, where `read` means v2 `rs`.

This server is read-only, so only `r` (read, vread, history of one resource) and `s` (search)
matter; `c`, `u`, `d` and v1 `write` grant nothing here. Scopes that are not resource scopes
(`openid`, `launch/patient`, `offline_access`…) are kept in `Access.scopes` and grant nothing.

What a request needs is decided before any query runs, from the route and its parameters
alone, so a refusal never depends on what the store holds.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import parse_qsl

from app.api.interactions import Interaction
from app.search.params import BY_RESOURCE, INCLUDES, RESOURCE_TYPES, REVINCLUDES, served_targets
from app.security.access import READ, SEARCH, ScopeGrant

CONTEXTS = ("patient", "user", "system")
_V2 = re.compile(r"^c?r?u?d?s?$")
_RESOURCE = re.compile(r"^(\*|[A-Z][A-Za-z]{0,63})$")
_V1 = {"read": frozenset({READ, SEARCH}), "*": frozenset({READ, SEARCH}), "write": frozenset()}

#: SMART v2 permission letters, or v1 `write`/`*`, that include update
_UPDATES = re.compile(r"^(c?r?ud?s?|write|\*)$")


def may_update_patients(scopes: Iterable[str]) -> bool:
    """Whether raw scopes grant update on Patient at user or system level.

    Linking or unlinking two Patient records writes both (Patient.link), so the identity
    review API asks for what writing a Patient asks for elsewhere: `user/Patient.u`,
    `system/Patient.u` (or `*`, or v1 `.write`). A patient/ scope never does: review is
    an administrator's work across patients.
    """
    for scope in scopes:
        head = scope.partition("?")[0]
        context, slash, rest = head.partition("/")
        resource, dot, permissions = rest.rpartition(".")
        if (
            slash
            and dot
            and context in ("user", "system")
            and resource in ("Patient", "*")
            and _UPDATES.match(permissions)
        ):
            return True
    return False


def parse_scope(scope: str) -> ScopeGrant | None:
    """One scope string -> its grant on FHIR resources, or None when it is not a resource scope."""
    head, _, query = scope.partition("?")
    context, slash, rest = head.partition("/")
    if not slash or context not in CONTEXTS:
        return None
    resource, dot, permissions = rest.rpartition(".")
    if not dot or not _RESOURCE.match(resource):
        return None
    if permissions in _V1:
        if query:  # granular narrowing exists in v2 only
            return None
        interactions = _V1[permissions]
    elif permissions and _V2.match(permissions):
        interactions = frozenset(letter for letter in permissions if letter in (READ, SEARCH))
    else:
        return None
    narrowing = tuple(parse_qsl(query, keep_blank_values=True)) if query else ()
    return ScopeGrant(context, resource, interactions, narrowing)


def parse_scopes(scope_text: object) -> tuple[tuple[str, ...], tuple[ScopeGrant, ...]]:
    """A token's `scope` (space-separated string, or a list as some servers send `scp`) ->
    (the raw scopes, the resource grants among them that allow something here)."""
    if isinstance(scope_text, str):
        scopes = tuple(scope_text.split())
    elif isinstance(scope_text, (list, tuple)):
        scopes = tuple(s for s in scope_text if isinstance(s, str))
    else:
        scopes = ()
    grants = tuple(g for g in map(parse_scope, scopes) if g is not None and g.interactions)
    return scopes, grants


def needed(interaction: Interaction, rtype: str | None, params: list[tuple[str, str]]) -> list[tuple[str, str, str]]:
    """What a request needs: (resource type, interaction, why) triples, checked in order.

    `params` are the request's (name, value) pairs. A search also needs `s` on every type its
    chains and `_has` look into, and on every type its `_include`/`_revinclude` would add
    (SMART says nothing about includes; refusing is what keeps an app from reading
    an empty include as "nothing exists"). One exemption: `_include=ImagingStudy:endpoint`
    needs no Endpoint scope, because an Endpoint is the archive's address, holds no patient
    data, and the SMART Imaging Access IG has apps follow `ImagingStudy.endpoint` with an
    ImagingStudy scope alone. Parameters that do not parse are left to the search, which
    answers 400 naming them.
    """
    permission = interaction.permission
    if permission not in (READ, SEARCH) or rtype not in RESOURCE_TYPES:
        return []
    wanted = [(rtype, permission, "")]
    if permission != SEARCH:
        return wanted
    for name, value in params:
        base, _, modifier = name.partition(":")
        if base in ("_include", "_revinclude"):
            for target in _included_types(rtype, base, value, modifier in ("iterate", "recurse")):
                wanted.append((target, SEARCH, f"{name}={value}"))
        elif "." in name or name.startswith("_has:"):
            for target in _joined_types(rtype, name):
                wanted.append((target, SEARCH, name))
    return wanted


def _included_types(rtype: str, kind: str, value: str, iterate: bool) -> set[str]:
    if kind == "_include":
        if value == "*":
            pairs = [(s, p, t) for (s, p), t in INCLUDES.items() if s == rtype or iterate]
        else:
            source, _, rest = value.partition(":")
            pname = rest.partition(":")[0]
            target = INCLUDES.get((source, pname))
            pairs = [(source, pname, target)] if target else []
        return {t for s, p, t in pairs if (s, p) != ("ImagingStudy", "endpoint")}
    if value == "*":
        return {s for (s, p), t in REVINCLUDES.items() if t == rtype or iterate}
    source, _, rest = value.partition(":")
    return {source} if (source, rest.partition(":")[0]) in REVINCLUDES else set()


def _joined_types(rtype: str, name: str) -> set[str]:
    """The types a chained (`patient.name`) or reverse-chained (`_has:…`) parameter searches."""
    types: set[str] = set()
    current, rest = rtype, name
    while rest:
        if rest.startswith("_has:"):
            parts = rest.split(":", 3)
            if len(parts) < 4 or parts[1] not in BY_RESOURCE:
                return types
            current, rest = parts[1], parts[3]
            types.add(current)
            continue
        head, dot, tail = rest.partition(".")
        if not dot:
            return types
        base, _, type_modifier = head.partition(":")
        param = BY_RESOURCE.get(current, {}).get(base)
        if param is None or param.type != "reference":
            return types
        targets = (type_modifier,) if type_modifier else served_targets(param)
        if len(targets) != 1 or targets[0] not in RESOURCE_TYPES:
            return types
        current, rest = targets[0], tail
        types.add(current)
    return types
