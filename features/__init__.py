"""Feature pipelines as of the index date (the first hetrombopag dose)."""
