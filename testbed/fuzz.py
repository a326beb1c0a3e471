"""Requests a careless or hostile client might send, as hypothesis strategies: shared by the fuzz
test (tests/conformance/test_fuzz.py) and the fuzz benchmark (scripts/fuzz.py).

Each request is built from the server's own search parameter registry (names, modifiers,
chains, `_has`, result parameters) mixed with what no registry holds: unknown and malformed
names, date prefixes and zones out of range, Unicode digits and control characters, huge and
repeated values, tampered paging tokens, and bodies that are not what their Content-Type says
(JSON, XML, form, raw bytes). Whatever arrives, the answer must not be a 5xx.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import quote

import orjson
from hypothesis import strategies as st

from app.search.params import BY_RESOURCE, CONTROL
from app.search.query import MODIFIERS

TYPES = ("ImagingStudy", "Patient", "Endpoint", "AuditEvent")
#: ids the test data holds, and some it does not
IDS = ("1.2.1", "1.2.2", "1.2.3", "alice", "bob", "pacs", "9.9.9", "x" * 65, "a$b", "%00", "..", "²")


@dataclass(frozen=True)
class FuzzRequest:
    method: str
    #: path and query, percent-encoded as sent
    url: str
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes | None = None

    def describe(self) -> str:
        return f"{self.method} {self.url[:300]} headers={self.headers} body={(self.body or b'')[:200]!r}"


_odd_text = st.sampled_from(
    [
        "",
        " ",
        "²",
        "٣",
        "\n",
        "\r\n",
        "\t",
        "\x00",
        "\x7f",
        "%",
        "_",
        "\\",
        "\\,",
        "|",
        "||",
        "$",
        ",",
        ",,",
        ":",
        ".",
        "*",
        "'",
        '"',
        "<x/>",
        "Müller",
        "\U0001f600",
        "\ud7ff",
        "e\u0301",
        "a" * 5000,
    ]
)
_text = st.one_of(_odd_text, st.text(max_size=40), st.text(alphabet="0123456789-+:.TZ", max_size=30))
_date = st.builds(
    lambda prefix, year, month, day, time, zone: f"{prefix}{year}{month}{day}{time}{zone}",
    st.sampled_from(["", "eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap", "xx"]),
    st.sampled_from(["2020", "0000", "9999", "20", "²020", "99999"]),
    st.sampled_from(["", "-01", "-12", "-13", "-00"]),
    st.sampled_from(["", "-01", "-31", "-30", "-32"]),
    st.sampled_from(["", "T10:00", "T10:00:00", "T23:59:59.999999999", "T24:00", "T10"]),
    st.sampled_from(["", "Z", "+01:00", "-14:00", "+14:01", "+25:00", "-24:00", "+30:00", "+05:60", "\n"]),
)
_token = st.one_of(
    _text,
    st.builds(lambda s, c: f"{s}|{c}", _text, _text),
    st.sampled_from(["MR", "CT", "urn:dicom:uid|urn:oid:1.2.1", "available", "female", "|2", "urn:oid:9.9|A1"]),
)
_reference = st.one_of(
    st.sampled_from(["alice", "Patient/alice", "Patient/bob", "Endpoint/pacs", "http://testserver/fhir/Patient/alice"]),
    st.sampled_from(["Patient/a/b/c", "http://other/fhir/Patient/1", "Patient/", "/", "Observation/1"]),
    _text,
)
_count = st.one_of(st.integers(-5, 2000).map(str), _odd_text, st.just("99999999999999999999"))


def _value_for(kind: str) -> st.SearchStrategy[str]:
    return {"date": _date, "token": _token, "reference": _reference, "string": _text}.get(kind, _text)


def _values(kind: str) -> st.SearchStrategy[str]:
    one = _value_for(kind)
    return st.one_of(one, st.lists(one, min_size=2, max_size=5).map(",".join), st.just(",".join(["MR"] * 150)))


@st.composite
def _param(draw: st.DrawFn, rtype: str, depth: int = 0) -> tuple[str, str]:
    """One name=value of a search of `rtype`: a parameter with or without a modifier, a chain, a
    `_has`, a result parameter, or a name no registry knows."""
    params = BY_RESOURCE.get(rtype, BY_RESOURCE["ImagingStudy"])
    choice = draw(st.integers(0, 9))
    if choice <= 4:
        param = params[draw(st.sampled_from(sorted(params)))]
        modifier = draw(st.sampled_from(["", "", *sorted(MODIFIERS.get(param.type, set())), "Patient", "nope"]))
        name = f"{param.name}:{modifier}" if modifier else param.name
        value = (
            draw(st.sampled_from(["true", "false", "maybe"])) if modifier == "missing" else draw(_values(param.type))
        )
        return name, value
    if choice == 5 and depth < 6:
        refs = sorted(n for n, p in params.items() if p.type == "reference") or ["patient"]
        head = draw(st.sampled_from(refs))
        target = draw(st.sampled_from(["", ":Patient", ":Endpoint", ":Nope"]))
        inner_name, value = draw(_param("Patient" if "Endpoint" not in target else "Endpoint", depth + 1))
        return f"{head}{target}.{inner_name}", value
    if choice == 6 and depth < 6:
        source = draw(st.sampled_from(["ImagingStudy", "Patient", "Nope"]))
        ref = draw(st.sampled_from(["patient", "subject", "link", "endpoint", "nope"]))
        inner_name, value = draw(_param(source if source != "Nope" else "Patient", depth + 1))
        return f"_has:{source}:{ref}:{inner_name}", value
    if choice == 7:
        name = draw(st.sampled_from(sorted(CONTROL)))
        value = {
            "_count": _count,
            "_sort": st.sampled_from(["started", "-started,patient", "colour", "", "-", "name,-name"]),
            "_summary": st.sampled_from(["true", "false", "count", "text", "data", "maybe"]),
            "_total": st.sampled_from(["none", "estimate", "accurate", "all"]),
            "_pretty": st.sampled_from(["true", "false", "1"]),
            "_format": st.sampled_from(["json", "xml", "application/fhir+json", "text/html", ""]),
            "_include": st.sampled_from(["ImagingStudy:patient", "*", "Patient:link", "x:y:z", ""]),
            "_revinclude": st.sampled_from(["ImagingStudy:patient", "*", "ImagingStudy:endpoint", "nope"]),
            "_elements": st.sampled_from(["status", "status,subject", "colour", "", ","]),
            "_page": st.sampled_from(["", "AAAA", "x" * 3000, "%00", "eyJ9"]),
        }.get(name, _text)
        modifier = draw(st.sampled_from(["", "", "", ":iterate", ":recurse", ":x"]))
        return name + modifier, draw(value)
    if choice == 8:
        depth_ = draw(st.integers(2, 400))
        return ".".join(["link:Patient"] * depth_) + ".name", draw(_text)
    return draw(st.one_of(_text, st.sampled_from(["colour", "_id:", "_has", "_has:::", ".", "patient.", "a.b"]))), draw(
        _text
    )


def _query(items: list[tuple[str, str]]) -> str:
    return "&".join(f"{quote(name, safe=':.|$')}={quote(value, safe=':.|$,')}" for name, value in items)


_headers = st.dictionaries(
    st.sampled_from(["Prefer", "Accept", "If-None-Match", "If-Modified-Since", "Accept-Encoding", "X-Nope"]),
    st.sampled_from(
        [
            "handling=strict",
            "handling=lenient",
            "application/fhir+json",
            "application/fhir+xml",
            "*/*",
            '"1"',
            'W/"1"',
            "*",
            "W/",
            "Mon, 01 Jan 2024 00:00:00 GMT",
            "yesterday",
            "gzip",
            "",
        ]
    ),
    max_size=3,
)

_json_bodies = st.one_of(
    st.just(b"{}"),
    st.just(b"null"),
    st.just(b"[1,2"),
    st.just(b"\xff\xfe"),
    st.builds(
        lambda parameter: orjson.dumps({"resourceType": "Parameters", "parameter": parameter}),
        st.one_of(
            st.just(5),
            st.just(True),
            st.just("x"),
            st.just([5]),
            st.just([{"name": "resource", "resource": {"resourceType": "Patient", "name": "x"}}]),
            st.just([{"name": "resource", "resource": {"resourceType": "Patient", "birthDate": "²⁰²⁰"}}]),
            st.just([{"name": "count", "valueInteger": -1}]),
            st.just([{"name": "resource", "resource": {"resourceType": "Patient", "identifier": [5]}}]),
        ),
    ),
)


@st.composite
def _search(draw: st.DrawFn) -> FuzzRequest:
    rtype = draw(st.sampled_from([*TYPES, "Observation", "imagingstudy", ""]))
    items = draw(st.lists(_param(rtype if rtype in BY_RESOURCE else "ImagingStudy"), max_size=6))
    if draw(st.booleans()):
        return FuzzRequest("GET", f"/fhir/{rtype}?{_query(items)}", draw(_headers))
    content_type = draw(
        st.sampled_from(["application/x-www-form-urlencoded", "application/json", "text/plain", "multipart/form-data"])
    )
    body = draw(st.one_of(st.just(_query(items).encode()), st.binary(max_size=200), _json_bodies))
    return FuzzRequest("POST", f"/fhir/{rtype}/_search", {**draw(_headers), "Content-Type": content_type}, body)


@st.composite
def _read(draw: st.DrawFn) -> FuzzRequest:
    rtype = draw(st.sampled_from([*TYPES, "Observation"]))
    rid = quote(draw(st.one_of(st.sampled_from(IDS), _text)), safe="")
    tail = draw(st.sampled_from(["", "/_history", "/_history/1", "/_history/²", "/_history/0", "/_history/x", "/"]))
    items = draw(
        st.lists(
            st.tuples(st.sampled_from(["_summary", "_elements", "_pretty", "_format", "x"]), _text),
            max_size=2,
        )
    )
    return FuzzRequest("GET", f"/fhir/{rtype}/{rid}{tail}?{_query(items)}", draw(_headers))


@st.composite
def _other(draw: st.DrawFn) -> FuzzRequest:
    kind = draw(st.integers(0, 3))
    if kind == 0:
        return FuzzRequest(
            "POST",
            "/fhir/Patient/$match",
            {"Content-Type": draw(st.sampled_from(["application/fhir+json", "application/json", "application/xml"]))},
            draw(st.one_of(_json_bodies, st.binary(max_size=100), st.just(b"<Parameters/>"))),
        )
    if kind == 1:
        limit = quote(draw(st.one_of(_count, _text)), safe="")
        status, cursor = quote(draw(_text), safe=""), quote(draw(_text), safe="")
        return FuzzRequest("GET", f"/admin/identity/links?limit={limit}&status={status}&cursor={cursor}")
    if kind == 2:
        return FuzzRequest("GET", f"/fhir/metadata?{_query([('_format', draw(_text)), ('_pretty', draw(_text))])}")
    method = draw(st.sampled_from(["PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"]))
    return FuzzRequest(method, f"/fhir/{draw(st.sampled_from(TYPES))}/1.2.1", draw(_headers), b"{}")


def requests_strategy() -> st.SearchStrategy[FuzzRequest]:
    """Searches most of the time, reads, history, operations and other methods the rest."""
    return st.one_of(_search(), _search(), _search(), _read(), _other())
