"""Units and test codes: every accepted unit of DESIGN.md with its factor, by hand."""

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from data import units

# (analyte, unit, factor to the canonical unit): DESIGN.md "Cohort contract", typed by hand.
DESIGN_UNITS = [
    ("PLT", "10*9/L", 1.0),
    ("PLT", "10*3/uL", 1.0),
    ("PLT", "10^9/L", 1.0),
    ("PLT", "10^3/uL", 1.0),
    ("PLT", "K/uL", 1.0),
    ("PLT", "/uL", 1e-3),
    ("PLT", "10*3/mm3", 1.0),
    ("HGB", "g/L", 1.0),
    ("HGB", "g/dL", 10.0),
    ("WBC", "10*9/L", 1.0),
    ("WBC", "10*3/uL", 1.0),
    ("ANC", "10*9/L", 1.0),
    ("ANC", "10*3/uL", 1.0),
    ("ALT", "U/L", 1.0),
    ("AST", "U/L", 1.0),
    ("TBIL", "umol/L", 1.0),
    ("TBIL", "mg/dL", 17.104),
    ("CREA", "umol/L", 1.0),
    ("CREA", "mg/dL", 88.42),
    ("ALB", "g/L", 1.0),
    ("ALB", "g/dL", 10.0),
]
DESIGN_LOINC = {
    "777-3": "PLT",
    "26515-7": "PLT",
    "49497-1": "PLT",
    "718-7": "HGB",
    "6690-2": "WBC",
    "751-8": "ANC",
    "26499-4": "ANC",
    "1742-6": "ALT",
    "1920-8": "AST",
    "1975-2": "TBIL",
    "14631-6": "TBIL",
    "2160-0": "CREA",
    "14682-9": "CREA",
    "1751-7": "ALB",
}
CANONICAL = {
    "PLT": "10*9/L",
    "HGB": "g/L",
    "WBC": "10*9/L",
    "ANC": "10*9/L",
    "ALT": "U/L",
    "AST": "U/L",
    "TBIL": "umol/L",
    "CREA": "umol/L",
    "ALB": "g/L",
}


@pytest.mark.parametrize(("analyte", "unit", "factor"), DESIGN_UNITS)
def test_each_accepted_unit_converts_with_its_factor(
    analyte: str, unit: str, factor: float
) -> None:
    assert units.convert(analyte, 2.5, unit) == pytest.approx(2.5 * factor, rel=1e-12)
    assert units.unit_factor(analyte, unit) == factor


def test_hand_computed_conversions() -> None:
    assert units.convert("PLT", 42000, "/uL") == pytest.approx(42.0)
    assert units.convert("HGB", 10.5, "g/dL") == pytest.approx(105.0)
    assert units.convert("TBIL", 1.0, "mg/dL") == pytest.approx(17.104)
    assert units.convert("CREA", 0.8, "mg/dL") == pytest.approx(70.736)
    assert units.convert("ALB", 3.8, "g/dL") == pytest.approx(38.0)


def test_the_table_holds_exactly_the_design_units_and_canonical_units() -> None:
    table = {(a, u): f for a, spec in units.ANALYTES.items() for u, f in spec.units.items()}
    assert table == {(a, u): f for a, u, f in DESIGN_UNITS}
    assert dict(units.CANONICAL_UNITS) == CANONICAL
    for analyte, spec in units.ANALYTES.items():
        assert units.accepted_units(analyte)[0] == spec.unit


@pytest.mark.parametrize(("code", "analyte"), sorted(DESIGN_LOINC.items()))
def test_loinc_codes_map_to_their_analyte(code: str, analyte: str) -> None:
    assert units.canonical_test(code) == analyte
    assert units.canonical_test(f" {code} ") == analyte


@pytest.mark.parametrize("alias", list(CANONICAL))
def test_aliases_map_to_themselves_in_any_case(alias: str) -> None:
    assert units.canonical_test(alias) == alias
    assert units.canonical_test(alias.lower()) == alias


def test_unknown_tests_have_no_analyte() -> None:
    assert units.canonical_test("FERRITIN") is None
    assert units.canonical_test("2276-4") is None  # ferritin LOINC, not a contract analyte
    assert units.canonical_test(None) is None
    assert units.canonical_test(777) is None


def test_unit_spelling_variants_match_but_nothing_is_guessed() -> None:
    assert units.unit_factor("PLT", "x10^9/L") == 1.0
    assert units.unit_factor("PLT", "10^3/µL") == 1.0
    assert units.unit_factor("PLT", " k/ul ") == 1.0
    assert units.unit_factor("HGB", "G/DL") == 10.0
    assert units.unit_factor("HGB", "mmol/L") is None
    assert units.unit_factor("PLT", "10*6/L") is None
    assert units.unit_factor("PLT", None) is None


def test_unknown_unit_raises_naming_the_accepted_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown unit 'mmol/L' for HGB; accepted: g/L, g/dL"):
        units.convert("HGB", 6.2, "mmol/L")
    with pytest.raises(KeyError, match="unknown analyte"):
        units.convert("FERRITIN", 1.0, "ng/mL")


@given(
    st.sampled_from(DESIGN_UNITS),
    st.floats(min_value=0.0, max_value=1e6, allow_nan=False, allow_infinity=False),
)
def test_round_trip_to_canonical_and_back(spec: tuple[str, str, float], value: float) -> None:
    analyte, unit, factor = spec
    canonical = units.convert(analyte, value, unit)
    assert canonical / units.unit_factor(analyte, unit) == pytest.approx(
        value, rel=1e-12, abs=1e-12
    )
    # The same quantity written in two accepted units converts to the same canonical value.
    for other_analyte, other_unit, other_factor in DESIGN_UNITS:
        if other_analyte == analyte:
            in_other = canonical / other_factor
            assert math.isclose(
                units.convert(analyte, in_other, other_unit),
                canonical,
                rel_tol=1e-12,
                abs_tol=1e-12,
            )


def test_pair_factors_are_computed_per_pair_given() -> None:
    got = units.pair_factors(
        ["PLT", "PLT", "HGB", None, "TBIL", "CREA"],
        ["/uL", "mmol/L", "g/dL", "whatever", "mg/dL", None],
    )
    assert got[0] == 1e-3 and got[2] == 10.0 and got[3] == 1.0 and got[4] == 17.104
    assert math.isnan(got[1]) and math.isnan(got[5])
    with pytest.raises(ValueError, match="differ in length"):
        units.pair_factors(["PLT"], [])


def test_improbable_ranges_lie_inside_the_possible_ones() -> None:
    assert set(units.IMPROBABLE) == set(units.ANALYTES)
    for alias, (low, high) in units.IMPROBABLE.items():
        assert 0.0 <= low < high < units.ANALYTES[alias].limit
