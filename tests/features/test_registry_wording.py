"""The plain clinical wording of the features: one owner (`features.registry`) for the answers,
the clinician page and the reviewer report."""

from __future__ import annotations

import math

import pytest

from features.registry import (
    REGISTRY,
    days_text,
    feature_label,
    feature_words,
    field_of,
    field_words,
    lower_first,
    number_text,
    outcome_words,
    unit_text,
    value_words,
)

NAN = math.nan


def test_flags_and_counts_read_as_short_clauses() -> None:
    assert value_words("current_gemcitabine", 1.0) == "current regimen includes gemcitabine"
    assert value_words("exposed_anti_her2", 0.0) == "never received anti-HER2 therapy"
    assert value_words("subtype=HER2+", 0.0) == "subtype not HER2+"
    assert value_words("liver_mets", 0.0) == "no liver metastases"
    assert value_words("race_asian", 1.0) == "Asian ancestry"
    assert [number_text(v) for v in (32.0, 2.414, 39.56, 140.4)] == ["32", "2.41", "39.6", "140"]
    assert [days_text(d) for d in (0, 1, 2, 12)] == [
        "on the index date",
        "one day before the index date",
        "two days before the index date",
        "12 days before the index date",
    ]


def test_values_carry_one_unit_spelling_and_missing_labs_read_not_measured() -> None:
    assert (
        value_words("plt_last", 32.0, 2.0)
        == "platelet count 32 ×10⁹/L two days before the index date"
    )
    assert value_words("alb_last", 31.5) == "albumin 31.5 g/L"
    assert value_words("tbil_last", 14.0) == "total bilirubin 14 µmol/L"
    assert value_words("plt_last", NAN) == "platelet count: not measured"
    slope = value_words("plt_slope_7d", NAN)
    assert slope.startswith("platelet trend over the 7 days before the index date: not measured")
    assert "least-squares" not in slope
    assert value_words("ecog", NAN) == "ECOG performance status: not recorded"
    assert value_words("subtype=TNBC", NAN) == "subtype: not recorded"
    assert unit_text("10*9/L") == "×10⁹/L" and unit_text("0/1") == ""


@pytest.mark.parametrize("name", [n for n, s in REGISTRY.items() if not s.is_pattern])
def test_every_declared_feature_has_a_short_clinical_label(name: str) -> None:
    label = feature_label(name)
    assert label and label[0].isupper()
    assert "_" not in label and "least-squares" not in label
    assert len(label) <= 56, label  # fits a chart row without cutting
    words = feature_words(name)
    assert words["label"] == label and "x10^9" not in words["unit_text"]


def test_data_dependent_features_are_named_from_their_parts() -> None:
    assert feature_label("subtype=TNBC") == "Subtype: TNBC"
    assert feature_label("static_site=A") == "Site: A"
    assert value_words("static_site=A", 1.0) == "site A"
    assert feature_label("lab_FER_last") == "FER (last result)"


def test_outcomes_in_words() -> None:
    assert outcome_words("plt100_or_rise50_d14") == (
        "platelets reach 100 ×10⁹/L, or rise by at least 50 ×10⁹/L above the baseline count, "
        "on any day within 14 days of the first hetrombopag dose"
    )
    assert outcome_words("plt75_d14") == (
        "platelets reach 75 ×10⁹/L on any day within 14 days of the first hetrombopag dose"
    )
    assert outcome_words("custom:rise=30,horizon=7").startswith("rise by at least 30")
    assert outcome_words("no-such-definition") == "no-such-definition"


def test_request_fields_read_as_their_features_labels() -> None:
    assert field_of("subtype=TNBC") == "subtype" and field_of("race_asian") == "race"
    assert field_of("ecog") == "ecog"
    assert field_words("ecog") == "ECOG performance status"
    assert field_words("subtype") == "breast-cancer subtype"
    assert field_words("marrow_involvement") == lower_first(feature_label("marrow_involvement"))
    assert field_words("age_years") == "age (age_years or birth_date)"
    assert field_words("race") == "race"
