"""FHIR Bulk Data export (Bulk Data Access IG v2.0.0): jobs kept in the store, run in the
background, written as ndjson files that expire."""
