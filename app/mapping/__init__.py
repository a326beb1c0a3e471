"""DICOM JSON -> FHIR R4 resources (ImagingStudy, Patient, Endpoint). Pure functions.

    mapped = map_study(record, ctx)   # MappedStudy(imaging_study, patient, repairs)
    endpoint = map_endpoint(ctx)

MappingError(reason) is raised only for a study that cannot be represented at all. What a
source's archive needs read differently (issuers, vendor terms, private attributes…) comes
from the mapping profile the context carries (profile.py, fhir_profiles/mapping/).

Where things are, from the resources down to the values:

    imaging_study.py  the ImagingStudy, step by step    patient.py   the Patient
    series.py         ImagingStudy.series               endpoint.py  the source's Endpoint
    instances.py      ImagingStudy.series.instance      notes.py     repair notes as Annotations
    request.py        accession number and reasons      private.py   private attributes
    terms.py          terms read through the profile    codings.py   Codings and issuer systems
    shape.py          the DICOM JSON check of a header  vr.py        values read as their VR says
    values.py         text made valid FHIR              datetimes.py FHIR date and dateTime
    tags.py           every tag the mapping reads       codes.py     code tables
"""

from app.mapping.endpoint import map_endpoint
from app.mapping.errors import MappingError
from app.mapping.imaging_study import MappedStudy, map_study

__all__ = ["MappedStudy", "MappingError", "map_endpoint", "map_study"]
