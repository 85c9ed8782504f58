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

import logging
import math
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

from data.units import accepted_units, canonical_test, unit_factor
from serving.fhir.bundles import Item, collect, is_fhir
from serving.fhir.codes import (
    ECOG_LOINC,
    INDEX_DRUG,
    LOINC,
    METASTASIS_CODES,
    METASTASIS_COLUMNS,
    ORDER_MATCH_DAYS,
    RXNORM,
    UCUM,
    US_CORE_RACE,
    FhirError,
    as_date,
    concept_text,
    drug_roles,
    drugs_in_text,
    iso_time,
    parse_when,
    rxcui_index,
)
from serving.fhir.shapes import shape_problem

logger = logging.getLogger(__name__)

_SKIPPED_STATUS = {
    "Observation": {"entered-in-error", "cancelled", "registered"},
    "MedicationRequest": {"entered-in-error", "cancelled", "draft"},
    "MedicationStatement": {"entered-in-error", "not-taken", "intended"},
    "MedicationAdministration": {"entered-in-error", "not-done"},
}
_MEDICATION_TYPES = ("MedicationRequest", "MedicationStatement", "MedicationAdministration")
_GIVEN_TYPES = ("MedicationStatement", "MedicationAdministration")
_PATIENT_REF = re.compile(r"(?:^|/)Patient/([A-Za-z0-9\-.]{1,64})(?:/_history/[^/]+)?$")


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
    def __init__(self, items: list[Item]) -> None:
        self.items = items
        self.patients: dict[str, _Patient] = {}
        self.keys: dict[str, str] = {}
        self.warnings: list[str] = []
        self.by_ref = {item.ref: item.resource for item in items}
        self.by_ref.update({item.full_url: item.resource for item in items if item.full_url})
        self.unknown_tests: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        self.other_drugs: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))

    # -- patients

    def add_patient(self, item: Item) -> None:
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
            if len(birth) == 10 and parse_when(birth):
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

    def patient_of(self, item: Item) -> _Patient | None:
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

    def add_observation(self, item: Item, patient: _Patient) -> None:
        resource = item.resource
        if resource.get("status") in _SKIPPED_STATUS["Observation"]:
            return
        loinc = _loinc_codes(resource)
        if ECOG_LOINC in loinc:
            self._add_ecog(item, patient)
            return
        categories = _category_codes(resource)
        if categories and "laboratory" not in categories:
            return  # vital signs, social history, surveys: not model input
        if not loinc:
            label = concept_text(resource.get("code") or {}) or "no code"
            patient.warnings.append(f"{item.ref}: no LOINC code ({label}); observation skipped")
            return
        known = [code for code in loinc if canonical_test(code)]
        code = known[0] if known else loinc[0]
        when = self._observation_time(item, patient)
        if when is None:
            return
        quantity = _finite_quantity(item, patient, code, bool(known))
        if quantity is None:
            return
        unit = self._accepted_unit(item, patient, code, quantity)
        if unit is None:
            return
        _note_comparator(item, patient, code, quantity)
        row = {
            "time": iso_time(when),
            "test": code,
            "value": float(quantity["value"]),
            "unit": unit,
            "source": item.ref,
        }
        patient.labs.append((when, row))

    def _accepted_unit(
        self, item: Item, patient: _Patient, code: str, quantity: Mapping[str, Any]
    ) -> str | None:
        """The UCUM code (else the text) of the value's unit when the observation can be used:
        a model analyte's unit must be accepted for it; a test outside the model needs a unit
        (and is counted for the summary warning). None (with a warning) otherwise."""
        unit = quantity.get("code") if quantity.get("system", UCUM) == UCUM else None
        unit = unit or quantity.get("unit")
        analyte = canonical_test(code)
        if analyte is None and not unit:
            patient.warnings.append(
                f"{item.ref}: LOINC {code} (not a model analyte) has no unit; observation skipped"
            )
            return None
        if analyte is None:
            self.unknown_tests[code][concept_text(item.resource.get("code") or {})[:60]] += 1
        elif not isinstance(unit, str) or unit_factor(analyte, unit) is None:
            patient.warnings.append(
                f"{item.ref}: unit {unit!r} is not accepted for {analyte} (LOINC {code}; "
                f"accepted: {', '.join(accepted_units(analyte))}); observation skipped"
            )
            return None
        return unit

    def _observation_time(self, item: Item, patient: _Patient) -> datetime | None:
        resource = item.resource
        raw = (
            resource.get("effectiveDateTime")
            or (resource.get("effectivePeriod") or {}).get("start")
            or resource.get("effectiveInstant")
            or resource.get("issued")
        )
        when = parse_when(raw)
        if when is None:
            patient.warnings.append(
                f"{item.ref}: no usable effective time ({raw!r}); observation skipped"
            )
        return when

    def _add_ecog(self, item: Item, patient: _Patient) -> None:
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

    def _medication_concepts(self, item: Item) -> list[dict[str, Any]]:
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
        if shape_problem(medication) is not None:
            return []
        concepts = [medication["code"]] if isinstance(medication.get("code"), dict) else []
        for ingredient in medication.get("ingredient") or []:
            if isinstance(ingredient.get("itemCodeableConcept"), dict):
                concepts.append(ingredient["itemCodeableConcept"])
        return concepts

    def drugs_of(self, item: Item, patient: _Patient) -> tuple[list[str], str]:
        concepts = self._medication_concepts(item)
        label = "; ".join(filter(None, (concept_text(c) for c in concepts))) or "(no code or text)"
        drugs: list[str] = []
        for concept in concepts:
            coded = [
                rxcui_index()[c["code"]]
                for c in concept.get("coding") or []
                if isinstance(c, dict)
                and c.get("system") == RXNORM
                and c.get("code") in rxcui_index()
            ]
            named = drugs_in_text(concept_text(concept))
            if coded and named and not set(coded) & set(named):
                patient.warnings.append(
                    f"{item.ref}: RxNorm code says {', '.join(coded)} but the text says "
                    f"{', '.join(named)}; the code is used"
                )
            for drug in coded or named:
                if drug not in drugs:
                    drugs.append(drug)
        return drugs, label

    def add_medication(self, item: Item, patient: _Patient) -> None:
        resource = item.resource
        kind = resource["resourceType"]
        status = resource.get("status")
        drugs, label = self.drugs_of(item, patient)
        if INDEX_DRUG in drugs:
            if kind == "MedicationRequest" and status in ("draft", "active"):
                authored = parse_when(resource.get("authoredOn"))
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
            if drug_roles().get(drug, "anticancer") != "anticancer":
                self.other_drugs[drug][patient.patient_id] += 1
                continue
            patient.meds.append((drug, kind, start.date(), end.date() if end else None, item.ref))

    # -- conditions

    def add_condition(self, item: Item, patient: _Patient) -> None:
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
        when = parse_when(
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
            problem = shape_problem(item.resource)
            if problem is None:
                valid.append(item)
            else:
                self.warnings.append(
                    f"{item.ref}: malformed {item.resource['resourceType']} ({problem}); skipped"
                )
        self.items = valid
        self.by_ref = {k: v for k, v in self.by_ref.items() if shape_problem(v) is None}
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


def _category_codes(resource: Mapping[str, Any]) -> set[Any]:
    """The codes of an Observation's categories (`laboratory`, `vital-signs`...)."""
    return {
        c.get("code")
        for cat in resource.get("category") or []
        for c in (cat.get("coding") or [])
        if isinstance(c, dict)
    }


def _loinc_codes(resource: Mapping[str, Any]) -> list[str]:
    """The LOINC codes of an Observation's `code`, in order."""
    return [
        c.get("code")
        for c in (resource.get("code") or {}).get("coding") or []
        if isinstance(c, dict) and c.get("system") == LOINC and c.get("code")
    ]


def _finite_quantity(
    item: Item, patient: _Patient, code: str, known: bool
) -> Mapping[str, Any] | None:
    """The observation's `valueQuantity` when its value is a finite number, else None (with a
    warning for a model analyte's observation without a numeric value, or a non-finite one)."""
    quantity = item.resource.get("valueQuantity")
    if not isinstance(quantity, dict) or not isinstance(quantity.get("value"), int | float):
        if known:
            patient.warnings.append(
                f"{item.ref}: LOINC {code} has no numeric valueQuantity; observation skipped"
            )
        return None
    value = float(quantity["value"])
    if not math.isfinite(value):
        patient.warnings.append(f"{item.ref}: value {value} is not finite; skipped")
        return None
    return quantity


def _note_comparator(item: Item, patient: _Patient, code: str, quantity: Mapping[str, Any]) -> None:
    """A value reported as a bound (`<10`) is used as the number, with a warning."""
    comparator = quantity.get("comparator")
    if comparator:
        patient.warnings.append(
            f"{item.ref}: {canonical_test(code) or code} reported as "
            f"'{comparator}{quantity['value']}'; the value {quantity['value']} is used"
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
            if isinstance(bounds, dict) and parse_when(bounds.get("start")):
                return parse_when(bounds.get("start")), parse_when(bounds.get("end"))
        return parse_when(resource.get("authoredOn")), None
    period = resource.get("effectivePeriod") or {}
    start = parse_when(resource.get("effectiveDateTime")) or parse_when(period.get("start"))
    if start is None and kind == "MedicationStatement":
        start = parse_when(resource.get("dateAsserted"))
    return start, parse_when(period.get("end"))


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
    fixed = as_date(index_date) if index_date is not None else None
    converter = _Converter(collect(obj))
    records, warnings = converter.run(fixed, today or date.today())
    if warnings:  # they name resources (Patient/<id>): returned to the caller, not logged
        logger.debug("FHIR input: %d warning(s)", len(warnings))
    return records, warnings
