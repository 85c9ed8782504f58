"""Code systems, the drugs' codes and names, and the small parsers every part of the FHIR
adapter shares (`FhirError`, FHIR dates and times)."""

from __future__ import annotations

import csv
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime
from functools import lru_cache
from importlib import resources
from typing import Any

from data.drugs import drug_aliases, normalise_drug

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
_DASHES = re.compile(r"[\u2010-\u2015\u2212]")


class FhirError(ValueError):
    """The input is not FHIR R4 this adapter can read; the message names where and what."""


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
def rxcui_index() -> dict[str, str]:
    return {e.rxcui: e.drug for e in rxnorm_table() if e.rxcui}


@lru_cache(maxsize=1)
def drug_roles() -> dict[str, str]:
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


def concept_text(concept: Mapping[str, Any]) -> str:
    parts = [concept.get("text") or ""]
    parts += [c.get("display") or "" for c in concept.get("coding") or [] if isinstance(c, dict)]
    return "; ".join(dict.fromkeys(p for p in parts if p))


def parse_when(value: Any) -> datetime | None:
    """A FHIR date or dateTime as a naive local datetime (offset dropped); partial dates -> None."""
    if not isinstance(value, str) or len(value) < 10:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed.replace(tzinfo=None)


def iso_time(when: datetime) -> str:
    if when.time() == datetime.min.time():
        return when.date().isoformat()
    return when.isoformat(timespec="seconds")


def as_date(value: date | datetime | str) -> date:
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    parsed = parse_when(value)
    if parsed is None:
        raise FhirError(f"index_date: {value!r} is not an ISO 8601 date")
    return parsed.date()
