"""Canonical analytes, their LOINC codes and aliases, and unit conversion to the canonical unit.

The table is DESIGN.md "Cohort contract": every accepted unit with its factor to the canonical
unit. An unknown unit for a known analyte is an error, never a guess; unit strings are matched
after trivial spelling normalisation only (case, spaces, `^` for `*`, micro sign for `u`, a
leading `x` before a power of ten).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np


@dataclass(frozen=True)
class Analyte:
    """One analyte: canonical alias and unit, LOINC codes, accepted units and plausible range.

    `units` maps each accepted unit (as written in DESIGN.md) to the factor that converts a value
    in that unit to the canonical unit. `limit` is the largest physiologically possible value in
    the canonical unit; values above it (or below zero) are rejected as impossible.
    """

    alias: str
    name: str
    unit: str
    loinc: tuple[str, ...]
    units: Mapping[str, float]
    limit: float
    synonyms: tuple[str, ...] = ()


def _analyte(
    alias: str,
    name: str,
    unit: str,
    loinc: tuple[str, ...],
    also: dict[str, float],
    limit: float,
    synonyms: tuple[str, ...] = (),
) -> Analyte:
    return Analyte(alias, name, unit, loinc, MappingProxyType({unit: 1.0, **also}), limit, synonyms)


_COUNT_PER_UL = {"10*3/uL": 1.0}
ANALYTES: Mapping[str, Analyte] = MappingProxyType(
    {
        a.alias: a
        for a in (
            _analyte(
                "PLT",
                "platelets",
                "10*9/L",
                ("777-3", "26515-7", "49497-1"),
                {
                    "10*3/uL": 1.0,
                    "10^9/L": 1.0,
                    "10^3/uL": 1.0,
                    "K/uL": 1.0,
                    "/uL": 1e-3,
                    "10*3/mm3": 1.0,
                },
                5000.0,
                ("platelets", "platelet count", "plt count", "platelet"),
            ),
            _analyte(
                "HGB",
                "haemoglobin",
                "g/L",
                ("718-7",),
                {"g/dL": 10.0},
                300.0,
                ("hb", "hgb", "haemoglobin", "hemoglobin"),
            ),
            _analyte(
                "WBC",
                "white cells",
                "10*9/L",
                ("6690-2",),
                dict(_COUNT_PER_UL),
                1000.0,
                ("white blood cells", "leukocytes"),
            ),
            _analyte(
                "ANC",
                "neutrophils (absolute)",
                "10*9/L",
                ("751-8", "26499-4"),
                dict(_COUNT_PER_UL),
                1000.0,
                ("neutrophils", "absolute neutrophil count"),
            ),
            _analyte(
                "ALT", "ALT", "U/L", ("1742-6",), {}, 50000.0, ("sgpt", "alanine aminotransferase")
            ),
            _analyte(
                "AST",
                "AST",
                "U/L",
                ("1920-8",),
                {},
                50000.0,
                ("sgot", "aspartate aminotransferase"),
            ),
            _analyte(
                "TBIL",
                "total bilirubin",
                "umol/L",
                ("1975-2", "14631-6"),
                {"mg/dL": 17.104},
                1500.0,
                ("bilirubin", "total bilirubin", "tbili"),
            ),
            _analyte(
                "CREA",
                "creatinine",
                "umol/L",
                ("2160-0", "14682-9"),
                {"mg/dL": 88.42},
                5000.0,
                ("creatinine", "creat"),
            ),
            _analyte("ALB", "albumin", "g/L", ("1751-7",), {"g/dL": 10.0}, 100.0, ("albumin",)),
        )
    }
)

#: Values possible but rare enough to warn about, in the canonical unit of each analyte (the HTTP
#: answers and `ctit validate` warn with the same ranges). Impossible values (negative, above
#: `Analyte.limit`) are errors.
IMPROBABLE: Mapping[str, tuple[float, float]] = MappingProxyType(
    {
        "PLT": (0.0, 1000.0),
        "HGB": (40.0, 200.0),
        "WBC": (0.1, 100.0),
        "ANC": (0.0, 50.0),
        "ALT": (0.0, 2000.0),
        "AST": (0.0, 2000.0),
        "TBIL": (0.0, 350.0),
        "CREA": (15.0, 1000.0),
        "ALB": (15.0, 55.0),
    }
)

CANONICAL_UNITS: Mapping[str, str] = MappingProxyType({a.alias: a.unit for a in ANALYTES.values()})

_POWER_PREFIX = re.compile(r"^[x×]\s*(?=10)")


def unit_key(unit: str) -> str:
    """Spelling-normalised form of a unit string (for matching only, never shown)."""
    key = unit.strip().replace("µ", "u").replace("μ", "u").replace("^", "*").replace(" ", "")
    return _POWER_PREFIX.sub("", key).lower()


def _test_key(code: str) -> str:
    return " ".join(code.strip().lower().split())


_TEST_INDEX: dict[str, str] = {}
_UNIT_INDEX: dict[str, dict[str, float]] = {}
for _a in ANALYTES.values():
    for _code in (_a.alias, *_a.loinc, *_a.synonyms):
        _TEST_INDEX[_test_key(_code)] = _a.alias
    _UNIT_INDEX[_a.alias] = {unit_key(u): f for u, f in _a.units.items()}


def canonical_test(code: object) -> str | None:
    """Canonical alias (`PLT`, `HGB`, ...) of a LOINC code or alias, or None for an unknown test."""
    if not isinstance(code, str):
        return None
    return _TEST_INDEX.get(_test_key(code))


def unit_factor(analyte: str, unit: object) -> float | None:
    """Factor converting `unit` to the canonical unit of `analyte`, or None when not accepted."""
    if not isinstance(unit, str):
        return None
    return _UNIT_INDEX[analyte].get(unit_key(unit))


def accepted_units(analyte: str) -> tuple[str, ...]:
    """The accepted units of an analyte, canonical first."""
    return tuple(ANALYTES[analyte].units)


def convert(analyte: str, value: float, unit: str) -> float:
    """Convert one value of a known analyte to its canonical unit.

    Raises:
        KeyError: `analyte` is not a canonical alias (see `canonical_test`).
        ValueError: the unit is not accepted for that analyte.
    """
    if analyte not in ANALYTES:
        raise KeyError(f"unknown analyte {analyte!r}; known: {', '.join(ANALYTES)}")
    factor = unit_factor(analyte, unit)
    if factor is None:
        raise ValueError(
            f"unknown unit {unit!r} for {analyte}; accepted: {', '.join(accepted_units(analyte))}"
        )
    return float(value) * factor


def pair_factors(analytes: Sequence[str | None], units: Sequence[object]) -> np.ndarray:
    """Factor of each (analyte, unit) pair, position by position; NaN when the unit is refused.

    An analyte of None (an unknown test, kept as given) has factor 1. Callers pass only the
    distinct pairs that occur, so the work and memory are linear in the rows (a dense matrix of
    every distinct test by every distinct unit grows with their product).
    """
    if len(analytes) != len(units):
        raise ValueError("analytes and units differ in length")
    out = np.full(len(analytes), np.nan)
    keys: dict[object, str | None] = {}
    for i, (analyte, unit) in enumerate(zip(analytes, units, strict=True)):
        if analyte is None:
            out[i] = 1.0
            continue
        if not isinstance(unit, str):
            continue
        key = keys.get(unit)
        if key is None:
            key = keys[unit] = unit_key(unit)
        factor = _UNIT_INDEX[analyte].get(key)
        if factor is not None:
            out[i] = factor
    return out
