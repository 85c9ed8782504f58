"""The deployable model and the scoring module: Python API, HTTP service, FHIR and CDS Hooks."""
