"""The JSON types of the FHIR elements the adapter reads: `shape_problem(resource)`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

# Only the elements the adapter reads are declared (strict types, other elements allowed): a
# resource whose read elements have the wrong JSON type is skipped with a warning naming the
# element, instead of failing deep inside the mapping.


class _Shape(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)


class _Coding(_Shape):
    system: str | None = None
    code: str | None = None
    display: str | None = None


class _Concept(_Shape):
    coding: list[_Coding] | None = None
    text: str | None = None


class _Reference(_Shape):
    reference: str | None = None


class _Quantity(_Shape):
    value: float | None = None
    comparator: str | None = None
    unit: str | None = None
    system: str | None = None
    code: str | None = None


class _Period(_Shape):
    start: str | None = None
    end: str | None = None


class _Extension(_Shape):
    url: str | None = None
    extension: list[_Extension] | None = None
    valueString: str | None = None
    valueCoding: _Coding | None = None


class _Identifier(_Shape):
    value: str | None = None


class _Resource(_Shape):
    resourceType: str
    id: str | None = None
    status: str | None = None
    subject: _Reference | None = None
    patient: _Reference | None = None


class _Patient(_Resource):
    identifier: list[_Identifier] | None = None
    birthDate: str | None = None
    gender: str | None = None
    extension: list[_Extension] | None = None


class _Observation(_Resource):
    category: list[_Concept] | None = None
    code: _Concept | None = None
    effectiveDateTime: str | None = None
    effectivePeriod: _Period | None = None
    effectiveInstant: str | None = None
    issued: str | None = None
    valueQuantity: _Quantity | None = None
    valueInteger: int | None = None
    valueCodeableConcept: _Concept | None = None


class _DoseAndRate(_Shape):
    doseQuantity: _Quantity | None = None


class _Repeat(_Shape):
    boundsPeriod: _Period | None = None


class _Timing(_Shape):
    repeat: _Repeat | None = None


class _Dosage(_Shape):
    doseAndRate: list[_DoseAndRate] | None = None
    timing: _Timing | None = None


class _Ingredient(_Shape):
    itemCodeableConcept: _Concept | None = None


class _Medication(_Resource):
    code: _Concept | None = None
    ingredient: list[_Ingredient] | None = None


class _MedicationUse(_Resource):
    medicationCodeableConcept: _Concept | None = None
    medicationReference: _Reference | None = None
    contained: list[dict[str, Any]] | None = None
    authoredOn: str | None = None
    dosageInstruction: list[_Dosage] | None = None
    effectiveDateTime: str | None = None
    effectivePeriod: _Period | None = None
    dateAsserted: str | None = None


class _Condition(_Resource):
    verificationStatus: _Concept | None = None
    code: _Concept | None = None
    onsetDateTime: str | None = None
    onsetPeriod: _Period | None = None
    recordedDate: str | None = None


_SHAPES: dict[str, type[_Resource]] = {
    "Patient": _Patient,
    "Observation": _Observation,
    "Condition": _Condition,
    "Medication": _Medication,
    "MedicationRequest": _MedicationUse,
    "MedicationStatement": _MedicationUse,
    "MedicationAdministration": _MedicationUse,
}


def shape_problem(resource: Mapping[str, Any]) -> str | None:
    """None when the elements the adapter reads have the right JSON types, else the first fault."""
    shape = _SHAPES.get(str(resource.get("resourceType")))
    if shape is None:
        return None
    try:
        shape.model_validate(resource)
    except ValidationError as exc:
        error = exc.errors(include_url=False)[0]
        where = ".".join(str(part) for part in error["loc"])
        return f"{where}: {error['msg']}"
    return None
