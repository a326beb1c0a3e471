"""Parse a FHIR search request into typed clauses, or fail naming the parameter.

Each parameter type has one "convert or fail" function. Comma means OR within a clause;
a repeated parameter means AND (FHIR R4 search 3.1.1.4). Unknown parameters are ignored
(lenient) unless the client sent `Prefer: handling=strict`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, TypeAlias, cast

from app.search.dates import DateFormatError, date_range
from app.search.elements import ELEMENTS, SUMMARY_MODES
from app.search.params import (
    BY_RESOURCE,
    CONTROL,
    INCLUDES,
    REVINCLUDES,
    SEARCHABLE,
    SearchParam,
    controls,
    served_targets,
)
from app.search.references import external_reference
from app.search.text import phonetic_codes

ANY_SYSTEM = object()  # token without "|": any system matches
#: at most this many comma-separated values in one parameter, and parameters in one search
MAX_VALUES = 100
MAX_PARAMETERS = 50
_CONTROL_CHARS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f]")
DATE_PREFIXES = ("eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap")
MODIFIERS = {
    "token": {"not", "missing", "text", "of-type"},
    "string": {"exact", "contains", "missing"},
    "date": {"missing"},
    "reference": {"missing", "identifier"},
}
_ESCAPED_COMMA = "\x00"


class SearchError(Exception):
    """A search the server cannot run as asked; `code` is the OperationOutcome issue code."""

    def __init__(self, code: str, diagnostics: str):
        super().__init__(diagnostics)
        self.code = code
        self.diagnostics = diagnostics


@dataclass
class Clause:
    param: SearchParam
    modifier: str | None
    values: list[Any]
    #: the name=value text as the client sent it, for the self link
    raw: tuple[str, str] = ("", "")
    #: how the values are matched (token, string, date, reference, phonetic) and the name
    #: their index rows carry: a modifier such as :text or :of-type has rows of its own
    kind: str = ""
    index: str = ""

    def __post_init__(self) -> None:
        self.kind = self.kind or self.param.type
        self.index = self.index or self.param.name


@dataclass(frozen=True)
class SortKey:
    param: SearchParam
    descending: bool = False


@dataclass
class ChainClause:
    """`patient.identifier=…`: resources whose reference `param` points at a `target`
    resource that matches `inner` (FHIR R4 search 3.1.1.4.3, chained parameters)."""

    param: SearchParam
    target: str
    inner: Clause | ChainClause | HasClause


@dataclass
class HasClause:
    """`_has:ImagingStudy:patient:modality=MR`: resources that a `source` resource whose
    reference `param` points at them, and that matches `inner`, refers to (3.1.1.4.4)."""

    source: str
    param: SearchParam
    inner: Clause | ChainClause | HasClause


#: one ANDed clause of a search
SearchClause: TypeAlias = Clause | ChainClause | HasClause


@dataclass(frozen=True)
class Include:
    """An _include or _revinclude directive: `source`'s reference `param` points at `target`."""

    source: str
    param: str
    target: str
    iterate: bool = False


@dataclass(frozen=True)
class Restriction:
    """What one request may see of one resource type, applied inside the SQL of every
    match, chain, `_has` and include of that type (app/security/scope.py builds it).

    `patients`: the Patient ids of the compartment in force (None: no compartment);
    `alternatives`: SMART v2 granular scopes as clause lists, ORed (a resource matches when
    it matches every clause of one of them; None: not narrowed); `deny`: nothing at all.
    """

    patients: tuple[str, ...] | None = None
    alternatives: tuple[tuple[SearchClause, ...], ...] | None = None
    deny: bool = False


@dataclass(frozen=True)
class SearchLimits:
    """What one search may cost, checked before it runs (the `server.max_*` keys, docs/configuration.md).

    Each level of a chain or `_has` nests a subquery in the SQL, and each chain or `_has`
    adds one such nest: a few hundred levels in one GET held a worker for a minute.
    """

    #: levels of one chained or `_has` parameter (`patient.identifier`: 1)
    chain_depth: int = 3
    #: chained and `_has` parameters in one search
    chains: int = 5
    #: resources `_include` and `_revinclude` add to one page
    includes: int = 1000


@dataclass
class SearchQuery:
    rtype: str
    clauses: list[SearchClause] = field(default_factory=list)  # ANDed
    count: int = 50
    includes: list[Include] = field(default_factory=list)
    revincludes: list[Include] = field(default_factory=list)
    page: str | None = None
    total: str = "accurate"
    #: _summary: true, text, data, count or false
    summary: str = "false"
    #: _elements: the top-level elements asked for, or None
    elements: frozenset[str] | None = None
    sort: list[SortKey] = field(default_factory=list)
    #: parameters applied, in request order, for the self and next links
    applied: list[tuple[str, str]] = field(default_factory=list)
    #: resource type -> what this request may see of it; a type not named is unrestricted
    restrictions: dict[str, Restriction] = field(default_factory=dict)
    #: at most this many included resources on a page (SearchLimits.includes)
    max_includes: int = SearchLimits.includes


def _split(value: str) -> list[str]:
    """Split a value on commas that are not escaped with a backslash."""
    parts = value.replace("\\,", _ESCAPED_COMMA).split(",")
    return [p.replace(_ESCAPED_COMMA, ",") for p in parts]


def _unescape(value: str) -> str:
    return value.replace("\\|", "|").replace("\\$", "$").replace("\\\\", "\\")


def _token(param: str, raw: str) -> tuple[object, str]:
    if raw == "":
        raise SearchError("invalid", f"parameter '{param}': empty value")
    if "|" in raw.replace("\\|", ""):
        system, _, code = raw.partition("|")
        return _unescape(system), _unescape(code)
    return ANY_SYSTEM, _unescape(raw)


def _string(param: str, raw: str) -> str:
    if raw == "":
        raise SearchError("invalid", f"parameter '{param}': empty value")
    return _unescape(raw)


#: matches every value (DOTALL: a line break too); date_range refuses what follows a bad prefix
_PREFIX = re.compile(r"(eq|ne|gt|lt|ge|le|sa|eb|ap)?(.*)", re.DOTALL)


def _date(param: str, raw: str, zone: str) -> tuple[str, int, int]:
    prefix, text = cast(re.Match[str], _PREFIX.fullmatch(raw)).groups()
    try:
        low, high = date_range(text, zone)
    except DateFormatError:
        raise SearchError(
            "invalid",
            f"parameter '{param}': {raw!r} is not a date; use an optional prefix "
            f"({', '.join(DATE_PREFIXES)}) and a FHIR date such as 2024-05-01 or 2024-05-01T10:00:00+02:00",
        ) from None
    return prefix or "eq", low, high


def _reference(param: SearchParam, raw: str, base_url: str, modifier_type: str | None) -> tuple[str | None, str]:
    if raw == "":
        raise SearchError("invalid", f"parameter '{param.name}': empty value")
    value = raw
    if base_url and value.startswith(base_url + "/"):
        value = value[len(base_url) + 1 :]
    parts = value.split("/")
    rtype: str | None
    if "://" in value:  # another server's resource
        external = external_reference(value)
        if external is None:
            raise SearchError("invalid", f"parameter '{param.name}': {raw!r} is not a resource URL")
        rtype, rid = external
    elif len(parts) == 1:
        rtype, rid = modifier_type, parts[0]
    elif len(parts) == 2:
        rtype, rid = parts
    elif len(parts) == 4 and parts[2] == "_history":
        rtype, rid = parts[0], parts[1]
    else:
        raise SearchError("invalid", f"parameter '{param.name}': {raw!r} is not an id, Type/id or URL")
    if rtype is not None and param.targets and rtype not in param.targets:
        raise SearchError(
            "invalid",
            f"parameter '{param.name}': {rtype} is not a target of this parameter "
            f"(allowed: {', '.join(param.targets)})",
        )
    if modifier_type and rtype != modifier_type:
        return ("", "")
    return rtype, rid


def _token_of(param: SearchParam, raw: str) -> tuple[object, str]:
    """A token value of `param`; where every code is in one system, a value naming another is refused."""
    system, code = _token(param.name, raw)
    if param.only_system and system is not ANY_SYSTEM and system not in ("", param.code_system):
        raise SearchError("invalid", f"parameter '{param.name}': the codes are in {param.code_system}")
    return system, code


def _of_type(param: str, raw: str) -> tuple[str, str]:
    """`system|code|value`: an identifier of that type with that value -> (system, 'code|value')."""
    parts = [_unescape(p) for p in re.split(r"(?<!\\)\|", raw)]
    if len(parts) != 3 or not parts[1] or not parts[2]:
        raise SearchError(
            "invalid",
            f"parameter '{param}:of-type': {raw!r} is not system|code|value (the identifier's type and its value)",
        )
    return parts[0], f"{parts[1]}|{parts[2]}"


def _missing(param: str, raw: str) -> bool:
    if raw not in ("true", "false"):
        raise SearchError("invalid", f"parameter '{param}:missing': value must be true or false")
    return raw == "true"


def parse_search(
    rtype: str,
    items: list[tuple[str, str]],
    *,
    zone: str,
    base_url: str,
    default_count: int,
    max_count: int,
    strict: bool,
    limits: SearchLimits = SearchLimits(),
) -> SearchQuery:
    """Turn (name, value) pairs from the query string or form body into a SearchQuery."""
    if rtype not in SEARCHABLE:
        raise KeyError(rtype)
    query = SearchQuery(rtype=rtype, count=default_count, sort=default_sort(rtype), max_includes=limits.includes)
    accepted = controls(rtype)
    if len(items) > MAX_PARAMETERS:
        raise SearchError("too-costly", f"at most {MAX_PARAMETERS} search parameters are accepted in one search")
    for name, value in items:
        if _CONTROL_CHARS.search(name) or _CONTROL_CHARS.search(value):
            raise SearchError(
                "invalid",
                f"parameter '{_CONTROL_CHARS.sub('?', name)}': control characters are not allowed in names or values",
            )
        base, _, modifier = name.partition(":")
        if base in CONTROL and base not in accepted:
            _unknown(rtype, name, strict)
            continue
        if base in CONTROL:
            if modifier and not (base in ("_include", "_revinclude") and modifier in ("iterate", "recurse")):
                raise SearchError("not-supported", f"parameter '{name}': {base} takes no modifier")
            _control(query, base, modifier, value, name, max_count)
            continue
        _check_cost(name, query, limits)
        clause = _parse_param(rtype, name, value, zone, base_url, strict)
        if clause is not None:
            query.clauses.append(clause)
            query.applied.append((name, value))
    check_result_controls(query)
    return query


def _shown(name: str) -> str:
    """A parameter's name for a message: a name thousands of characters long, shortened."""
    return name if len(name) <= 80 else name[:80] + "…"


def _check_cost(name: str, query: SearchQuery, limits: SearchLimits) -> None:
    """Refuse a chain or `_has` deeper, or one more of them, than the limits allow, before its
    levels are parsed (one recursion each: a few hundred of them overflow Python's stack)."""
    depth = name.count(".") + name.count("_has:")
    if not depth:
        return
    if depth > limits.chain_depth:
        raise SearchError(
            "too-costly",
            f"parameter '{_shown(name)}': chains and _has reach at most {limits.chain_depth} levels here, "
            f"this one {depth}",
        )
    chains = sum(1 for c in query.clauses if not isinstance(c, Clause))
    if chains >= limits.chains:
        raise SearchError(
            "too-costly",
            f"parameter '{_shown(name)}': at most {limits.chains} chained or _has parameters in one search",
        )


def _unknown(rtype: str, name: str, strict: bool) -> None:
    if strict:
        raise SearchError("not-supported", f"unknown search parameter '{name}' for {rtype}")


def _parse_param(rtype: str, name: str, value: str, zone: str, base_url: str, strict: bool) -> SearchClause | None:
    """One name=value of `rtype`: a Clause, ChainClause or HasClause (None: unknown, lenient)."""
    if rtype not in BY_RESOURCE and (name.startswith("_has:") or "." in name):
        _unknown(rtype, name, strict)  # the audit trail is neither chained from nor into
        return None
    if name.startswith("_has:"):
        return _parse_has(rtype, name, value, zone, base_url, strict)
    head, dot, rest = name.partition(".")
    if dot:
        return _parse_chain(rtype, head, rest, name, value, zone, base_url, strict)
    base, _, modifier = name.partition(":")
    param = SEARCHABLE[rtype].get(base)
    if param is None:
        _unknown(rtype, name, strict)
        return None
    return _clause(param, modifier or None, value, name, zone, base_url)


def _parse_chain(
    rtype: str, head: str, rest: str, name: str, value: str, zone: str, base_url: str, strict: bool
) -> ChainClause | None:
    base, _, type_modifier = head.partition(":")
    param = BY_RESOURCE[rtype].get(base)
    if param is None:
        _unknown(rtype, name, strict)
        return None
    if param.type != "reference":
        raise SearchError("invalid", f"parameter '{name}': only reference parameters can be chained")
    targets = (type_modifier,) if type_modifier else served_targets(param)
    if type_modifier and type_modifier not in served_targets(param):
        raise SearchError(
            "not-supported", f"parameter '{name}': {type_modifier} is not a target of '{base}' that this server holds"
        )
    if len(targets) != 1:
        raise SearchError(
            "not-supported",
            f"parameter '{name}': '{base}' points at no resource type this server holds"
            if not targets
            else f"parameter '{name}': name the target type, e.g. {base}:{targets[0]}.{rest}",
        )
    inner = _inner(targets[0], rest, name, value, zone, base_url, strict)
    return None if inner is None else ChainClause(param, targets[0], inner)


def _parse_has(rtype: str, name: str, value: str, zone: str, base_url: str, strict: bool) -> HasClause | None:
    parts = name.split(":", 3)
    if len(parts) < 4 or not all(parts[1:]):
        raise SearchError("invalid", f"parameter '{name}': use _has:Type:reference:parameter=value")
    _, source, ref_name, rest = parts
    if source not in BY_RESOURCE:
        raise SearchError("not-supported", f"parameter '{name}': {source} is not served here")
    param = BY_RESOURCE[source].get(ref_name)
    if param is None or param.type != "reference" or rtype not in param.targets:
        raise SearchError("invalid", f"parameter '{name}': {source}.{ref_name} is not a reference to {rtype}")
    inner = _inner(source, rest, name, value, zone, base_url, strict)
    return None if inner is None else HasClause(source, param, inner)


def _inner(rtype: str, rest: str, name: str, value: str, zone: str, base_url: str, strict: bool) -> SearchClause | None:
    """Parse the part after a chain or _has; errors name the whole parameter as sent."""
    try:
        return _parse_param(rtype, rest, value, zone, base_url, strict)
    except SearchError as err:
        if err.diagnostics.startswith(f"parameter '{name}'"):
            raise
        raise SearchError(err.code, f"parameter '{name}': {err.diagnostics}") from None


def _clause(param: SearchParam, modifier: str | None, value: str, name: str, zone: str, base_url: str) -> Clause:
    modifier_type = None
    if modifier:
        if not param.modifiers:
            raise SearchError("not-supported", f"parameter '{name}': modifier ':{modifier}' is not supported")
        if param.type == "reference" and modifier in param.targets:
            modifier_type, modifier = modifier, None
        elif (
            modifier not in MODIFIERS.get(param.type, set())
            or (modifier == "of-type" and not param.identifiers)
            or (param.matcher and modifier != "missing")
            or (param.column and modifier not in ("not", "missing"))
        ):
            raise SearchError("not-supported", f"parameter '{name}': modifier ':{modifier}' is not supported")
    if modifier == "missing":
        return Clause(param, "missing", [_missing(param.name, value)], (name, value))
    raws = _split(value)
    if len(raws) > MAX_VALUES:
        raise SearchError("too-costly", f"parameter '{name}': at most {MAX_VALUES} comma-separated values")
    if modifier == "text":
        return Clause(param, None, [_string(name, raw) for raw in raws], (name, value), "string", name)
    if modifier == "of-type":
        return Clause(param, None, [_of_type(param.name, raw) for raw in raws], (name, value), "token", name)
    if modifier == "identifier":
        return Clause(param, None, [_token(name, raw) for raw in raws], (name, value), "token", name)
    if param.matcher == "phonetic":
        return Clause(param, None, [phonetic_codes(_string(name, raw)) for raw in raws], (name, value), "phonetic")
    if param.matcher == "recorded-value":  # the value as recorded, whatever its form
        return Clause(param, None, [_string(name, raw) for raw in raws], (name, value), "recorded-value")
    values: list[Any] = []
    for raw in raws:
        if param.type == "token":
            values.append(_token_of(param, raw))
        elif param.type == "string":
            values.append(_string(param.name, raw))
        elif param.type == "date":
            values.append(_date(param.name, raw, zone))
        elif param.type == "reference":
            values.append(_reference(param, raw, base_url, modifier_type))
    return Clause(param, modifier, values, (name, value))


def _include_directives(rtype: str, kind: str, value: str, iterate: bool) -> list[Include]:
    """`Source:param[:Target]` or `*` -> the Include directives it stands for."""
    table = INCLUDES if kind == "_include" else REVINCLUDES
    if value == "*":
        if kind == "_include":
            return [Include(s, p, t, iterate) for (s, p), t in table.items() if s == rtype or iterate]
        return [Include(s, p, t, iterate) for (s, p), t in table.items() if t == rtype or iterate]
    source, _, rest = value.partition(":")
    pname, _, target = rest.partition(":")
    resolved = table.get((source, pname))
    # without :iterate an _include starts from the matches, a _revinclude points at them
    anchored = iterate or (source == rtype if kind == "_include" else resolved == rtype)
    if resolved is None or not anchored or (target and target != resolved):
        if kind == "_include":
            supported = [f"{s}:{p}" for (s, p) in table if s == rtype]
        else:
            supported = [f"{s}:{p}" for (s, p), t in table.items() if t == rtype]
        raise SearchError(
            "not-supported",
            f"parameter '{kind}': {value!r} is not supported (supported: {', '.join(supported) or 'none'}, or *)",
        )
    return [Include(source, pname, resolved, iterate)]


def _control(query: SearchQuery, base: str, modifier: str, value: str, name: str, max_count: int) -> None:
    if base == "_count":
        if not (value.isascii() and value.isdigit()):  # str.isdigit() alone takes "²", which int() refuses
            raise SearchError("invalid", f"parameter '_count': {value!r} is not a non-negative integer")
        query.count = min(int(value), max_count)
        query.applied.append((name, str(query.count)))
    elif base in ("_include", "_revinclude"):
        iterate = modifier in ("iterate", "recurse")
        for directive in _include_directives(query.rtype, base, value, iterate):
            (query.includes if base == "_include" else query.revincludes).append(directive)
        query.applied.append((name, value))
    elif base == "_page":
        query.page = value
    elif base == "_total":
        if value not in ("none", "estimate", "accurate"):
            raise SearchError("invalid", "parameter '_total': must be none, estimate or accurate")
        query.total = value
        query.applied.append((name, value))
    elif base == "_summary":
        if value not in SUMMARY_MODES:
            raise SearchError("invalid", f"parameter '_summary': must be one of {', '.join(SUMMARY_MODES)}")
        query.summary = value
        query.applied.append((name, value))
    elif base == "_elements":
        query.elements = _elements(query.rtype, value)
        query.applied.append((name, value))
    elif base == "_sort":
        query.sort = _sort_keys(query.rtype, value)
        query.applied.append((name, value))
    elif base == "_pretty":
        check_pretty(value)
    # _format is handled by the content negotiation in routes, and so is the indentation of _pretty


def check_pretty(value: str) -> bool:
    """`_pretty=true|false` (FHIR R4 http.html 3.1.0.1.10): whether to indent the answer."""
    if value not in ("true", "false"):
        raise SearchError("invalid", "parameter '_pretty': must be true or false")
    return value == "true"


def _elements(rtype: str, value: str) -> frozenset[str]:
    names = frozenset(v.strip() for v in value.split(",") if v.strip())
    if not names:
        raise SearchError("invalid", "parameter '_elements': name at least one element")
    unknown = sorted(n for n in names if n not in ELEMENTS[rtype])
    if unknown:
        raise SearchError("invalid", f"parameter '_elements': {', '.join(unknown)} is not an element of {rtype}")
    return names


def default_sort(rtype: str) -> list[SortKey]:
    """The order of a search without `_sort`: by id, but the audit trail newest first."""
    if rtype == "AuditEvent":
        return [SortKey(SEARCHABLE["AuditEvent"]["date"], descending=True)]
    return []


def _sort_keys(rtype: str, value: str) -> list[SortKey]:
    """`_sort=a,-b`: sort by a ascending, then b descending (FHIR R4 search 3.1.1.5.7)."""
    keys, seen = [], set()
    for raw in value.split(","):
        name = raw.strip()
        descending = name.startswith("-")
        name = name.lstrip("-")
        param = BY_RESOURCE[rtype].get(name)
        if param is None or not param.sortable:
            raise SearchError("invalid", f"parameter '_sort': {name or raw!r} is not a sortable parameter of {rtype}")
        if name not in seen:
            seen.add(name)
            keys.append(SortKey(param, descending))
    return keys


def check_result_controls(query: SearchQuery) -> None:
    """Combinations of result parameters the server refuses, after all are parsed."""
    if query.elements is not None and query.summary not in ("false",):
        raise SearchError("invalid", "parameters '_elements' and '_summary' cannot be combined")
