"""The declared feature registry: complete, consistent, with the literature's directions."""

import pytest

from data.drugs import DRUG_CLASSES
from features.registry import GROUPS, REGISTRY, FeatureSpec, family_names, spec_of


def test_directions_follow_the_literature():
    expected = {
        "plt_last": 1,
        "marrow_involvement": -1,
        "prior_radiotherapy": -1,
        "n_lines": -1,
        "exposed_gemcitabine": -1,
        "exposed_platinum": -1,
        "ecog": -1,
    }
    for name, direction in expected.items():
        assert spec_of(name).direction == direction, name
    assert spec_of("hgb_last").direction is None
    assert spec_of("exposed_taxane").direction is None


def test_every_class_has_exposure_and_current_columns():
    for cls in DRUG_CLASSES:
        assert spec_of(f"exposed_{cls}").group == "regimen_history"
        assert spec_of(f"current_{cls}").unit == "0/1"


def test_patterns_resolve_to_the_concrete_name():
    spec = spec_of("subtype=TNBC")
    assert (spec.name, spec.group, spec.unit) == ("subtype=TNBC", "clinical", "0/1")
    assert spec_of("lab_FERRITIN_last").group == "extra"
    assert spec_of("lab_2276-4_days_since").unit == "days"
    assert spec_of("static_site=north").group == "extra"


def test_undeclared_name_is_a_clear_error():
    with pytest.raises(KeyError, match="'plt_mean' is not declared"):
        spec_of("plt_mean")


def test_every_spec_is_complete():
    for spec in REGISTRY.values():
        assert spec.unit and spec.description and spec.group in GROUPS
    assert family_names("labs")[:2] == ["plt_last", "plt_days_since"]


def test_spec_validation():
    with pytest.raises(ValueError, match="unknown group"):
        FeatureSpec("x", "u", "d", "vibes")
    with pytest.raises(ValueError, match="direction"):
        FeatureSpec("x", "u", "d", "labs", 2)
