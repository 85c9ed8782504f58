"""The HTTP service: the FastAPI app and its middleware (`app`), the service's own routes
(`routes`), access control (`access`), the audit log (`audit`) and the clinician page with its
static files (`web`, `static/`)."""
