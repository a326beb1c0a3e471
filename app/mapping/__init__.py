"""DICOM JSON -> FHIR R4 resources (ImagingStudy, Patient, Endpoint). Pure functions.

    mapped = map_study(record, ctx)   # MappedStudy(imaging_study, patient, repairs)
    endpoint = map_endpoint(ctx)

MappingError(reason) is raised only for a study that cannot be represented at all. What a
source's archive needs read differently (issuers, vendor terms, private attributes…) comes
from the mapping profile the context carries (profile.py, fhir_profiles/mapping/).
"""
from app.mapping.errors import MappingError
from app.mapping.endpoint import map_endpoint
from app.mapping.imaging_study import MappedStudy, map_study

__all__ = ["MappedStudy", "MappingError", "map_endpoint", "map_study"]
