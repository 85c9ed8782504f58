"""Drug names to generic names and drug classes, from the table shipped as `drug_classes.csv`.

A drug may belong to several classes (trastuzumab deruxtecan: `adc` and `anti_her2`) or to none of
the 14 classes (everolimus is known but has no class here); an unknown drug has no class and is
reported by the cohort loader, never dropped silently.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from types import MappingProxyType

DRUG_CLASSES: tuple[str, ...] = (
    "platinum",
    "gemcitabine",
    "anthracycline",
    "taxane",
    "antimetabolite",
    "alkylator",
    "vinca",
    "eribulin",
    "adc",
    "cdk46",
    "parp",
    "anti_her2",
    "endocrine",
    "immunotherapy",
)
#: The classes that can cause thrombocytopenia (a regimen with none of them cannot cause CTIT).
MYELOTOXIC_CLASSES = frozenset(DRUG_CLASSES) - {"anti_her2", "endocrine", "immunotherapy"}
#: Cytotoxic chemotherapy (the regimen class "chemotherapy" at onset; ADCs and targeted drugs not).
CHEMOTHERAPY_CLASSES = MYELOTOXIC_CLASSES - {"adc", "cdk46", "parp"}

DRUG_TABLE = Path(__file__).with_name("drug_classes.csv")
_DASHES = re.compile(r"[\u2010-\u2015\u2212]")


def _key(name: str) -> str:
    return " ".join(_DASHES.sub("-", name).strip().lower().split())


class DrugTableError(ValueError):
    """The shipped drug table is inconsistent (a packaging bug, caught by the tests)."""


@lru_cache(maxsize=1)
def _table() -> tuple[Mapping[str, tuple[str, ...]], Mapping[str, str]]:
    """(generic name -> classes, any name or alias -> generic name), read once on first use."""
    text = DRUG_TABLE.read_text(encoding="utf-8")
    classes: dict[str, tuple[str, ...]] = {}
    names: dict[str, str] = {}
    for lineno, row in enumerate(csv.DictReader(text.splitlines()), start=2):
        generic = _key(row["drug"])
        drug_classes = tuple(
            sorted(c.strip() for c in (row["classes"] or "").split(";") if c.strip())
        )
        unknown = set(drug_classes) - set(DRUG_CLASSES)
        if unknown:
            raise DrugTableError(f"drug_classes.csv:{lineno}: unknown class {sorted(unknown)}")
        if generic in classes:
            raise DrugTableError(f"drug_classes.csv:{lineno}: {generic!r} listed twice")
        classes[generic] = drug_classes
        for alias in (generic, *(row["aliases"] or "").split(";")):
            alias_key = _key(alias)
            if not alias_key:
                continue
            if names.get(alias_key, generic) != generic:
                raise DrugTableError(
                    f"drug_classes.csv:{lineno}: alias {alias!r} already names {names[alias_key]!r}"
                )
            names[alias_key] = generic
    return MappingProxyType(classes), MappingProxyType(names)


def normalise_drug(name: str) -> str:
    """Generic lower-case name of a drug (brand names and synonyms resolved); unknown names are
    returned cleaned (lower case, single spaces) but otherwise as given."""
    key = _key(name)
    return _table()[1].get(key, key)


def is_known(name: str) -> bool:
    """Whether a drug name (generic, brand or synonym) is in the shipped table."""
    return _key(name) in _table()[1]


def classes_of(drug: str) -> tuple[str, ...]:
    """Sorted class ids of a drug (any known name); empty for unknown drugs."""
    classes, names = _table()
    generic = names.get(_key(drug))
    return classes[generic] if generic is not None else ()


def known_drugs() -> list[str]:
    """Sorted generic names of every drug in the table (for autocomplete)."""
    return sorted(_table()[0])


def drug_aliases() -> dict[str, str]:
    """Every accepted name or alias (normalised) -> its generic name."""
    return dict(_table()[1])
