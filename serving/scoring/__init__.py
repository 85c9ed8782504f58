"""Scoring records and cohorts with a loaded bundle: the Python API behind the CLI and the HTTP
service (`scorer`) and scoring on Spark (`spark`)."""
