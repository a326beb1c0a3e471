"""The FHIR REST API: search parameter registry, query parsing, bundles, routes."""
