"""Table 1, comparators, subgroups, decision curve and plots on small hand-made inputs."""

import numpy as np
import pandas as pd
import pytest

from data.cohort import load_cohort
from data.labels import derive_labels
from training import comparators, evaluation, plots
from training.config import EvaluationConfig
from training.tables import table_one


def test_table_one_by_hand() -> None:
    raw = pd.DataFrame(
        {
            "episode_id": ["a", "b", "c", "d"],
            "plt_last": [10.0, 20.0, 30.0, np.nan],
            "subtype": ["TNBC", "HER2+", "TNBC", None],
            "bone_mets": [1.0, 0.0, 1.0, 1.0],
        }
    )
    y = pd.Series([1, 0, 1, 0], index=["a", "b", "c", "d"])
    table = table_one(raw, y).set_index(["variable", "level"])
    assert table.loc[("episodes", ""), "overall"] == "4"
    plt = table.loc[("Platelet count (×10⁹/L)", "median [IQR]")]
    assert plt["overall"] == "20 [15, 25]"
    assert plt["responders"] == "20 [15, 25]"
    assert plt["non_responders"] == "20 [20, 20]"
    assert plt["missing"] == "1 (25.0%)"
    tnbc = table.loc[("Breast-cancer subtype", "TNBC")]
    assert tnbc["overall"] == "2 (50.0%)" and tnbc["responders"] == "2 (100.0%)"
    assert tnbc["non_responders"] == "0 (0.0%)" and tnbc["missing"] == "1 (25.0%)"
    # A yes/no variable is one row: how many have it.
    bone = table.loc["Bone metastases"]
    assert list(bone.index) == ["yes"]
    assert (
        bone.loc["yes", "overall"] == "3 (75.0%)" and bone.loc["yes", "responders"] == "2 (100.0%)"
    )
    assert bone.loc["yes", "non_responders"] == "1 (50.0%)"


def test_comparators_predict_probabilities_and_plt_is_required(data) -> None:
    X, y, _ = data
    p = comparators.fit_predict("logreg", X, y.to_numpy(), X)
    assert p.shape == (len(X),) and ((p > 0) & (p < 1)).all()
    p_plt = comparators.fit_predict("plt_baseline", X, y.to_numpy(), X)
    # One predictor with a positive effect: the ranking is the ranking of plt_last.
    order = np.argsort(X["plt_last"].to_numpy())
    assert (np.diff(p_plt[order]) >= -1e-12).all()
    with pytest.raises(comparators.ComparatorError, match="plt_last"):
        comparators.make_plt_baseline(["hgb_last"])


@pytest.mark.parametrize(
    ("classes", "expected"),
    [
        ("gemcitabine;platinum", "gemcitabine/platinum"),
        ("adc;anti_her2", "adc"),
        ("anti_her2;taxane", "anthracycline/taxane"),
        ("cdk46;endocrine", "targeted/endocrine"),
        ("antimetabolite", "other chemotherapy"),
        (None, "none recorded"),
    ],
)
def test_regimen_class(classes, expected) -> None:
    assert evaluation.regimen_class(classes) == expected


def test_subgroup_frame_on_the_shared_cohort(cohort_dir) -> None:
    cohort = load_cohort(cohort_dir)
    labels = derive_labels(cohort, "plt100_or_rise50_d14")
    frame = evaluation.subgroup_frame(cohort, labels)
    assert set(frame.columns) >= {"subtype", "baseline_plt", "regimen_class", "age_band", "site"}
    # E-1: baseline 42 (from 42000 /uL) on T-DM1 (adc); E-4 has no baseline PLT.
    assert frame.loc["E-1", "baseline_plt"] == "<50"
    assert frame.loc["E-1", "regimen_class"] == "adc"
    assert frame.loc["E-4", "baseline_plt"] == "missing"
    assert frame.loc["E-3", "regimen_class"] == "gemcitabine/platinum"


def _oof(n: int = 200, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    p = np.clip(0.3 * y + 0.7 * rng.random(n), 0.01, 0.99)
    return pd.DataFrame(
        {
            "episode_id": [f"E{i}" for i in range(n)],
            "patient_id": [f"P{i // 2}" for i in range(n)],
            "y": y,
            "repeat": 0,
            "fold": np.arange(n) % 3,
            "p_xgb_raw": p,
            "p_xgb": p,
            "p_logreg": p**2,
            "p_plt": np.full(n, y.mean()),
        }
    )


def test_decision_curve_includes_treat_all_and_none() -> None:
    oof = _oof()
    config = EvaluationConfig(decision_thresholds=(0.1, 0.5, 0.2))
    curve = evaluation.decision_curve(oof, config)
    assert set(curve["model"]) == {"xgboost", "logreg", "plt_baseline", "treat_all", "treat_none"}
    assert curve["threshold"].unique().tolist() == [0.1, 0.3, 0.5]
    prevalence = oof["y"].mean()
    treat_all = curve[curve["model"] == "treat_all"].set_index("threshold")["net_benefit"]
    assert treat_all[0.3] == pytest.approx(prevalence - (1 - prevalence) * 0.3 / 0.7)
    assert (curve[curve["model"] == "treat_none"]["net_benefit"] == 0).all()


def test_subgroup_metrics_report_small_groups_without_estimates() -> None:
    oof = _oof()
    members = pd.DataFrame(
        {"site": ["north"] * 195 + ["tiny"] * 5}, index=[f"E{i}" for i in range(200)]
    )
    table = evaluation.subgroup_metrics(oof, members, EvaluationConfig(n_bootstrap_subgroup=50))
    north = table[(table["model"] == "xgboost") & (table["level"] == "north")].iloc[0]
    tiny = table[(table["model"] == "xgboost") & (table["level"] == "tiny")].iloc[0]
    assert north["n"] == 195 and north["auroc_low"] < north["auroc"] < north["auroc_high"]
    assert tiny["n"] == 5 and np.isnan(tiny["auroc"])


def test_plots_write_pngs(tmp_path) -> None:
    oof = _oof()
    metrics = evaluation.overall_metrics(oof, EvaluationConfig(n_bootstrap=50))
    curve = evaluation.decision_curve(oof, EvaluationConfig())
    paths = [
        plots.roc_figure(oof, metrics, path=tmp_path / "roc.png"),
        plots.calibration_figure(oof, metrics, path=tmp_path / "cal.png"),
        plots.decision_curve_figure(curve, path=tmp_path / "dca.png"),
    ]
    rng = np.random.default_rng(0)
    X = pd.DataFrame(rng.normal(size=(30, 3)), columns=["a", "b", "c"])
    explanation = plots.contributions_explanation(rng.normal(size=(30, 4)), X)
    paths.append(plots.beeswarm_figure(explanation, 3, path=tmp_path / "shap.png"))
    for path in paths:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # without a path the same figure is a data URI (the reviewer report's inline images)
    assert plots.roc_figure(oof, metrics).startswith("data:image/png;base64,")


def test_calibration_bins_by_hand() -> None:
    y = np.array([0, 0, 1, 1, 1, 1])
    p = np.array([0.1, 0.1, 0.2, 0.8, 0.9, 0.9])
    table = plots.calibration_bins(y, p, n_bins=2)
    assert table["n"].tolist() == [3, 3]
    assert table["observed"].tolist() == pytest.approx([1 / 3, 1.0])
    assert table["predicted"].tolist() == pytest.approx([0.4 / 3, 2.6 / 3])
