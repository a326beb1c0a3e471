"""JSON or XML: which of FHIR's formats an answer is written in, and XML request bodies.

FHIR R4 http.html#mime-type: `_format` wins over `Accept`; `application/fhir+json` and
`application/fhir+xml` (and the short forms `json`, `xml`, `application/json`,
`application/xml`, `text/xml`) name the two formats; a `fhirVersion` MIME parameter names the
FHIR version (http.html#version-parameter): this server speaks 4.0 only. A request for neither
format or another version gets 406.

JSON is the format the server stores and serves without parsing it. An XML answer is made from
that JSON, once the route has answered, through the fhir.resources models, so that each XML
answer is checked against FHIR's structure on the way out. An XML request body (a Parameters
for `Patient/$match`) is turned into JSON before the route reads it, parsed without DTDs,
entities or network access.
"""

from __future__ import annotations

import io
import logging
import re
from typing import Any

import orjson
from fhir.resources.R4B import get_fhir_model_class
from flask import Flask, Response, g, request
from lxml import etree

from app.fhir.errors import FhirError
from app.logsafe import describe

log = logging.getLogger(__name__)

JSON_TYPES = frozenset({"json", "application/json", "application/fhir+json"})
XML_TYPES = frozenset({"xml", "application/xml", "application/fhir+xml", "text/xml"})
#: Bulk Data output files (Bulk Data Access IG v2.0.0): JSON lines; an error about them is JSON
NDJSON_TYPES = frozenset({"application/fhir+ndjson", "application/ndjson", "ndjson"})
FHIR_XML = "application/fhir+xml; charset=utf-8"
#: the FHIR versions this server answers in (http.html#version-parameter)
VERSIONS = frozenset({"4.0", "4.0.1"})
BODY_ERROR = "imaging_facade.xml_body_error"
_SAFE = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False)


def _media(value: str) -> tuple[str, dict[str, str], float]:
    """One media range: its type (an unencoded `+` arrives as a space), parameters and q."""
    head, *params = value.split(";")
    found = {}
    for param in params:
        key, _, val = param.partition("=")
        found[key.strip().lower()] = val.strip().strip('"')
    try:
        q = float(found.pop("q", "1"))
    except ValueError:
        q = 0.0
    return head.strip().lower().replace(" ", "+"), found, q


def _format_of(media: str, params: dict[str, str]) -> str | None:
    if params.get("fhirversion", "4.0") not in VERSIONS:
        return None
    if media in JSON_TYPES:
        return "json"
    if media in XML_TYPES:
        return "xml"
    return None


def negotiate() -> str:
    """ "json" or "xml" for this request, or 406 (FhirError) naming what was asked for."""
    fmt = request.args.get("_format")
    if fmt is not None:
        media, params, _ = _media(fmt)
        chosen = _format_of(media, params)
        if chosen is None:
            raise FhirError(
                406, "not-supported", f"parameter '_format': {fmt!r} is not served; use json or xml (FHIR 4.0)"
            )
        return chosen
    accept = request.headers.get("Accept", "").strip()
    if not accept:
        return "json"
    best, best_q = None, 0.0
    for item in accept.split(","):
        if not item.strip():
            continue
        media, params, q = _media(item)
        chosen = _format_of(media, params)
        if chosen is None and media in ("*/*", "application/*") and params.get("fhirversion", "4.0") in VERSIONS:
            chosen = "json"
        if chosen is None and media in NDJSON_TYPES:
            chosen = "json"
        if chosen is not None and q > best_q:
            best, best_q = chosen, q
    if best is None:
        raise FhirError(
            406,
            "not-supported",
            f"Accept: {accept[:200]!r} is not served; this server answers application/fhir+json or "
            "application/fhir+xml, FHIR version 4.0",
        )
    return best


#: characters XML 1.0 cannot carry (https://www.w3.org/TR/xml/#charsets), which JSON can: a
#: diagnostics text may quote what a client sent
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def _xml_safe(node: Any) -> Any:
    if isinstance(node, str):
        return _NOT_XML.sub("\ufffd", node)
    if isinstance(node, dict):
        return {key: _xml_safe(value) for key, value in node.items()}
    if isinstance(node, list):
        return [_xml_safe(item) for item in node]
    return node


def to_xml(body: bytes) -> bytes:
    """The FHIR XML of a JSON resource (a Bundle with everything in it, an OperationOutcome…);
    a character XML cannot carry becomes U+FFFD."""
    resource = _xml_safe(orjson.loads(body))
    model = get_fhir_model_class(resource["resourceType"]).model_validate(resource)
    xml: bytes | str = model.model_dump_xml()
    return xml if isinstance(xml, bytes) else xml.encode()


def to_json(body: bytes) -> bytes:
    """The JSON of a FHIR XML resource; ValueError saying what is wrong with it."""
    if b"<!doctype" in body[:4096].lower() or b"<!entity" in body.lower():
        raise ValueError("a FHIR XML body has no DTD (http.html#xml)")
    try:
        root = etree.fromstring(body, _SAFE)
    except etree.XMLSyntaxError as exc:
        raise ValueError(f"the body is not well-formed XML: {exc.msg}") from None
    if etree.QName(root).namespace != "http://hl7.org/fhir":
        raise ValueError("the body's root element is not in the FHIR namespace http://hl7.org/fhir")
    try:
        model_class = get_fhir_model_class(etree.QName(root).localname)
    except (KeyError, ValueError):
        raise ValueError(f"{etree.QName(root).localname} is not a FHIR resource") from None
    try:
        return model_class.model_validate_xml(body).model_dump_json().encode()
    except Exception as exc:  # noqa: BLE001 - pydantic and lxml errors alike say the body is not a valid resource
        raise ValueError(f"the body is not a valid {etree.QName(root).localname}: {type(exc).__name__}") from None


class XmlBodies:
    """WSGI middleware: a FHIR XML body becomes the same resource in JSON before the app reads
    it, so every route takes either. A body that cannot be read is left for the app to refuse
    (400, naming the problem); an oversized one for the request limits (413)."""

    def __init__(self, wsgi_app: Any, max_bytes: int):
        self.wsgi_app = wsgi_app
        self.max_bytes = max_bytes

    def __call__(self, environ: dict, start_response: Any) -> Any:
        media = environ.get("CONTENT_TYPE", "").split(";")[0].strip().lower()
        if media in XML_TYPES and environ.get("PATH_INFO", "").startswith("/fhir"):
            try:
                length = int(environ.get("CONTENT_LENGTH") or 0)
            except ValueError:
                length = -1
            if 0 <= length <= self.max_bytes:
                body = environ["wsgi.input"].read(length)
                try:
                    converted = to_json(body)
                except ValueError as exc:
                    environ[BODY_ERROR] = str(exc)
                    converted = b""
                environ["wsgi.input"] = io.BytesIO(converted)
                environ["CONTENT_LENGTH"] = str(len(converted))
                environ["CONTENT_TYPE"] = "application/fhir+json"
        return self.wsgi_app(environ, start_response)


def init_choice(app: Flask, max_body_bytes: int) -> None:
    """Choose the format before anything may refuse the request (a 401 is answered in XML to
    a client that asked for XML): call it first in create_app."""
    app.wsgi_app = XmlBodies(app.wsgi_app, max_body_bytes)  # type: ignore[method-assign]

    @app.before_request
    def _choose() -> None:
        if not request.path.startswith("/fhir"):
            return
        g.fhir_format = "json"  # the refusal below is answered in JSON
        g.fhir_format = negotiate()
        problem = request.environ.get(BODY_ERROR)
        if problem:
            raise FhirError(400, "invalid", problem)


def init_render(app: Flask) -> None:
    """Write the answer in XML after every other after-request hook has seen it but before it is
    compressed (Flask runs them last registered first): call it after compression is set up."""

    @app.after_request
    def _render(response: Response) -> Response:
        if g.get("fhir_format") != "xml" or response.mimetype not in ("application/fhir+json", "application/json"):
            return response
        if response.direct_passthrough or not response.status_code or response.status_code in (204, 304):
            return response
        body = response.get_data()
        if not body:
            return response
        try:
            response.set_data(to_xml(body))
        except Exception as exc:  # noqa: BLE001 - a failure here is ours: the answer is refused in XML, not lost
            log.error("an answer could not be written as XML: %s", describe(exc))
            response.status_code = 500
            response.set_data(to_xml(orjson.dumps(_outcome("this answer cannot be written as XML; ask for JSON"))))
        response.content_type = FHIR_XML
        return response


def _outcome(diagnostics: str) -> dict:
    return {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": "exception", "diagnostics": diagnostics}],
    }
