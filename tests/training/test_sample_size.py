"""Riley et al. (2020) minimum sample size, against the paper's worked numbers."""

import math

import numpy as np
import pytest

from training.sample_size import (
    assess_sample_size,
    max_r2_cs,
    r2_cs_from_auroc,
    riley_sample_size,
)


def test_max_r2_cs_by_hand() -> None:
    # phi = 0.5: L0 = 0.5^0.5 * 0.5^0.5 = 0.5, max R2 = 1 - 0.25
    assert max_r2_cs(0.5) == pytest.approx(0.75)


def test_riley_criteria_for_the_papers_example() -> None:
    # 24 predictor parameters, prevalence 0.174, anticipated Cox-Snell R2 0.288 (pmsampsize
    # example): shrinkage 24 / (-0.1 ln(1 - 0.288/0.9)) = 622.3 -> 623; optimism -> 662;
    # overall risk (1.96/0.05)^2 * 0.174 * 0.826 = 220.9 -> 221.
    out = riley_sample_size(24, 0.174, 0.288)
    assert out["criteria"]["shrinkage"] == 623
    assert out["criteria"]["optimism"] == 662
    assert out["criteria"]["overall_risk"] == 221
    mape = math.exp(
        (-0.508 + 0.259 * math.log(0.174) + 0.504 * math.log(24) - math.log(0.05)) / 0.544
    )
    # van Smeden MAPE: exp((-0.508 - 0.4529 + 1.6017 + 2.9957) / 0.544) = 800.5 -> 801
    assert out["criteria"]["mape"] == math.ceil(mape) == 801
    assert out["minimum_n"] == 801
    assert out["limiting_criterion"] == "mape"


def test_r2_from_auroc_grows_with_discrimination() -> None:
    low = r2_cs_from_auroc(0.65, 0.3, n=100_000)
    high = r2_cs_from_auroc(0.85, 0.3, n=100_000)
    assert 0 < low < high < max_r2_cs(0.3)


def test_small_cohort_is_warned() -> None:
    y = np.array([1] * 60 + [0] * 20)
    out = assess_sample_size(y, np.arange(80), n_predictors=40, anticipated_auroc=0.75)
    assert out["events"] == 60 and out["events_per_predictor"] == pytest.approx(1.5)
    assert out["riley"]["minimum_n"] > 80
    assert any("below Riley's minimum" in w for w in out["warnings"])


def test_bad_prevalence_is_refused() -> None:
    with pytest.raises(ValueError, match="prevalence"):
        riley_sample_size(10, 1.0, 0.1)
