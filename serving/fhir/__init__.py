"""FHIR and CDS Hooks: FHIR resources to scoring records (`reader`, over `bundles`, `shapes` and
`codes`, with `rxnorm.csv`) and answers to RiskAssessments (`assessment`), their public names
gathered in `convert`; the FHIR operation (`api`) and the CDS services (`cds_hooks`)."""
