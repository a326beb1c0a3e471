"""An independent answer to FHIR R4 searches, for differential tests of the server.

What a resource offers to a search parameter comes from the parameter's official R4
SearchParameter `expression`, evaluated with fhirpathpy; how a query value matches it follows
FHIR R4 search (https://hl7.org/fhir/R4/search.html), written out here from the spec. Nothing
is shared with the server's parser, index or SQL, so a disagreement between the two is a bug
in one of them.

Scope: the parameter types token, string, date and reference; modifiers :missing, :not,
:exact, :contains, :[type], token :text and :of-type, reference :identifier; chains, `_has`,
comma OR and repeated-parameter AND; `_sort` (`order`). A form outside that raises
`Unsupported` rather than guessing. Extending it for a new feature means one more branch in
`_clause_test` (a modifier) or in `_values` (an element type).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from functools import cache, lru_cache
from zoneinfo import ZoneInfo

from fhirpathpy import compile as fhirpath_compile
from fhirpathpy.engine.nodes import ResourceNode
from fhirpathpy.models import models

from tests.support import r4_package

DATE_PREFIXES = ("eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap")
#: abstract types a FHIRPath expression may start with; they match every resource
_SUPERTYPES = ("Resource", "DomainResource")
#: the element types whose text a token's `:text` searches (R4 SearchModifierCode `text`: "text
#: associated with the code/value - either CodeableConcept.text, Coding.display, or Identifier.type.text")
TEXT_ELEMENTS = ("CodeableConcept", "Coding", "Identifier")
#: modifiers that match another part of an element than its search value (see `Oracle.values`)
ASPECT_MODIFIERS = ("text", "of-type", "identifier")
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
        tz = UTC
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
        low = datetime(
            year,
            int(g["m"]),
            int(g["d"]),
            int(g["H"]),
            int(g["M"]),
            int(g["S"] or 0),
            int(digits.ljust(6, "0")) if digits else 0,
            tzinfo=tz,
        )
        if g["S"] is None:
            high = low + timedelta(minutes=1)
        elif digits:
            high = low + timedelta(microseconds=10 ** (6 - len(digits)))
        else:
            high = low + timedelta(seconds=1)
    return low.astimezone(UTC), high.astimezone(UTC)


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
            found = next(
                (self.definitions[(base, code)] for base in _SUPERTYPES if (base, code) in self.definitions), None
            )
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

    @cache
    def element_types(self, rtype: str, code: str) -> frozenset[str]:
        """The R4 types of the elements parameter `code` selects on `rtype` (from the StructureDefinition)."""
        elements = {e["path"]: e for e in r4_package.definition("StructureDefinition", rtype)["snapshot"]["element"]}
        found = set()
        for path, _ in self._compiled(rtype, code):
            found.update(t["code"] for t in elements.get(path, {}).get("type", []))
        return frozenset(found)

    # ------------------------------------------------------------------ values of a resource

    def values(self, rtype: str, rid: str, code: str, aspect: str = "") -> list:
        """What resource `rtype/rid` offers to parameter `code`: Tokens, strings, date strings or Refs.

        `aspect` names a modifier that matches another part of the elements: "text" (strings
        a token's `:text` searches), "of-type" ((type system, type code, value) of
        Identifiers) or "identifier" (Tokens of `Reference.identifier`).
        """
        key = (rtype, rid, code, aspect)
        if key not in self._cache:
            resource = self.by_type[rtype][rid]
            kind = self.search_parameter(rtype, code)["type"]
            found = []
            for path, evaluate in self._compiled(rtype, code):
                for node in evaluate(resource):
                    found.extend(self._values(kind, path, node, aspect))
            self._cache[key] = found
        return self._cache[key]

    def _values(self, kind: str, path: str, node, aspect: str = "") -> list:
        """The search values of one element, by its FHIR type.

        A value is what a search of the parameter's type can match: a Coding or Identifier
        needs a code (value) or a system, a Reference a literal `reference`. A display-only
        Coding or Reference, or a logical reference (identifier only), therefore offers
        nothing to match; `:missing` asks whether the element is there at all (`present`).
        """
        element_type = node.path if isinstance(node, ResourceNode) else None
        data = node.data if isinstance(node, ResourceNode) else node
        if aspect:
            return self._aspect_values(kind, aspect, element_type, data, path)
        if kind == "token":
            if element_type == "Coding":
                return [Token(data.get("system"), data.get("code"))] if ("code" in data or "system" in data) else []
            if element_type == "Identifier":
                return [Token(data.get("system"), data.get("value"))] if ("value" in data or "system" in data) else []
            if element_type == "CodeableConcept":
                return [
                    Token(c.get("system"), c.get("code"))
                    for c in data.get("coding", [])
                    if "code" in c or "system" in c
                ]
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
                parts = [
                    data.get("text"),
                    data.get("family"),
                    *data.get("given", []),
                    *data.get("prefix", []),
                    *data.get("suffix", []),
                ]
                return [p for p in parts if p]
        elif kind == "date":
            if element_type in ("date", "dateTime", "instant"):
                return [data]
        elif kind == "reference" and element_type == "Reference":
            ref = _parse_reference(data.get("reference"), self.base_url)
            return [ref] if ref else []
        raise Unsupported(f"{kind} values of {element_type} elements ({path})")

    @staticmethod
    def _aspect_values(kind: str, aspect: str, element_type: str | None, data, path: str) -> list:
        """What a modifier that looks past the search value matches in one element.

        `:text` is "processed as a string that searches text associated with the code/value -
        either CodeableConcept.text, Coding.display, or Identifier.type.text" (a
        CodeableConcept's codings are Codings, so their displays count too); other element
        types have no associated text. For `:of-type` (R4 search.html#token) "the system and
        code refer to an Identifier.type.coding.system and .code, and match if any of the type
        codes match", and the value to Identifier.value. With reference `:identifier`
        (search.html#reference) "the search value works as a token search" on
        Reference.identifier.
        """
        if kind == "token" and aspect == "text":
            if element_type == "CodeableConcept":
                texts = [data.get("text"), *(c.get("display") for c in data.get("coding", []))]
            elif element_type == "Coding":
                texts = [data.get("display")]
            elif element_type == "Identifier":
                texts = [data.get("type", {}).get("text")]
            else:
                texts = []
            return [t for t in texts if t]
        if kind == "token" and aspect == "of-type":
            if element_type != "Identifier" or "value" not in data:
                return []
            return [(c.get("system"), c.get("code"), data["value"]) for c in data.get("type", {}).get("coding", [])]
        if kind == "reference" and aspect == "identifier" and element_type == "Reference":
            ident = data.get("identifier") or {}
            return [Token(ident.get("system"), ident.get("value"))] if ("value" in ident or "system" in ident) else []
        raise Unsupported(f":{aspect} on {kind} values of {element_type} elements ({path})")

    # ------------------------------------------------------------------ search

    def present(self, rtype: str, rid: str, code: str) -> bool:
        """Whether resource `rtype/rid` has an element parameter `code` reaches, whatever it holds:
        what `:missing` asks (R4 search.html#missing: "resources that do (not) have a value for
        the element"; a text-only CodeableConcept or an identifier-only Reference is a value)."""
        resource = self.by_type[rtype][rid]
        return any(evaluate(resource) for _, evaluate in self._compiled(rtype, code))

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
            targets = (
                [type_modifier] if type_modifier else [t for t in parameter.get("target", []) if self._defines(t, rest)]
            )
            hits = {(t, tid) for t in targets if t in self.by_type for tid in self._matching(t, rest, value)}
            return {
                rid
                for rid in self.by_type.get(rtype, {})
                if any((ref.type, ref.id) in hits for ref in self.values(rtype, rid, ref_code))
            }
        code, _, modifier = name.partition(":")
        if modifier == "missing":
            if value not in ("true", "false"):
                raise Unsupported(f"{code}:missing={value}")
            return {rid for rid in self.by_type.get(rtype, {}) if self.present(rtype, rid, code) != (value == "true")}
        test = self._clause_test(rtype, code, modifier, value)
        aspect = modifier if modifier in ASPECT_MODIFIERS else ""
        return {rid for rid in self.by_type.get(rtype, {}) if test(self.values(rtype, rid, code, aspect))}

    def _defines(self, rtype: str, rest: str) -> bool:
        first = rest.split(".")[0].split(":")[0]
        if first == "_has":
            return True
        return (rtype, first) in self.definitions or any((b, first) in self.definitions for b in _SUPERTYPES)

    def _clause_test(self, rtype: str, code: str, modifier: str, value: str) -> Callable[[list], bool]:
        """Whether a resource's values (see `values`) satisfy `code[:modifier]=value`; commas are OR."""
        kind = self.search_parameter(rtype, code)["type"]
        alternatives = split_escaped(value, ",")
        if (kind == "token" and modifier in ("", "not")) or (kind == "reference" and modifier == "identifier"):
            tokens = [_parse_token(raw) for raw in alternatives]
            negate = modifier == "not"
            return lambda values: any(_token_matches(t, v) for t in tokens for v in values) != negate
        if kind == "token" and modifier == "text":  # "processed as a string": starts with, normalized
            texts = [unescape(raw) for raw in alternatives]
            return lambda values: any(_string_matches("", t, v) for t in texts for v in values)
        if kind == "token" and modifier == "of-type":
            wanted = [_parse_of_type(raw) for raw in alternatives]
            return lambda values: any(w == v for w in wanted for v in values)
        if kind == "string" and modifier in ("", "exact", "contains"):
            texts = [unescape(raw) for raw in alternatives]
            return lambda values: any(_string_matches(modifier, t, v) for t in texts for v in values)
        if kind == "date" and modifier == "":
            spans = [self._search_date(raw) for raw in alternatives]
            return lambda values: any(
                _date_matches(prefix, span, date_range(v, self.zone)) for prefix, span in spans for v in values
            )
        if kind == "reference" and (modifier == "" or modifier[:1].isupper()):
            wanted = [_parse_reference(unescape(raw), self.base_url) for raw in alternatives]
            return lambda values: any(_reference_matches(w, modifier or None, v) for w in wanted for v in values)
        raise Unsupported(f"{kind} parameter {code!r} with modifier {modifier!r}")

    # ------------------------------------------------------------------ _sort

    def order(self, rtype: str, ids, sort: list[str]) -> list[str]:
        """`ids` in the order `_sort=<sort>` asks for (R4 search.html#_sort), ties by id.

        Each key sorts the resources that have a value for it, and puts those without one
        last, in both directions; sorting stably from the last key to the first, after
        ordering by id, gives the order of the whole key list.
        """
        ordered = sorted(ids)
        for key in reversed(sort):
            descending = key.startswith("-")
            values = {rid: self.sort_value(rtype, rid, key) for rid in ordered}
            present = [rid for rid in ordered if values[rid] is not None]
            ordered = sorted(present, key=values.__getitem__, reverse=descending) + [
                rid for rid in ordered if values[rid] is None
            ]
        return ordered

    def sort_value(self, rtype: str, rid: str, key: str):
        """The value resource `rid` sorts by for one `_sort` key (`code` or `-code`); None: none.

        R4: when an element repeats, "the sort is based on the item in the set of multiple
        parameters that comes earliest in the specified sort order", so the lowest value going
        up and the highest going down. What a value sorts as is the server's to define (R4
        leaves it open); these follow docs/search.md: strings in their normalized form
        (`normalize`) and tokens by code, both by code point; references by `Type/id`, one to
        another server by `Type/~URL` (after the local ids of its type); dates by the start of
        their period, in both directions.
        """
        descending = key.startswith("-")
        code = key.lstrip("-")
        kind = self.search_parameter(rtype, code)["type"]
        keys = []
        for value in self.values(rtype, rid, code):
            if kind == "token":
                if value.code is not None:
                    keys.append(value.code)
            elif kind == "string":
                keys.append(normalize(value))
            elif kind == "date":
                keys.append(date_range(value, self.zone)[0])
            elif kind == "reference":
                if value.url is None and value.type is None:
                    raise Unsupported(f"sorting by a reference without a type: {value}")
                keys.append(_external_sort_key(value.url) if value.url else f"{value.type}/{value.id}")
            else:
                raise Unsupported(f"sorting by a {kind} parameter")
        if not keys:
            return None
        return max(keys) if descending else min(keys)

    def _search_date(self, raw: str) -> tuple[str, tuple[datetime, datetime]]:
        prefix = raw[:2] if raw[:2] in DATE_PREFIXES else "eq"
        text = raw[2:] if raw[:2] in DATE_PREFIXES else raw
        return prefix, date_range(text, self.zone)


def _external_sort_key(url: str) -> str:
    """`Type/~URL` of a reference to another server, the URL without a version."""
    parts = url.split("/")
    if len(parts) >= 7 and parts[-2] == "_history":
        parts = parts[:-2]
    return f"{parts[-2]}/~{'/'.join(parts)}"


def _parse_reference(text: str | None, base_url: str) -> Ref | None:
    """A literal reference as a Ref; None for no reference or a contained one (`#id`)."""
    if not text or text.startswith("#"):
        return None
    if text.startswith(base_url + "/"):
        text = text[len(base_url) + 1 :]
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


def _parse_of_type(raw: str) -> tuple[str, str, str]:
    """(type system, type code, value) of an `:of-type` value; R4: "All 3 parts must be present"."""
    pieces = [unescape(p) for p in split_escaped(raw, "|")]
    if len(pieces) != 3 or not all(pieces):
        raise Unsupported(f":of-type value {raw!r}")
    return pieces[0], pieces[1], pieces[2]


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
