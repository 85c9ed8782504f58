"""The FHIR adapter's public names: FHIR R4 to the scoring records of DESIGN.md "One patient over
HTTP", and scores back to FHIR.

Each name is owned by one module of `serving.fhir`: `reader` (FHIR resources to records; its
docstring states the mapping rules), `assessment` (an answer to a RiskAssessment), `bundles`
(the resources of a Bundle or list), `codes` (code systems, RxNorm, drug names, dates) and
`shapes` (the JSON types of the elements read).
"""

from __future__ import annotations

from serving.fhir.assessment import patient_reference, risk_assessment, subject_of
from serving.fhir.bundles import is_fhir, is_index_order, resources_in
from serving.fhir.codes import METASTASIS_CODES, FhirError, drugs_in_text, rxnorm_table
from serving.fhir.reader import fhir_to_patient_records

__all__ = [
    "FhirError",
    "METASTASIS_CODES",
    "drugs_in_text",
    "fhir_to_patient_records",
    "is_fhir",
    "is_index_order",
    "patient_reference",
    "subject_of",
    "resources_in",
    "risk_assessment",
    "rxnorm_table",
]
