"""FHIR and CDS Hooks: FHIR resources to scoring records and answers to RiskAssessments
(`convert`, with `rxnorm.csv`), the FHIR operation (`api`) and the CDS services (`cds_hooks`)."""
