"""An independent answer to FHIR R4 searches, for differential tests of the server.

What a resource offers to a search parameter comes from the parameter's official R4
SearchParameter `expression`, evaluated with fhirpathpy; how a query value matches it follows
FHIR R4 search (https://hl7.org/fhir/R4/search.html), written out here from the spec. Nothing
is shared with the server's parser, index or SQL, so a disagreement between the two is a bug
in one of them.

Scope: the parameter types token, string, date and reference; modifiers :missing, :not,
:exact, :contains and :[type]; chains, `_has`, comma OR and repeated-parameter AND. A form
outside that raises `Unsupported` rather than guessing. Extending it for a new feature means
one more branch in `_clause_test` (a modifier) or in `_values` (an element type).
"""
from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from functools import cache, lru_cache
from zoneinfo import ZoneInfo

from fhirpathpy import compile as fhirpath_compile
from fhirpathpy.engine.nodes import ResourceNode
from fhirpathpy.models import models

import r4_package

DATE_PREFIXES = ("eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap")
#: abstract types a FHIRPath expression may start with; they match every resource
_SUPERTYPES = ("Resource", "DomainResource")
_DATE = re.compile(
    r"(?P<y>\d{4})(?:-(?P<m>\d{2})(?:-(?P<d>\d{2})(?:T(?P<H>\d{2}):(?P<M>\d{2})"
    r"(?::(?P<S>\d{2})(?:\.(?P<f>\d+))?)?(?P<tz>Z|[+-]\d{2}:\d{2})?)?)?)?"
)


class Unsupported(Exception):
    """A query form this oracle does not evaluate."""


@dataclass(frozen=True)
class Token:
    system: str | None
    code: str | None


@dataclass(frozen=True)
class Ref:
    """A literal reference: `type`/`id` when it names a resource here, else the absolute `url`."""

    type: str | None
    id: str | None
    url: str | None = None


def normalize(text: str) -> str:
    """Case- and accent-insensitive form (R4 search.html#string: "normalized by case and accent")."""
    return "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c)).casefold()


def split_escaped(text: str, separator: str) -> list[str]:
    """Split on `separator` where it is not escaped with a backslash (R4 search.html#escaping);
    the pieces keep their escapes."""
    pieces, current, escaped = [], [], False
    for char in text:
        if escaped:
            current.append(char)
            escaped = False
        elif char == "\\":
            current.append(char)
            escaped = True
        elif char == separator:
            pieces.append("".join(current))
            current = []
        else:
            current.append(char)
    pieces.append("".join(current))
    return pieces


def unescape(text: str) -> str:
    return re.sub(r"\\(.)", r"\1", text)


@lru_cache(maxsize=4096)
def date_range(text: str, zone: ZoneInfo) -> tuple[datetime, datetime]:
    """[low, high) in UTC of a FHIR date, dateTime or instant: the whole interval its precision names.

    A value without a zone is local time in `zone`, the server's configured zone (R4
    search.html#date leaves such values to the server); the end of a local day or month is
    found on the wall clock, then converted, so a day across a daylight saving change keeps
    its 23 or 25 hours.
    """
    match = _DATE.fullmatch(text)
    if not match:
        raise Unsupported(f"{text!r} is not a FHIR date")
    g = match.groupdict()
    if g["tz"] == "Z":
        tz = timezone.utc
    elif g["tz"]:
        sign = -1 if g["tz"][0] == "-" else 1
        tz = timezone(sign * timedelta(hours=int(g["tz"][1:3]), minutes=int(g["tz"][4:6])))
    else:
        tz = zone
    year = int(g["y"])
    if g["m"] is None:
        low, high = datetime(year, 1, 1, tzinfo=tz), datetime(year + 1, 1, 1, tzinfo=tz)
    elif g["d"] is None:
        month = int(g["m"])
        low, high = datetime(year, month, 1, tzinfo=tz), datetime(year + month // 12, month % 12 + 1, 1, tzinfo=tz)
    elif g["H"] is None:
        low = datetime(year, int(g["m"]), int(g["d"]), tzinfo=tz)
        high = low + timedelta(days=1)
    else:
        digits = (g["f"] or "")[:6]
        low = datetime(year, int(g["m"]), int(g["d"]), int(g["H"]), int(g["M"]), int(g["S"] or 0),
                       int(digits.ljust(6, "0")) if digits else 0, tzinfo=tz)
        if g["S"] is None:
            high = low + timedelta(minutes=1)
        elif digits:
            high = low + timedelta(microseconds=10 ** (6 - len(digits)))
        else:
            high = low + timedelta(seconds=1)
    return low.astimezone(timezone.utc), high.astimezone(timezone.utc)


def _date_matches(prefix: str, search: tuple[datetime, datetime], target: tuple[datetime, datetime]) -> bool:
    """The R4 prefix table (search.html#prefix), with both values as half-open ranges."""
    s_low, s_high = search
    t_low, t_high = target
    contains = s_low <= t_low and t_high <= s_high
    if prefix == "eq":
        return contains
    if prefix == "ne":
        return not contains
    if prefix == "gt":  # the range above the search value overlaps the target
        return t_high > s_high
    if prefix == "lt":
        return t_low < s_low
    if prefix == "ge":
        return t_high > s_high or contains
    if prefix == "le":
        return t_low < s_low or contains
    if prefix == "sa":  # the target starts after the search range ends
        return t_low >= s_high
    if prefix == "eb":
        return t_high <= s_low
    raise Unsupported(f"date prefix {prefix!r} is server-defined")


def _split_union(expression: str) -> list[str]:
    """Top-level operands of `a | b | c`."""
    parts, depth, current = [], 0, []
    for char in expression:
        depth += char == "("
        depth -= char == ")"
        if char == "|" and depth == 0:
            parts.append("".join(current).strip())
            current = []
        else:
            current.append(char)
    parts.append("".join(current).strip())
    return parts


def _element_path(branch: str) -> str:
    """`ImagingStudy.subject.where(resolve() is Patient)` -> `ImagingStudy.subject`."""
    while True:
        stripped = re.sub(r"\.where\((?:[^()]|\([^()]*\))*\)", "", branch)
        if stripped == branch:
            return branch
        branch = stripped


class Oracle:
    """Searches over a fixed list of resources (as the server returns them on read)."""

    def __init__(self, resources: list[dict], zone: str, base_url: str):
        self.by_type: dict[str, dict[str, dict]] = {}
        for resource in resources:
            self.by_type.setdefault(resource["resourceType"], {})[resource["id"]] = resource
        self.zone = ZoneInfo(zone)
        self.base_url = base_url.rstrip("/")
        self.definitions = r4_package.search_parameters()
        self._cache: dict = {}

    # ------------------------------------------------------------------ definitions

    def search_parameter(self, rtype: str, code: str) -> dict:
        found = self.definitions.get((rtype, code))
        if found is None:
            found = next((self.definitions[(base, code)] for base in _SUPERTYPES if (base, code) in self.definitions),
                         None)
        if found is None:
            raise Unsupported(f"{rtype} has no R4 search parameter {code!r}")
        return found

    @cache
    def _compiled(self, rtype: str, code: str) -> list[tuple[str, object]]:
        """(element path, compiled FHIRPath) per union operand of the expression that applies to `rtype`.

        Each operand is evaluated alone because fhirpathpy's `|` drops the element types of
        its operands, and the type says how a value is matched (a `code` is a token, a
        `string` is text). An operand starting with another resource type yields nothing on
        `rtype` (FHIRPath type filter), so it is skipped; one starting with `Resource`
        applies to every type, which fhirpathpy does not know, so it is rewritten to `rtype`.
        """
        parameter = self.search_parameter(rtype, code)
        out = []
        for branch in _split_union(parameter["expression"]):
            root, _, rest = branch.partition(".")
            if root in _SUPERTYPES:
                branch = f"{rtype}.{rest}"
            elif root != rtype:
                continue
            options = {"returnRawData": True, "userInvocationTable": {"resolve": {"fn": self._resolve}}}
            out.append((_element_path(branch), fhirpath_compile(branch, models["r4"], options)))
        return out

    def _resolve(self, inputs: list) -> list:
        """FHIRPath resolve(), which fhirpathpy leaves to the host application.

        A literal reference resolves to the resource stored here, and to a bare resource of
        the type the reference names when it is not stored (a search parameter such as
        `subject.where(resolve() is Patient)` selects by the type the reference declares,
        whether or not the target is on this server). Logical references (identifier only)
        and absolute URLs of other servers resolve to nothing.
        """
        out = []
        for item in inputs:
            ref = _parse_reference(item.get("reference") if isinstance(item, dict) else item, self.base_url)
            if ref is None or ref.type is None:
                continue
            stored = self.by_type.get(ref.type, {}).get(ref.id) or {"resourceType": ref.type, "id": ref.id}
            out.append(ResourceNode.create_node(stored))
        return out

    @cache
    def _required_system(self, path: str) -> str | None:
        """The code system of a `code` element's required binding, if its value set has one.

        A `code` carries no system in the instance, but its required value set fixes it, so
        `system|code` applies (as R4 does for `gender` and `status`).
        """
        rtype = path.split(".")[0]
        elements = r4_package.definition("StructureDefinition", rtype)["snapshot"]["element"]
        element = next((e for e in elements if e["path"] == path), None)
        binding = (element or {}).get("binding", {})
        if binding.get("strength") != "required" or "valueSet" not in binding:
            return None
        url = binding["valueSet"].split("|")[0]
        value_set = r4_package.definition("ValueSet", url.rsplit("/", 1)[-1])
        assert value_set["url"] == url, url
        systems = {inc.get("system") for inc in value_set.get("compose", {}).get("include", [])}
        return systems.pop() if len(systems) == 1 else None

    # ------------------------------------------------------------------ values of a resource

    def values(self, rtype: str, rid: str, code: str) -> list:
        """What resource `rtype/rid` offers to parameter `code`: Tokens, strings, date strings or Refs."""
        key = (rtype, rid, code)
        if key not in self._cache:
            resource = self.by_type[rtype][rid]
            kind = self.search_parameter(rtype, code)["type"]
            found = []
            for path, evaluate in self._compiled(rtype, code):
                for node in evaluate(resource):
                    found.extend(self._values(kind, path, node))
            self._cache[key] = found
        return self._cache[key]

    def _values(self, kind: str, path: str, node) -> list:
        """The search values of one element, by its FHIR type.

        A value is what a search of the parameter's type can match: a Coding or Identifier
        needs a code (value) or a system, a Reference a literal `reference`. A display-only
        Coding or Reference, or a logical reference (identifier only), therefore offers
        nothing, and `:missing=true` finds its resource (R4 search.html#missing: "resources
        that don't have a value for the parameter").
        """
        element_type = node.path if isinstance(node, ResourceNode) else None
        data = node.data if isinstance(node, ResourceNode) else node
        if kind == "token":
            if element_type == "Coding":
                return [Token(data.get("system"), data.get("code"))] if ("code" in data or "system" in data) else []
            if element_type == "Identifier":
                return [Token(data.get("system"), data.get("value"))] if ("value" in data or "system" in data) else []
            if element_type == "CodeableConcept":
                return [Token(c.get("system"), c.get("code")) for c in data.get("coding", [])
                        if "code" in c or "system" in c]
            if element_type == "code":
                return [Token(self._required_system(path), data)]
            if element_type == "boolean":
                return [Token(None, "true" if data else "false")]
            if element_type in ("System.String", "string", "id", "uri"):
                return [Token(None, data)]
        elif kind == "string":
            if element_type in ("string", "System.String", "markdown"):
                return [data]
            if element_type == "HumanName":
                parts = [data.get("text"), data.get("family"), *data.get("given", []), *data.get("prefix", []),
                         *data.get("suffix", [])]
                return [p for p in parts if p]
        elif kind == "date":
            if element_type in ("date", "dateTime", "instant"):
                return [data]
        elif kind == "reference":
            if element_type == "Reference":
                ref = _parse_reference(data.get("reference"), self.base_url)
                return [ref] if ref else []
        raise Unsupported(f"{kind} values of {element_type} elements ({path})")

    # ------------------------------------------------------------------ search

    def search(self, rtype: str, items: list[tuple[str, str]]) -> set[str]:
        """Ids of `rtype` matching every (name, value) pair: repetition is AND."""
        found = set(self.by_type.get(rtype, {}))
        for name, value in items:
            found &= self._matching(rtype, name, value)
        return found

    def _matching(self, rtype: str, name: str, value: str) -> set[str]:
        if name.startswith("_has:"):
            parts = name.split(":", 3)
            if len(parts) != 4:
                raise Unsupported(name)
            _, source, ref_code, rest = parts
            sources = self._matching(source, rest, value)
            return {ref.id for sid in sources for ref in self.values(source, sid, ref_code) if ref.type == rtype}
        head, dot, rest = name.partition(".")
        if dot:
            ref_code, _, type_modifier = head.partition(":")
            parameter = self.search_parameter(rtype, ref_code)
            if parameter["type"] != "reference":
                raise Unsupported(f"{name}: only references chain")
            targets = [type_modifier] if type_modifier else [t for t in parameter.get("target", [])
                                                                if self._defines(t, rest)]
            hits = {(t, tid) for t in targets if t in self.by_type for tid in self._matching(t, rest, value)}
            return {rid for rid in self.by_type.get(rtype, {})
                    if any((ref.type, ref.id) in hits for ref in self.values(rtype, rid, ref_code))}
        code, _, modifier = name.partition(":")
        test = self._clause_test(rtype, code, modifier, value)
        return {rid for rid in self.by_type.get(rtype, {}) if test(self.values(rtype, rid, code))}

    def _defines(self, rtype: str, rest: str) -> bool:
        first = rest.split(".")[0].split(":")[0]
        if first == "_has":
            return True
        return (rtype, first) in self.definitions or any((b, first) in self.definitions for b in _SUPERTYPES)

    def _clause_test(self, rtype: str, code: str, modifier: str, value: str) -> Callable[[list], bool]:
        """Whether a resource's values (see `values`) satisfy `code[:modifier]=value`; commas are OR."""
        kind = self.search_parameter(rtype, code)["type"]
        if modifier == "missing":
            if value not in ("true", "false"):
                raise Unsupported(f"{code}:missing={value}")
            return lambda values: (not values) == (value == "true")
        alternatives = split_escaped(value, ",")
        if kind == "token" and modifier in ("", "not"):
            tokens = [_parse_token(raw) for raw in alternatives]
            negate = modifier == "not"
            return lambda values: any(_token_matches(t, v) for t in tokens for v in values) != negate
        if kind == "string" and modifier in ("", "exact", "contains"):
            texts = [unescape(raw) for raw in alternatives]
            return lambda values: any(_string_matches(modifier, t, v) for t in texts for v in values)
        if kind == "date" and modifier == "":
            spans = [self._search_date(raw) for raw in alternatives]
            return lambda values: any(_date_matches(prefix, span, date_range(v, self.zone))
                                      for prefix, span in spans for v in values)
        if kind == "reference" and (modifier == "" or modifier[:1].isupper()):
            wanted = [_parse_reference(unescape(raw), self.base_url) for raw in alternatives]
            return lambda values: any(_reference_matches(w, modifier or None, v) for w in wanted for v in values)
        raise Unsupported(f"{kind} parameter {code!r} with modifier {modifier!r}")

    def _search_date(self, raw: str) -> tuple[str, tuple[datetime, datetime]]:
        prefix = raw[:2] if raw[:2] in DATE_PREFIXES else "eq"
        text = raw[2:] if raw[:2] in DATE_PREFIXES else raw
        return prefix, date_range(text, self.zone)


def _parse_reference(text: str | None, base_url: str) -> Ref | None:
    """A literal reference as a Ref; None for no reference or a contained one (`#id`)."""
    if not text or text.startswith("#"):
        return None
    if text.startswith(base_url + "/"):
        text = text[len(base_url) + 1:]
    if ":" in text:
        return Ref(None, None, text)
    parts = text.split("/")
    if len(parts) == 4 and parts[2] == "_history":
        parts = parts[:2]
    if len(parts) == 1:
        return Ref(None, parts[0])
    if len(parts) == 2:
        return Ref(parts[0], parts[1])
    return Ref(None, None, text)


def _reference_matches(wanted: Ref | None, type_modifier: str | None, ref: Ref) -> bool:
    """R4 search.html#reference: `id` (any type, or the :[type] one), `Type/id`, or a URL."""
    if wanted is None:
        return False
    if wanted.url is not None:
        return ref.url == wanted.url
    if wanted.type is None:  # a bare id
        return ref.id == wanted.id and type_modifier in (None, ref.type)
    return (ref.type, ref.id) == (wanted.type, wanted.id) and type_modifier in (None, wanted.type)


_ANY = object()


def _parse_token(raw: str) -> tuple:
    """(system, code) of a token value: `code` (system _ANY), `system|code`, `|code` (system None),
    `system|` (code _ANY)."""
    pieces = split_escaped(raw, "|")
    if len(pieces) == 1:
        return _ANY, unescape(raw)
    if len(pieces) != 2:
        raise Unsupported(f"token {raw!r}")
    system, code = unescape(pieces[0]), unescape(pieces[1])
    return system or None, code if code or system == "" else _ANY


def _token_matches(wanted: tuple, token: Token) -> bool:
    """R4 search.html#token."""
    system, code = wanted
    return (system is _ANY or token.system == system) and (code is _ANY or token.code == code)


def _string_matches(modifier: str, query: str, text: str) -> bool:
    """R4 search.html#string: starts with (normalized), :contains anywhere (normalized), :exact."""
    if modifier == "exact":
        return text == query
    if modifier == "contains":
        return normalize(query) in normalize(text)
    return normalize(text).startswith(normalize(query))
