"""FHIR search as data: the parameter registry, date ranges and the query parser.

Shared by the store (indexing, SQL) and the HTTP API, and free of both.
"""
