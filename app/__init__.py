"""FHIR R4 ImagingStudy facade over DICOM archives.

Data flows one way: sources -> mapping -> identity -> store -> fhir (HTTP API).
"""
