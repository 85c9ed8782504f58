"""The scoring request: pydantic bodies derived from the cohort contract (`schemas`), records to
contract tables and loader issues back to record paths (`records`), strict JSON (`jsonin`)."""
