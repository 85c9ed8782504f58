"""The model bundle: what training logs and serving loads (`model`: `DeployableModel`;
`calibrator`, `reference`, `store` (the saved form), `uri` (loading from MLflow URIs or paths),
`pyfunc` (the MLflow pyfunc wrapper))."""
