"""A short human-readable narrative (`text`, status `generated`) for every resource stored.

EHRs that display narrative show a resource's `text.div`, and FHIR recommends one on every
resource (dom-6, R4 domainresource.html#narrative). It is made when a resource is stored, from
what the resource says (an ImagingStudy after the copies of every archive are merged), never per
request: serving stays a copy of stored bytes. Only elements the resource carries go into it,
escaped as XHTML text (R4 narrative.html: no scripts, no attributes but the namespace).
"""

from __future__ import annotations

from html import escape

XHTML = "http://www.w3.org/1999/xhtml"


def _div(lines: list[str]) -> dict:
    body = "".join(f"<p>{line}</p>" for line in lines if line)
    return {"status": "generated", "div": f'<div xmlns="{XHTML}">{body}</div>'}


def _codes(codings: list[dict]) -> str:
    return ", ".join(escape(str(c.get("code") or c.get("display") or "")) for c in codings if c)


def _study(study: dict) -> list[str]:
    when = escape(str(study.get("started", ""))[:10]) if study.get("started") else "date unknown"
    modalities = _codes(study.get("modality", []))
    title = f"<b>Imaging study</b> {when}" + (f", {modalities}" if modalities else "")
    description = escape(study["description"]) if study.get("description") else ""
    accession = next(
        (
            i.get("value")
            for i in study.get("identifier", [])
            if any(c.get("code") == "ACSN" for c in (i.get("type") or {}).get("coding", []))
        ),
        None,
    )
    counts = []
    if study.get("numberOfSeries") is not None:
        counts.append(f"{study['numberOfSeries']} series")
    if study.get("numberOfInstances") is not None:
        counts.append(f"{study['numberOfInstances']} instances")
    detail = "; ".join(([f"accession {escape(str(accession))}"] if accession else []) + counts)
    return [title, description, detail]


def _patient(patient: dict) -> list[str]:
    names = []
    for name in patient.get("name", []):
        text = name.get("text") or " ".join(
            [*name.get("given", []), *([name["family"].upper()] if name.get("family") else [])]
        )
        if text:
            names.append(escape(text))
    title = f"<b>{' / '.join(names) if names else 'Patient'}</b>"
    facts = [escape(str(patient[k])) for k in ("gender", "birthDate") if patient.get(k)]
    identifiers = [
        f"{escape(str(i.get('value', '')))} ({escape(str(i.get('system', '')))})"
        for i in patient.get("identifier", [])
        if i.get("value")
    ]
    return [title + (f", {', '.join(facts)}" if facts else ""), "; ".join(identifiers)]


def _endpoint(endpoint: dict) -> list[str]:
    kind = escape(str((endpoint.get("connectionType") or {}).get("code", "endpoint")))
    name = escape(endpoint["name"]) if endpoint.get("name") else ""
    address, status = escape(str(endpoint.get("address", ""))), escape(str(endpoint.get("status", "")))
    return [f"<b>{kind}</b> {name}".strip(), address, status]


_MAKERS = {"ImagingStudy": _study, "Patient": _patient, "Endpoint": _endpoint}


def with_narrative(resource: dict) -> dict:
    """The resource with its generated `text` (a new dict; a type without a maker is returned as it is)."""
    make = _MAKERS.get(resource.get("resourceType", ""))
    if make is None:
        return resource
    head = {k: resource[k] for k in ("resourceType", "id", "meta") if k in resource}
    rest = {k: v for k, v in resource.items() if k not in head and k != "text"}
    return {**head, "text": _div(make(resource)), **rest}
