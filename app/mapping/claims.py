"""The FHIR profiles (StructureDefinitions in fhir_profiles/structure/) that mapped resources
claim in `meta.profile`, and the canonical URL base this product defines them under.

The CapabilityStatement names the same URLs as `supportedProfile`; a test checks every
emitted resource against the differential of the StructureDefinition files.
"""

from __future__ import annotations

#: canonical base of the profiles and extensions imaging-facade defines (one place: the
#: StructureDefinition files use it too, which a test checks)
CANONICAL = "http://imaging-facade.org/fhir"
STRUCTURE_DEFINITION = CANONICAL + "/StructureDefinition/"

PROFILES = {
    "ImagingStudy": STRUCTURE_DEFINITION + "imaging-facade-imagingstudy",
    "Endpoint": STRUCTURE_DEFINITION + "imaging-facade-endpoint",
    "Patient": STRUCTURE_DEFINITION + "imaging-facade-patient",
}


def meta(resource_type: str) -> dict:
    """`meta` of a freshly mapped resource: the profile it claims (a fresh dict each time)."""
    return {"profile": [PROFILES[resource_type]]}
