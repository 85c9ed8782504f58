"""Experiments, validation, calibration, evaluation, reports and MLflow tracking."""
