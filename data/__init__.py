"""Cohort contract: loading, validation, units, drug classes, response labels and the simulator."""
