"""The archive -> FHIR R4 Endpoint (one per source).

ImagingStudy.endpoint is 1..* in the SMART Imaging Access profile, so every source has an
Endpoint, also a folder of files with no image service (ctx.wado_url None). That Endpoint
cannot honestly be active: it gets status "off" and the placeholder address
"urn:imaging-facade:source:<name>", which tells apps that no images can be fetched there,
while connectionType stays dicom-wado-rs (the kind of endpoint it would be once configured).
With the WADO-RS gateway on, `ctx.wado_url` is the gateway's address for the source and the
requires-access-token extension is true when the server needs tokens.
"""

from __future__ import annotations

from app.ids import valid_id
from app.mapping import claims
from app.mapping.context import MappingContext
from app.mapping.errors import MappingError

CONNECTION_TYPE_SYSTEM = "http://terminology.hl7.org/CodeSystem/endpoint-connection-type"
PLACEHOLDER_ADDRESS_PREFIX = "urn:imaging-facade:source:"
#: SMART Imaging Access IG: whether an app presents its access token to this endpoint
REQUIRES_ACCESS_TOKEN = "http://fhir.org/argonaut/smart-imaging/StructureDefinition/requires-access-token"


def map_endpoint(ctx: MappingContext) -> dict:
    """FHIR Endpoint of the source `ctx.source` (its id).

    The requires-access-token extension comes from the source's mapping profile
    (`endpoint.requires_access_token`): whether the archive's WADO-RS takes the app's token
    is a fact about the archive, not something the facade can see.
    """
    if not valid_id(ctx.source):
        raise MappingError(f"source name {ctx.source!r} is not a valid FHIR id")
    url = (ctx.wado_url or "").strip().rstrip("/")
    ctx.trace("Endpoint.id", (), None, "the source's name")
    ctx.trace("Endpoint.meta.profile", (), None, "the profile every Endpoint claims (fhir_profiles/structure)")
    ctx.trace("Endpoint.extension[0]", (), ctx.rules.rule("endpoint", "requires_access_token"))
    ctx.trace("Endpoint.status", (), None, "active with a WADO-RS URL, off without")
    ctx.trace("Endpoint.address", (), None, "the source's wado_url (or url)" if url else "no WADO-RS URL: placeholder")
    ctx.trace("Endpoint", (), None, "one Endpoint per source")
    return {
        "resourceType": "Endpoint",
        "id": ctx.source,
        "meta": claims.meta("Endpoint"),
        # the facade's gateway on a server that needs tokens, or a profile saying the archive
        # itself takes the SMART token
        "extension": [
            {
                "url": REQUIRES_ACCESS_TOKEN,
                "valueBoolean": bool(url and (ctx.requires_access_token or ctx.rules.requires_access_token)),
            }
        ],
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
