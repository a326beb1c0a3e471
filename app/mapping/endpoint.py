"""The archive -> FHIR R4 Endpoint (one per source; BRIEF §2).

ImagingStudy.endpoint is 1..* in the SMART Imaging Access profile, so every source has an
Endpoint, also a folder of files with no image service (ctx.wado_url None). That Endpoint
cannot honestly be active: it gets status "off" and the placeholder address
"urn:imaging-facade:source:<name>", which tells apps that no images can be fetched there,
while connectionType stays dicom-wado-rs (the kind of endpoint it would be once configured).
With the WADO-RS gateway on, `ctx.wado_url` is the gateway's address for the source and the
requires-access-token extension is true when the server needs tokens.
"""
from __future__ import annotations

from app.mapping.context import MappingContext
from app.ids import valid_id
from app.mapping.dicom_values import MappingError

#: SMART Imaging Access: whether the app presents its access token at the Endpoint's address
REQUIRES_ACCESS_TOKEN = "http://fhir.org/argonaut/smart-imaging/StructureDefinition/requires-access-token"
CONNECTION_TYPE_SYSTEM = "http://terminology.hl7.org/CodeSystem/endpoint-connection-type"
PLACEHOLDER_ADDRESS_PREFIX = "urn:imaging-facade:source:"


def map_endpoint(ctx: MappingContext) -> dict:
    """FHIR Endpoint of the source `ctx.source` (its id); no `meta`."""
    if not valid_id(ctx.source):
        raise MappingError(f"source name {ctx.source!r} is not a valid FHIR id")
    url = (ctx.wado_url or "").strip().rstrip("/")
    return {
        "resourceType": "Endpoint",
        "id": ctx.source,
        "extension": [{"url": REQUIRES_ACCESS_TOKEN, "valueBoolean": bool(ctx.requires_access_token and url)}],
        "status": "active" if url else "off",
        "connectionType": {
            "system": CONNECTION_TYPE_SYSTEM,
            "code": "dicom-wado-rs",
            "display": "DICOM WADO-RS",
        },
        "name": ctx.source,
        "payloadType": [{"text": "DICOM WADO-RS"}],
        "payloadMimeType": ["application/dicom"],
        "address": url or PLACEHOLDER_ADDRESS_PREFIX + ctx.source,
    }
