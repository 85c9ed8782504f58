"""FHIR R4 to the scoring records of DESIGN.md "One patient over HTTP", and scores back to FHIR.

Input: a Bundle (`collection`, `searchset`, `transaction`, `batch` or `document`; nested Bundles are
read too) or a list of loose resources. Resources read:

- Patient: `birthDate`, `gender` (female -> F, male -> M), the US Core race extension.
- Observation (laboratory): the LOINC coding, `valueQuantity` with its UCUM `code` (the unit code
  wins over the display text `unit`), `effectiveDateTime` (or `effectivePeriod.start`, else
  `issued`). Timezone offsets are dropped: the wall-clock time as recorded is kept, the cohort
  contract's "no timezone means local". ECOG performance status (LOINC 89247-1) fills `ecog`.
- MedicationRequest, MedicationStatement, MedicationAdministration: RxNorm ingredient codes of
  `serving/fhir/rxnorm.csv`, else the drug names of `data/drug_classes.csv` found in the text. The
  RxCUIs there are ingredient (IN) codes entered from knowledge of RxNorm, not checked against
  RxNav (not reachable from here); a drug whose code was not certain has none and is matched by
  text only (its `note` says so). When a code and the text disagree, the code wins, with a
  warning. Non-anticancer drugs (supportive care, bone-modifying agents) are reported and left
  out of the regimens.
- Condition: metastatic sites (`METASTASIS_CODES`).

Regimen rule (one rule for every source): each medication resource of an anticancer drug gives
(drug, start day, end day). A MedicationRequest is dropped when an administration or statement of
the same drug starts on its start day or within `ORDER_MATCH_DAYS` after it (the order is then
represented by what was given). The rest are grouped by calendar start day: one regimen row per
patient and start day, holding every drug started that day; its end date is the latest end when
every drug of the row has one. Line and cycle are not inferred.

The episode's index date: the explicit `index_date` argument, else the `authoredOn` of a draft or
active hetrombopag MedicationRequest (the latest), else today with a warning.

Unknown codes, units and drugs are warnings naming the resource, never crashes; input that is not
FHIR at all raises `FhirError`.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import math
import re
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from functools import lru_cache
from importlib import resources
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from data.drugs import drug_aliases, normalise_drug
from data.units import accepted_units, canonical_test, unit_factor

logger = logging.getLogger(__name__)

LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
SNOMED = "http://snomed.info/sct"
ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
ICD10 = "http://hl7.org/fhir/sid/icd-10"
US_CORE_RACE = "http://hl7.org/fhir/us/core/StructureDefinition/us-core-race"
RISK_PROBABILITY = "http://terminology.hl7.org/CodeSystem/risk-probability"
ECOG_LOINC = "89247-1"
INDEX_DRUG = "hetrombopag"
ORDER_MATCH_DAYS = 7

#: Coded metastatic sites: (system, code) -> patient column. SNOMED CT: 94222008 secondary malignant
#: neoplasm of bone, 94381002 of liver, 94217008 of bone marrow. ICD-10-CM: C79.51 bone, C79.52
#: bone marrow, C78.7 liver. WHO ICD-10 C79.5 (bone and bone marrow) only sets `bone_mets`: it
#: does not say whether the marrow is involved.
METASTASIS_CODES: Mapping[tuple[str, str], str] = {
    (SNOMED, "94222008"): "bone_mets",
    (SNOMED, "94381002"): "liver_mets",
    (SNOMED, "94217008"): "marrow_involvement",
    (ICD10CM, "C79.51"): "bone_mets",
    (ICD10CM, "C79.52"): "marrow_involvement",
    (ICD10CM, "C78.7"): "liver_mets",
    (ICD10, "C79.5"): "bone_mets",
    (ICD10, "C78.7"): "liver_mets",
}
METASTASIS_COLUMNS = ("bone_mets", "liver_mets", "marrow_involvement")

BUNDLE_TYPES = frozenset({"collection", "searchset", "transaction", "batch", "document"})
_SKIPPED_STATUS = {
    "Observation": {"entered-in-error", "cancelled", "registered"},
    "MedicationRequest": {"entered-in-error", "cancelled", "draft"},
    "MedicationStatement": {"entered-in-error", "not-taken", "intended"},
    "MedicationAdministration": {"entered-in-error", "not-done"},
}
_MEDICATION_TYPES = ("MedicationRequest", "MedicationStatement", "MedicationAdministration")
_GIVEN_TYPES = ("MedicationStatement", "MedicationAdministration")
_PATIENT_REF = re.compile(r"(?:^|/)Patient/([A-Za-z0-9\-.]{1,64})(?:/_history/[^/]+)?$")
_DASHES = re.compile(r"[\u2010-\u2015\u2212]")


class FhirError(ValueError):
    """The input is not FHIR R4 this adapter can read; the message names where and what."""


# --------------------------------------------------------------------------- codes and drugs


@dataclass(frozen=True)
class RxNormEntry:
    """One row of `serving/fhir/rxnorm.csv`: a generic drug, its RxNorm ingredient code (or None
    when mapped by text only) and its role (`anticancer`, `supportive` or `index`)."""

    drug: str
    rxcui: str | None
    role: str
    note: str


@lru_cache(maxsize=1)
def rxnorm_table() -> tuple[RxNormEntry, ...]:
    """The shipped RxNorm ingredient table, read once."""
    text = resources.files("serving.fhir").joinpath("rxnorm.csv").read_text(encoding="utf-8")
    return tuple(
        RxNormEntry(row["drug"], row["rxcui"] or None, row["role"], row["note"])
        for row in csv.DictReader(text.splitlines())
    )


@lru_cache(maxsize=1)
def _rxcui_index() -> dict[str, str]:
    return {e.rxcui: e.drug for e in rxnorm_table() if e.rxcui}


@lru_cache(maxsize=1)
def _roles() -> dict[str, str]:
    return {e.drug: e.role for e in rxnorm_table()}


@lru_cache(maxsize=1)
def _drug_pattern() -> re.Pattern[str]:
    names = set(drug_aliases()) | {INDEX_DRUG, "hetrombopag olamine"}
    alternation = "|".join(re.escape(n) for n in sorted(names, key=len, reverse=True))
    return re.compile(rf"(?<![a-z0-9])(?:{alternation})(?![a-z0-9])")


def _generic(name: str) -> str:
    return INDEX_DRUG if name.startswith(INDEX_DRUG) else normalise_drug(name)


def drugs_in_text(text: str) -> list[str]:
    """Generic names of the known drugs (and hetrombopag) named in a free text, in order."""
    key = " ".join(_DASHES.sub("-", text).lower().split())
    found: list[str] = []
    for match in _drug_pattern().finditer(key):
        generic = _generic(match.group(0))
        if generic not in found:
            found.append(generic)
    return found


def _concept_text(concept: Mapping[str, Any]) -> str:
    parts = [concept.get("text") or ""]
    parts += [c.get("display") or "" for c in concept.get("coding") or [] if isinstance(c, dict)]
    return "; ".join(dict.fromkeys(p for p in parts if p))


# --------------------------------------------------------------------------- small parsers


def _parse_when(value: Any) -> datetime | None:
    """A FHIR date or dateTime as a naive local datetime (offset dropped); partial dates -> None."""
    if not isinstance(value, str) or len(value) < 10:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed.replace(tzinfo=None)


def _iso(when: datetime) -> str:
    if when.time() == datetime.min.time():
        return when.date().isoformat()
    return when.isoformat(timespec="seconds")


def _as_date(value: date | datetime | str) -> date:
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    parsed = _parse_when(value)
    if parsed is None:
        raise FhirError(f"index_date: {value!r} is not an ISO 8601 date")
    return parsed.date()


def _ref(resource: Mapping[str, Any], full_url: str | None) -> str:
    rid = resource.get("id")
    if isinstance(rid, str) and rid:
        return f"{resource['resourceType']}/{rid}"
    return full_url or f"{resource['resourceType']}/(no id)"


# --------------------------------------------------------------------------- shapes read
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


def _shape_problem(resource: Mapping[str, Any]) -> str | None:
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


# --------------------------------------------------------------------------- collecting resources


@dataclass
class _Item:
    resource: dict[str, Any]
    ref: str
    full_url: str | None


def is_fhir(obj: Any) -> bool:
    """Whether `obj` looks like FHIR JSON: a resource (has `resourceType`) or a list of them."""
    if isinstance(obj, dict):
        return isinstance(obj.get("resourceType"), str)
    if isinstance(obj, list) and obj:
        return all(isinstance(r, dict) and isinstance(r.get("resourceType"), str) for r in obj)
    return False


def _walk(obj: Any, where: str) -> Iterator[_Item]:
    if not isinstance(obj, dict) or not isinstance(obj.get("resourceType"), str):
        raise FhirError(f"{where}: not a FHIR resource (no resourceType)")
    if obj["resourceType"] != "Bundle":
        yield _Item(obj, _ref(obj, None), None)
        return
    kind = obj.get("type")
    if not isinstance(kind, str) or kind not in BUNDLE_TYPES:
        raise FhirError(
            f"{where}: Bundle.type {kind!r} is not supported; expected one of "
            + ", ".join(sorted(BUNDLE_TYPES))
        )
    entries = obj.get("entry") or []
    if not isinstance(entries, list):
        raise FhirError(f"{where}.entry: must be a list")
    for i, entry in enumerate(entries):
        at = f"{where}.entry[{i}]"
        if not isinstance(entry, dict):
            raise FhirError(f"{at}: must be an object")
        resource = entry.get("resource")
        if resource is None:
            continue  # a transaction entry may carry only a request (e.g. DELETE)
        search = entry.get("search")
        if isinstance(search, dict) and search.get("mode") == "outcome":
            continue
        if isinstance(resource, dict) and resource.get("resourceType") == "Bundle":
            yield from _walk(resource, f"{at}.resource")
            continue
        if not isinstance(resource, dict) or not isinstance(resource.get("resourceType"), str):
            raise FhirError(f"{at}.resource: not a FHIR resource (no resourceType)")
        full_url = entry.get("fullUrl") if isinstance(entry.get("fullUrl"), str) else None
        yield _Item(resource, _ref(resource, full_url), full_url)


def _collect(obj: Any) -> list[_Item]:
    if isinstance(obj, list):
        items = [item for i, r in enumerate(obj) for item in _walk(r, f"[{i}]")]
    elif isinstance(obj, dict):
        items = list(_walk(obj, obj.get("resourceType", "input")))
    else:
        raise FhirError("input: expected a FHIR resource, a Bundle or a list of resources")
    seen: set[str] = set()
    unique = []
    for item in items:
        if item.ref in seen and not item.ref.endswith("(no id)"):
            continue  # the same resource twice (prefetch and fetch, or nested bundles)
        seen.add(item.ref)
        unique.append(item)
    return unique


def resources_in(obj: Any) -> list[dict[str, Any]]:
    """Every resource of a Bundle (nested Bundles included) or list, each once.

    Raises:
        FhirError: the input is not FHIR.
    """
    return [item.resource for item in _collect(obj)]


def is_index_order(
    resource: Mapping[str, Any], statuses: Iterable[str] = ("draft", "active")
) -> bool:
    """Whether a resource is a hetrombopag MedicationRequest with one of `statuses`."""
    if resource.get("resourceType") != "MedicationRequest" or resource.get("status") not in set(
        statuses
    ):
        return False
    if _shape_problem(resource) is not None:
        return False
    concepts = [resource.get("medicationCodeableConcept") or {}]
    concepts += [
        c.get("code") or {}
        for c in resource.get("contained") or []
        if c.get("resourceType") == "Medication" and _shape_problem(c) is None
    ]
    return any(INDEX_DRUG in drugs_in_text(_concept_text(c)) for c in concepts)


# --------------------------------------------------------------------------- per-patient state


@dataclass
class _Patient:
    patient_id: str
    static: dict[str, Any] = field(default_factory=dict)
    labs: list[tuple[datetime, dict[str, Any]]] = field(default_factory=list)
    ecog: list[tuple[datetime, int]] = field(default_factory=list)
    meds: list[tuple[str, str, date, date | None, str]] = field(default_factory=list)
    index_orders: list[tuple[str, datetime | None, float | None, str]] = field(default_factory=list)
    metastases: list[tuple[str, datetime | None, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


class _Converter:
    def __init__(self, items: list[_Item]) -> None:
        self.items = items
        self.patients: dict[str, _Patient] = {}
        self.keys: dict[str, str] = {}
        self.warnings: list[str] = []
        self.by_ref = {item.ref: item.resource for item in items}
        self.by_ref.update({item.full_url: item.resource for item in items if item.full_url})
        self.unknown_tests: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        self.other_drugs: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))

    # -- patients

    def add_patient(self, item: _Item) -> None:
        resource = item.resource
        pid = resource.get("id")
        if not isinstance(pid, str) or not pid:
            identifiers = [i.get("value") for i in resource.get("identifier") or []]
            pid = next((v for v in identifiers if isinstance(v, str) and v), None)
        if pid is None and item.full_url:
            pid = item.full_url.rsplit(":", 1)[-1].rsplit("/", 1)[-1]
        if not pid:
            self.warnings.append(f"{item.ref}: Patient has no id, identifier or fullUrl; skipped")
            return
        patient = self.patients.setdefault(pid, _Patient(pid))
        for key in (f"Patient/{pid}", item.full_url, item.ref):
            if key:
                self.keys[key] = pid
        static = patient.static
        birth = resource.get("birthDate")
        if isinstance(birth, str):
            if len(birth) == 10 and _parse_when(birth):
                static["birth_date"] = birth
            else:
                patient.warnings.append(
                    f"{item.ref}: birthDate {birth!r} is not a full date; age left unknown"
                )
        gender = resource.get("gender")
        if gender in ("female", "male"):
            static["sex"] = "F" if gender == "female" else "M"
        elif gender is not None:
            patient.warnings.append(
                f"{item.ref}: gender {gender!r} is not female/male; sex unknown"
            )
        race = _race(resource)
        if race:
            static["race"] = race

    def patient_of(self, item: _Item) -> _Patient | None:
        resource = item.resource
        subject = resource.get("subject") or resource.get("patient") or {}
        reference = subject.get("reference") if isinstance(subject, dict) else None
        if not isinstance(reference, str):
            if len(self.patients) == 1:
                return next(iter(self.patients.values()))
            self.warnings.append(f"{item.ref}: no subject reference; skipped")
            return None
        pid = self.keys.get(reference)
        if pid is None:
            match = _PATIENT_REF.search(reference)
            if match is None:
                self.warnings.append(
                    f"{item.ref}: subject {reference!r} is not a Patient reference; skipped"
                )
                return None
            pid = self.keys.get(f"Patient/{match.group(1)}")
            if pid is None:
                pid = match.group(1)
                self.patients[pid] = _Patient(pid)
                self.keys[f"Patient/{pid}"] = pid
                self.patients[pid].warnings.append(
                    f"Patient/{pid}: no Patient resource in the input; sex, birth date and race "
                    "unknown"
                )
        return self.patients[pid]

    # -- observations

    def add_observation(self, item: _Item, patient: _Patient) -> None:
        resource = item.resource
        if resource.get("status") in _SKIPPED_STATUS["Observation"]:
            return
        categories = {
            c.get("code")
            for cat in resource.get("category") or []
            for c in (cat.get("coding") or [])
            if isinstance(c, dict)
        }
        loinc = [
            c.get("code")
            for c in (resource.get("code") or {}).get("coding") or []
            if isinstance(c, dict) and c.get("system") == LOINC and c.get("code")
        ]
        if ECOG_LOINC in loinc:
            self._add_ecog(item, patient)
            return
        if categories and "laboratory" not in categories:
            return  # vital signs, social history, surveys: not model input
        if not loinc:
            label = _concept_text(resource.get("code") or {}) or "no code"
            patient.warnings.append(f"{item.ref}: no LOINC code ({label}); observation skipped")
            return
        known = [code for code in loinc if canonical_test(code)]
        code = known[0] if known else loinc[0]
        when = self._observation_time(item, patient)
        if when is None:
            return
        quantity = resource.get("valueQuantity")
        if not isinstance(quantity, dict) or not isinstance(quantity.get("value"), int | float):
            if known:
                patient.warnings.append(
                    f"{item.ref}: LOINC {code} has no numeric valueQuantity; observation skipped"
                )
            return
        value = float(quantity["value"])
        if not math.isfinite(value):
            patient.warnings.append(f"{item.ref}: value {value} is not finite; skipped")
            return
        unit = quantity.get("code") if quantity.get("system", UCUM) == UCUM else None
        unit = unit or quantity.get("unit")
        analyte = canonical_test(code)
        if analyte is None and not unit:
            patient.warnings.append(
                f"{item.ref}: LOINC {code} (not a model analyte) has no unit; observation skipped"
            )
            return
        if analyte is None:
            self.unknown_tests[code][_concept_text(resource.get("code") or {})[:60]] += 1
        elif not isinstance(unit, str) or unit_factor(analyte, unit) is None:
            patient.warnings.append(
                f"{item.ref}: unit {unit!r} is not accepted for {analyte} (LOINC {code}; "
                f"accepted: {', '.join(accepted_units(analyte))}); observation skipped"
            )
            return
        comparator = quantity.get("comparator")
        if comparator:
            patient.warnings.append(
                f"{item.ref}: {analyte or code} reported as '{comparator}{quantity['value']}'; "
                f"the value {quantity['value']} is used"
            )
        row = {"time": _iso(when), "test": code, "value": value, "unit": unit, "source": item.ref}
        patient.labs.append((when, row))

    def _observation_time(self, item: _Item, patient: _Patient) -> datetime | None:
        resource = item.resource
        raw = (
            resource.get("effectiveDateTime")
            or (resource.get("effectivePeriod") or {}).get("start")
            or resource.get("effectiveInstant")
            or resource.get("issued")
        )
        when = _parse_when(raw)
        if when is None:
            patient.warnings.append(
                f"{item.ref}: no usable effective time ({raw!r}); observation skipped"
            )
        return when

    def _add_ecog(self, item: _Item, patient: _Patient) -> None:
        resource = item.resource
        when = self._observation_time(item, patient)
        value: Any = resource.get("valueInteger")
        if value is None:
            value = (resource.get("valueQuantity") or {}).get("value")
        if value is None:
            text = (resource.get("valueCodeableConcept") or {}).get("text") or ""
            digits = re.findall(r"\b[0-4]\b", text)
            value = int(digits[0]) if len(digits) == 1 else None
        if when is None or not isinstance(value, int | float) or value not in range(5):
            patient.warnings.append(f"{item.ref}: ECOG value not readable as 0-4; skipped")
            return
        patient.ecog.append((when, int(value)))

    # -- medications

    def _medication_concepts(self, item: _Item) -> list[dict[str, Any]]:
        resource = item.resource
        concept = resource.get("medicationCodeableConcept")
        if isinstance(concept, dict):
            return [concept]
        reference = (resource.get("medicationReference") or {}).get("reference")
        medication = None
        if isinstance(reference, str) and reference.startswith("#"):
            medication = next(
                (c for c in resource.get("contained") or [] if c.get("id") == reference[1:]),
                None,
            )
        elif isinstance(reference, str):
            medication = self.by_ref.get(reference)
        if not isinstance(medication, dict) or medication.get("resourceType") != "Medication":
            return []
        if _shape_problem(medication) is not None:
            return []
        concepts = [medication["code"]] if isinstance(medication.get("code"), dict) else []
        for ingredient in medication.get("ingredient") or []:
            if isinstance(ingredient.get("itemCodeableConcept"), dict):
                concepts.append(ingredient["itemCodeableConcept"])
        return concepts

    def drugs_of(self, item: _Item, patient: _Patient) -> tuple[list[str], str]:
        concepts = self._medication_concepts(item)
        label = "; ".join(filter(None, (_concept_text(c) for c in concepts))) or "(no code or text)"
        drugs: list[str] = []
        for concept in concepts:
            coded = [
                _rxcui_index()[c["code"]]
                for c in concept.get("coding") or []
                if isinstance(c, dict)
                and c.get("system") == RXNORM
                and c.get("code") in _rxcui_index()
            ]
            named = drugs_in_text(_concept_text(concept))
            if coded and named and not set(coded) & set(named):
                patient.warnings.append(
                    f"{item.ref}: RxNorm code says {', '.join(coded)} but the text says "
                    f"{', '.join(named)}; the code is used"
                )
            for drug in coded or named:
                if drug not in drugs:
                    drugs.append(drug)
        return drugs, label

    def add_medication(self, item: _Item, patient: _Patient) -> None:
        resource = item.resource
        kind = resource["resourceType"]
        status = resource.get("status")
        drugs, label = self.drugs_of(item, patient)
        if INDEX_DRUG in drugs:
            if kind == "MedicationRequest" and status in ("draft", "active"):
                authored = _parse_when(resource.get("authoredOn"))
                patient.index_orders.append((status, authored, _dose_mg(resource), item.ref))
            return
        if status in _SKIPPED_STATUS[kind]:
            return
        start, end = _medication_period(resource)
        if start is None:
            if drugs:
                patient.warnings.append(
                    f"{item.ref}: {label}: no usable start date; medication skipped"
                )
            return
        if not drugs:
            self.other_drugs[label[:80]][patient.patient_id] += 1
            return
        for drug in drugs:
            if _roles().get(drug, "anticancer") != "anticancer":
                self.other_drugs[drug][patient.patient_id] += 1
                continue
            patient.meds.append((drug, kind, start.date(), end.date() if end else None, item.ref))

    # -- conditions

    def add_condition(self, item: _Item, patient: _Patient) -> None:
        resource = item.resource
        verification = {
            c.get("code")
            for c in (resource.get("verificationStatus") or {}).get("coding") or []
            if isinstance(c, dict)
        }
        if verification & {"refuted", "entered-in-error"}:
            return
        codings = (resource.get("code") or {}).get("coding") or []
        sites = {
            METASTASIS_CODES[(c.get("system"), c.get("code"))]
            for c in codings
            if isinstance(c, dict) and (c.get("system"), c.get("code")) in METASTASIS_CODES
        }
        when = _parse_when(
            resource.get("onsetDateTime")
            or (resource.get("onsetPeriod") or {}).get("start")
            or resource.get("recordedDate")
        )
        for site in sorted(sites):
            patient.metastases.append((site, when, item.ref))

    # -- assembling

    def run(self, index_date: date | None, today: date) -> tuple[list[dict], list[str]]:
        valid = []
        for item in self.items:
            problem = _shape_problem(item.resource)
            if problem is None:
                valid.append(item)
            else:
                self.warnings.append(
                    f"{item.ref}: malformed {item.resource['resourceType']} ({problem}); skipped"
                )
        self.items = valid
        self.by_ref = {k: v for k, v in self.by_ref.items() if _shape_problem(v) is None}
        for item in self.items:
            if item.resource["resourceType"] == "Patient":
                self.add_patient(item)
        handlers = {
            "Observation": self.add_observation,
            "Condition": self.add_condition,
            **{kind: self.add_medication for kind in _MEDICATION_TYPES},
        }
        for item in self.items:
            handler = handlers.get(item.resource["resourceType"])
            if handler is None:
                continue
            patient = self.patient_of(item)
            if patient is not None:
                handler(item, patient)
        if not self.patients:
            raise FhirError("input: no Patient resource and no resource referring to a patient")
        records = [self._record(p, index_date, today) for p in self.patients.values()]
        warnings = list(self.warnings)
        for patient in self.patients.values():
            warnings += patient.warnings
        warnings += self._summary_warnings()
        return records, warnings

    def _summary_warnings(self) -> list[str]:
        out = []
        if self.unknown_tests:
            codes = ", ".join(
                f"{code} ({next(iter(names)) or 'no display'})"
                for code, names in sorted(self.unknown_tests.items())
            )
            out.append(
                f"{sum(sum(n.values()) for n in self.unknown_tests.values())} observations with "
                f"LOINC codes outside the model's analytes kept under their own code: {codes}"
            )
        if self.other_drugs:
            names = ", ".join(sorted(self.other_drugs))
            out.append(
                "medications that are not anticancer drugs of the model's table are left out of "
                f"the regimens: {names}"
            )
        return out

    def _record(self, patient: _Patient, index_date: date | None, today: date) -> dict[str, Any]:
        episode: dict[str, Any] = {}
        if index_date is None:
            index_date = self._index_from_orders(patient, episode)
        if index_date is None:
            index_date = today
            patient.warnings.append(
                f"Patient/{patient.patient_id}: no index date given and no draft or active "
                f"hetrombopag order with authoredOn; index date = today ({today.isoformat()})"
            )
        episode["episode_id"] = f"{patient.patient_id}-{index_date:%Y%m%d}"
        episode["index_date"] = index_date.isoformat()
        episode = {k: episode[k] for k in ("episode_id", "index_date", "dose_mg") if k in episode}

        static = {"patient_id": patient.patient_id, **patient.static}
        before = [(when, value) for when, value in patient.ecog if when.date() <= index_date]
        if before:
            static["ecog"] = max(before)[1]
        self._metastases(patient, static, index_date)
        labs = [row for _, row in sorted(patient.labs, key=lambda pair: pair[0])]
        return {
            "patient": static,
            "episode": episode,
            "labs": labs,
            "regimens": _regimens(patient.meds),
        }

    def _index_from_orders(self, patient: _Patient, episode: dict[str, Any]) -> date | None:
        dated = [order for order in patient.index_orders if order[1] is not None]
        for order in patient.index_orders:
            if order[1] is None:
                patient.warnings.append(f"{order[3]}: hetrombopag order has no authoredOn")
        if not dated:
            return None
        status, authored, dose, ref = max(dated, key=lambda o: (o[0] == "draft", o[1]))
        if len({o[1].date() for o in dated}) > 1:
            patient.warnings.append(
                f"Patient/{patient.patient_id}: {len(dated)} hetrombopag orders; the index date "
                f"comes from {ref} ({status}, authored {authored.date().isoformat()})"
            )
        if dose is not None:
            episode["dose_mg"] = dose
        return authored.date()

    def _metastases(self, patient: _Patient, static: dict[str, Any], index_date: date) -> None:
        for site, when, ref in patient.metastases:
            if when is not None and when.date() > index_date:
                patient.warnings.append(f"{ref}: {site} recorded after the index date; not used")
                continue
            static[site] = True
        missing = [c for c in METASTASIS_COLUMNS if c not in static]
        if missing:
            patient.warnings.append(
                f"Patient/{patient.patient_id}: no coded condition for {', '.join(missing)}; "
                "left unknown"
            )


def _race(resource: Mapping[str, Any]) -> str | None:
    for extension in resource.get("extension") or []:
        if not isinstance(extension, dict) or extension.get("url") != US_CORE_RACE:
            continue
        omb, text = [], None
        for part in extension.get("extension") or []:
            if part.get("url") == "ombCategory":
                display = (part.get("valueCoding") or {}).get("display")
                if display:
                    omb.append(display)
            elif part.get("url") == "text":
                text = part.get("valueString")
        if len(omb) == 1:
            return omb[0]
        return text or ("; ".join(omb) if omb else None)
    return None


def _dose_mg(resource: Mapping[str, Any]) -> float | None:
    for instruction in resource.get("dosageInstruction") or []:
        for rate in instruction.get("doseAndRate") or []:
            quantity = rate.get("doseQuantity") or {}
            unit = quantity.get("code") or quantity.get("unit")
            if unit == "mg" and isinstance(quantity.get("value"), int | float):
                return float(quantity["value"])
    return None


def _medication_period(resource: Mapping[str, Any]) -> tuple[datetime | None, datetime | None]:
    kind = resource["resourceType"]
    if kind == "MedicationRequest":
        for instruction in resource.get("dosageInstruction") or []:
            bounds = ((instruction.get("timing") or {}).get("repeat") or {}).get("boundsPeriod")
            if isinstance(bounds, dict) and _parse_when(bounds.get("start")):
                return _parse_when(bounds.get("start")), _parse_when(bounds.get("end"))
        return _parse_when(resource.get("authoredOn")), None
    period = resource.get("effectivePeriod") or {}
    start = _parse_when(resource.get("effectiveDateTime")) or _parse_when(period.get("start"))
    if start is None and kind == "MedicationStatement":
        start = _parse_when(resource.get("dateAsserted"))
    return start, _parse_when(period.get("end"))


def _regimens(meds: Iterable[tuple[str, str, date, date | None, str]]) -> list[dict[str, Any]]:
    """Regimen rows from (drug, kind, start, end, ref): the rule of the module docstring."""
    meds = list(meds)
    given = defaultdict(list)
    for drug, kind, start, _end, _ref in meds:
        if kind in _GIVEN_TYPES:
            given[drug].append(start)
    kept = []
    for med in meds:
        drug, kind, start, _end, _ref = med
        if kind == "MedicationRequest" and any(
            timedelta(0) <= g - start <= timedelta(days=ORDER_MATCH_DAYS) for g in given[drug]
        ):
            continue
        kept.append(med)
    by_day: dict[date, list[tuple[str, date | None]]] = defaultdict(list)
    for drug, _kind, start, end, _ref in kept:
        by_day[start].append((drug, end))
    rows = []
    for start in sorted(by_day):
        drugs = sorted({drug for drug, _ in by_day[start]})
        ends = [end for _, end in by_day[start]]
        row: dict[str, Any] = {"start_date": start.isoformat(), "drugs": drugs}
        if all(end is not None for end in ends):
            row["end_date"] = max(ends).isoformat()  # type: ignore[type-var]
        rows.append(row)
    return rows


def fhir_to_patient_records(
    obj: Any, *, index_date: date | datetime | str | None = None, today: date | None = None
) -> tuple[list[dict[str, Any]], list[str]]:
    """FHIR R4 input (Bundle or list of resources) -> scoring records (one per patient), warnings.

    Each record is the JSON of DESIGN.md "One patient over HTTP"; lab rows carry an extra
    `source` (the Observation reference, for the RiskAssessment basis).

    Raises:
        FhirError: the input is not FHIR, or holds no patient.
    """
    if not is_fhir(obj):
        raise FhirError("input: not FHIR JSON (expected a resource with resourceType or a list)")
    fixed = _as_date(index_date) if index_date is not None else None
    converter = _Converter(_collect(obj))
    records, warnings = converter.run(fixed, today or date.today())
    if warnings:  # they name resources (Patient/<id>): returned to the caller, not logged
        logger.debug("FHIR input: %d warning(s)", len(warnings))
    return records, warnings


# --------------------------------------------------------------------------- output


_QUALITATIVE = {"low": "low", "intermediate": "moderate", "moderate": "moderate", "high": "high"}


def risk_assessment(
    score: Mapping[str, Any],
    record: Mapping[str, Any],
    *,
    occurred_at: datetime | None = None,
) -> dict[str, Any]:
    """A FHIR R4 RiskAssessment (status final) for one answer of `Scorer.score` and its record.

    `basis` references the Observations the record came from (lab rows with a `source`) dated on
    or before the index date; `method` names the model and its version.
    """
    model = score.get("model") or {}
    name, version = str(model.get("name", "ctit")), str(model.get("version", "unknown"))
    patient_id = record["patient"]["patient_id"]
    episode = _scored_episode(record, score.get("episode_id"))
    index_date = str(episode["index_date"])
    probability = float(score["probability"])
    if not 0.0 <= probability <= 1.0:
        raise ValueError(f"probability {probability} is outside [0, 1]")
    when = (occurred_at or datetime.now(UTC)).astimezone(UTC)
    label = model.get("label_definition")
    prediction: dict[str, Any] = {
        "outcome": {"text": "Platelet response to hetrombopag" + (f" ({label})" if label else "")},
        "probabilityDecimal": round(probability, 4),
    }
    band = score.get("band")
    if isinstance(band, str):
        qualitative: dict[str, Any] = {"text": band}
        if band in _QUALITATIVE:
            qualitative["coding"] = [{"system": RISK_PROBABILITY, "code": _QUALITATIVE[band]}]
        prediction["qualitativeRisk"] = qualitative
    factors = [_plain(f) for f in score.get("top_factors") or []]
    if factors:
        prediction["rationale"] = "Top factors: " + "; ".join(factors)
    resource: dict[str, Any] = {
        "resourceType": "RiskAssessment",
        "status": "final",
        "identifier": [{"system": "urn:ctit:episode", "value": str(episode["episode_id"])}],
        "subject": subject_of(patient_id),
        "occurrenceDateTime": when.isoformat(timespec="seconds").replace("+00:00", "Z"),
        "method": {
            "coding": [{"system": "urn:ctit:model", "code": name, "version": version}],
            "text": f"{name} {version}",
        },
        "prediction": [prediction, *_by_day_predictions(score, prediction)],
    }
    basis = _basis(record, index_date)
    if basis:
        resource["basis"] = basis
    notes = []
    interval = score.get("interval")
    if isinstance(interval, list | tuple) and len(interval) == 2:
        level = score.get("interval_level")
        what = (
            f"{float(level):.0%} interval for the probability"
            if isinstance(level, int | float)
            else "Uncertainty interval"
        )
        how = (
            "patient bootstrap of the training procedure; not a range for the outcome"
            if isinstance(level, int | float)
            else "spread of the cross-validation fold models"
        )
        notes.append(
            f"Index date {index_date}. {what} {float(interval[0]):.2f}"
            f"-{float(interval[1]):.2f} ({how})."
        )
    notes += [f"Warning: {_plain(w)}" for w in score.get("warnings") or []]
    if notes:
        resource["note"] = [{"text": text} for text in notes]
    return resource


#: Days after the index date with their own prediction (besides the label horizon) when the
#: answer has `response_by_day`.
BY_DAY_HORIZONS = (7,)


def _days(value: int) -> dict[str, Any]:
    return {"value": value, "unit": "days", "system": "http://unitsofmeasure.org", "code": "d"}


def _by_day_predictions(score: Mapping[str, Any], main: dict[str, Any]) -> list[dict[str, Any]]:
    """One prediction per horizon: `main` (response by the label horizon) gets its `whenRange`
    (days 1..horizon after the index date); each earlier day of `BY_DAY_HORIZONS` is added with
    P(response by that day) from `response_by_day`."""
    curve = score.get("response_by_day")
    if not isinstance(curve, list | tuple) or not curve:
        return []
    horizon = len(curve)
    main["whenRange"] = {"low": _days(1), "high": _days(horizon)}
    out = []
    for day in BY_DAY_HORIZONS:
        if day < horizon:
            out.append(
                {
                    "outcome": {"text": f"Platelet response to hetrombopag by day {day}"},
                    "probabilityDecimal": round(float(curve[day - 1]), 4),
                    "whenRange": {"low": _days(1), "high": _days(day)},
                }
            )
    return out


#: A FHIR resource id (R4 `id` datatype).
FHIR_ID = re.compile(r"[A-Za-z0-9\-\.]{1,64}")
PATIENT_ID_SYSTEM = "urn:ctit:patient-id"


def patient_reference(patient_id: Any) -> str:
    """`Patient/<id>` when the id is a valid FHIR id, else `Patient/<SHA-256 of it>` (64 hex)."""
    text = str(patient_id)
    if FHIR_ID.fullmatch(text):
        return f"Patient/{text}"
    return f"Patient/{hashlib.sha256(text.encode('utf-8', 'replace')).hexdigest()}"


def subject_of(patient_id: Any) -> dict[str, Any]:
    """A valid FHIR Reference to the patient: the id itself when it is a valid FHIR id; else a
    hashed id plus an `identifier` element holding the id as given (any string is allowed
    there)."""
    text = str(patient_id)
    reference: dict[str, Any] = {"reference": patient_reference(text)}
    if not FHIR_ID.fullmatch(text):
        reference["identifier"] = {"system": PATIENT_ID_SYSTEM, "value": text}
    return reference


def _scored_episode(record: Mapping[str, Any], episode_id: Any) -> Mapping[str, Any]:
    """The record's episode the answer is about: `episode`, or the match in `episodes`."""
    candidates = (
        [record["episode"]] if record.get("episode") else list(record.get("episodes") or [])
    )
    if len(candidates) == 1:
        return candidates[0]
    for episode in candidates:
        if str(episode.get("episode_id")) == str(episode_id):
            return episode
    raise ValueError(f"the record has no episode {episode_id!r}")


def _basis(record: Mapping[str, Any], index_date: str) -> list[dict[str, str]]:
    """References to the model-analyte Observations dated up to the index date.

    A resource known only by a bundle-local `urn:uuid:` fullUrl is named by display text, since
    that reference would dangle outside its bundle.
    """
    cutoff = _parse_when(index_date)
    basis: list[dict[str, str]] = []
    seen: set[str] = set()
    for row in record.get("labs") or []:
        source = row.get("source")
        when = _parse_when(str(row.get("time", "")))
        analyte = canonical_test(row.get("test"))
        if not isinstance(source, str) or source in seen or analyte is None:
            continue
        if cutoff is not None and when is not None and when.date() > cutoff.date():
            continue
        seen.add(source)
        if source.startswith("urn:"):
            basis.append(
                {"display": f"{analyte} {row.get('value')} {row.get('unit')} {row['time']}"}
            )
        else:
            basis.append({"reference": source})
    return basis


def _plain(item: Any) -> str:
    """A factor or warning as plain text (strings as they are; dicts by their text fields)."""
    if isinstance(item, str):
        return item
    if isinstance(item, Mapping):
        for key in ("text", "message", "description", "label"):
            if isinstance(item.get(key), str):
                return item[key]
        return ", ".join(f"{k}: {v}" for k, v in item.items())
    return str(item)


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
