"""Administration API (JSON, not FHIR): one blueprint per concern, mounted under /admin."""
