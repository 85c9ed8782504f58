"""Feature families on the shared small cohort, with values computed by hand from conftest.py."""

import pickle

import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone

from data.cohort import cohort_from_tables, load_cohort
from features.pipeline import FeatureConfig, FeaturePipeline, build_features
from features.registry import spec_of


@pytest.fixture
def cohort(cohort_dir):
    return load_cohort(cohort_dir)


@pytest.fixture
def raw(cohort):
    return build_features(cohort).set_index("episode_id")


def test_one_row_per_episode_with_episode_id_first(cohort):
    frame = build_features(cohort)
    assert frame.columns[0] == "episode_id"
    assert sorted(frame["episode_id"]) == ["E-1", "E-2", "E-3", "E-4", "E-5"]


def test_labs_last_value_and_age_in_canonical_units(raw):
    e1 = raw.loc["E-1"]
    # 42000 /uL on 03-09 08:00 is the last PLT before the index date 03-10 (x1e-3).
    assert e1["plt_last"] == 42.0
    assert e1["plt_days_since"] == 1.0
    assert e1["hgb_last"] == pytest.approx(105.0)  # 10.5 g/dL
    assert e1["crea_last"] == pytest.approx(0.8 * 88.42)
    assert e1["alb_last"] == 38.0
    assert np.isnan(e1["wbc_last"]) and np.isnan(e1["wbc_days_since"])
    # E-2: measurements on the index date itself count (the whole index day is included).
    e2 = raw.loc["E-2"]
    assert e2["plt_last"] == 30.0 and e2["plt_days_since"] == 0.0
    assert e2["alt_last"] == 35.0  # LOINC 1742-6
    assert e2["tbil_last"] == pytest.approx(17.104)  # 1.0 mg/dL
    e3 = raw.loc["E-3"]
    assert (e3["wbc_last"], e3["anc_last"], e3["anc_days_since"]) == (3.1, 1.6, 3.0)
    # The second episode of P-a1 sees the first episode's labs, 176 days old.
    e5 = raw.loc["E-5"]
    assert e5["plt_last"] == 55.0 and e5["plt_days_since"] == 2.0
    assert e5["hgb_days_since"] == 176.0


def test_platelet_history(raw):
    e1 = raw.loc["E-1"]
    # 14 days before 03-10: 90 on 03-01 (x=-9 d) and 42 on 03-09 08:00 (x=-2/3 d).
    assert e1["plt_min_14d"] == 42.0
    assert e1["plt_slope_14d"] == pytest.approx((42 - 90) / (9 - 2 / 3))
    # 28 days: also 180 on 02-18 (x=-21 d).
    x = np.array([-21.0, -9.0, -2 / 3])
    y = np.array([180.0, 90.0, 42.0])
    assert e1["plt_slope_28d"] == pytest.approx(np.polyfit(x, y, 1)[0])
    assert e1["plt_min_28d"] == 42.0
    assert e1["plt_n_28d"] == 3.0
    # Current regimen T-DM1 started 02-20: nadir since then 42, pre-cycle PLT 180 (02-18).
    assert e1["plt_nadir_cycle"] == 42.0
    assert e1["plt_pre_cycle"] == 180.0
    e5 = raw.loc["E-5"]
    assert e5["plt_slope_14d"] == pytest.approx((55 - 120) / 10)
    assert e5["plt_n_28d"] == 2.0
    # T-DXd started 08-10: nothing between 08-10 and 08-20 except 120 and 55; pre-cycle is the
    # last PLT before 08-10, from the first episode (110 on 03-15).
    assert e5["plt_nadir_cycle"] == 55.0
    assert e5["plt_pre_cycle"] == 110.0
    e3 = raw.loc["E-3"]
    # One PLT in the window: no slope; no PLT before the current cycle (06-28).
    assert np.isnan(e3["plt_slope_14d"])
    assert e3["plt_n_28d"] == 1.0
    assert np.isnan(e3["plt_pre_cycle"])
    # P-d4: the only PLT before the index (01-10) is 10 days old and after the start (01-01).
    e4 = raw.loc["E-4"]
    assert (e4["plt_min_14d"], e4["plt_nadir_cycle"]) == (60.0, 60.0)


def test_regimen_history(raw):
    e1, e5 = raw.loc["E-1"], raw.loc["E-5"]
    assert (e1["n_lines"], e1["cycles_current_line"], e1["days_since_last_dose"]) == (2, 2, 19)
    assert (e5["n_lines"], e5["cycles_current_line"], e5["days_since_last_dose"]) == (3, 1, 22)
    # E-5 includes the history of E-1: taxane from THP, ADC from T-DM1 and T-DXd.
    for cls in ("taxane", "adc", "anti_her2"):
        assert e1[f"exposed_{cls}"] == 1.0 and e5[f"exposed_{cls}"] == 1.0
    assert e1["current_taxane"] == 0.0 and e1["current_adc"] == 1.0
    assert e1["exposed_gemcitabine"] == 0.0
    e3 = raw.loc["E-3"]
    assert e3["exposed_gemcitabine"] == e3["exposed_platinum"] == 1.0
    assert e3["current_gemcitabine"] == e3["current_platinum"] == 1.0
    assert (e3["n_lines"], e3["days_since_last_dose"]) == (2, 17)
    # P-d4 has no line recorded: one distinct regimen.
    e4 = raw.loc["E-4"]
    assert (e4["n_lines"], e4["cycles_current_line"], e4["current_antimetabolite"]) == (1, 1, 1)
    # Days between the last two starts: THP 2023-10-01 -> T-DM1 2024-02-20 is 142 days;
    # T-DM1 -> T-DXd 2024-08-10 is 172; GCb 2024-05-01 -> GP 2024-06-28 is 58; one start: none.
    assert (e1["cycle_interval_days"], e5["cycle_interval_days"]) == (142, 172)
    assert e3["cycle_interval_days"] == 58
    assert np.isnan(e4["cycle_interval_days"]) and np.isnan(raw.loc["E-2", "cycle_interval_days"])


def test_clinical_columns(raw):
    e1, e2, e3, e4 = (raw.loc[e] for e in ("E-1", "E-2", "E-3", "E-4"))
    assert e1["age_years"] == pytest.approx(
        (pd.Timestamp("2024-03-10") - pd.Timestamp("1973-05-02")).days / 365.25, abs=0.01
    )
    assert (e1["ecog"], e1["subtype"], e1["race_asian"], e1["dose_mg"]) == (1, "HER2+", 1, 7.5)
    assert (e2["prior_radiotherapy"], e2["liver_mets"], e2["race_asian"]) == (1, 1, 0)
    assert (e3["marrow_involvement"], e3["bone_mets"], e3["subtype"]) == (1, 1, "TNBC")
    assert np.isnan(e4["ecog"]) and np.isnan(e4["liver_mets"]) and np.isnan(e4["dose_mg"])


def test_a_time_of_day_on_the_index_is_an_inclusive_cutoff(cohort_tables):
    tables = {k: v.copy() for k, v in cohort_tables.items()}
    tables["episodes"].loc[0, "index_date"] = "2024-03-09T07:00:00"
    before = build_features(cohort_from_tables(tables)).set_index("episode_id").loc["E-1"]
    # The 08:00 PLT is after the index time: last is 90 on 03-01, eight days earlier.
    assert (before["plt_last"], before["plt_days_since"]) == (90.0, 8.0)
    assert np.isnan(before["hgb_last"])
    tables["episodes"].loc[0, "index_date"] = "2024-03-09T08:00:00"
    at = build_features(cohort_from_tables(tables)).set_index("episode_id").loc["E-1"]
    assert at["plt_last"] == 42.0 and at["plt_days_since"] == 0.0


def test_a_regimen_starting_on_the_index_day_does_not_leak_later_labs(cohort_tables):
    tables = {k: v.copy() for k, v in cohort_tables.items()}
    tables["episodes"].loc[0, "index_date"] = "2024-03-09T07:00:00"
    extra = pd.DataFrame(
        {"patient_id": ["P-a1"], "start_date": ["2024-03-09"], "drugs": ["gemcitabine"]}
    )
    tables["regimens"] = pd.concat([tables["regimens"], extra], ignore_index=True)
    e1 = build_features(cohort_from_tables(tables)).set_index("episode_id").loc["E-1"]
    assert e1["current_gemcitabine"] == 1.0 and e1["days_since_last_dose"] == 0.0
    # The 08:00 PLT (42) is on the start day but after the index time: not the pre-cycle PLT.
    assert e1["plt_pre_cycle"] == 90.0
    assert np.isnan(e1["plt_nadir_cycle"])


def test_extra_analytes_and_static_columns(cohort_tables):
    tables = {k: v.copy() for k, v in cohort_tables.items()}
    tables["patients"]["bmi"] = [22.5, None, 30.1, 19.0]
    tables["patients"]["smoker"] = ["yes", "no", "no", None]
    config = FeatureConfig(extra_analytes=("ferritin",), extra_static=("bmi", "smoker", "site"))
    cohort = cohort_from_tables(tables)
    pipeline = FeaturePipeline(config).fit(cohort)
    X = pipeline.transform(cohort)
    assert X.loc["E-2", "lab_ferritin_last"] == 450.0
    assert X.loc["E-2", "lab_ferritin_days_since"] == 0.0
    assert np.isnan(X.loc["E-1", "lab_ferritin_last"])
    assert X.loc["E-1", "static_bmi"] == 22.5 and np.isnan(X.loc["E-2", "static_bmi"])
    assert (X.loc["E-1", "static_smoker"], X.loc["E-2", "static_smoker"]) == (1.0, 0.0)
    assert np.isnan(X.loc["E-4", "static_smoker"])
    assert list(X.loc["E-3", ["static_site=north", "static_site=south"]]) == [0.0, 1.0]
    assert pipeline.group_of("lab_ferritin_last") == "extra"


def test_fit_transform_with_raw_computes_once_and_equals_the_separate_calls(
    cohort_tables, monkeypatch
):
    from features import pipeline as module

    tables = {k: v.copy() for k, v in cohort_tables.items()}
    tables["patients"]["smoker"] = ["yes", "no", "no", None]
    config = FeatureConfig(extra_analytes=("ferritin",), extra_static=("smoker",))
    cohort = cohort_from_tables(tables)
    separate = FeaturePipeline(config).fit(cohort)
    expected_X = separate.transform(cohort)
    expected_raw = build_features(cohort, config)
    calls = []
    real = module.compute_features
    monkeypatch.setattr(
        module, "compute_features", lambda *a, **k: calls.append(1) or real(*a, **k)
    )
    once = FeaturePipeline(config)
    X, raw = once.fit_transform_with_raw(cohort)
    assert len(calls) == 1
    pd.testing.assert_frame_equal(X, expected_X)
    pd.testing.assert_frame_equal(raw, expected_raw)
    assert once.feature_names_ == separate.feature_names_
    assert once.static_kinds_ == separate.static_kinds_
    pd.testing.assert_frame_equal(once.transform(cohort), expected_X)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"families": ("labs", "vibes")}, "unknown"),
        ({"extra_analytes": ("777-3",)}, "standard analyte PLT"),
        ({"extra_static": ("ecog",)}, "standard column"),
        ({"extra_static": "bmi"}, "list of names"),
        ({"extra_analytes": ("X", "X")}, "more than once"),
    ],
)
def test_config_rejects_bad_settings_clearly(kwargs, message):
    with pytest.raises((ValueError, TypeError), match=message):
        FeatureConfig(**kwargs)


def test_unknown_extra_static_column_is_named(cohort):
    with pytest.raises(ValueError, match="'weight' is in neither"):
        build_features(cohort, FeatureConfig(extra_static=("weight",)))


def test_families_can_be_chosen(cohort):
    frame = build_features(cohort, FeatureConfig(families=("regimen_history",)))
    assert "n_lines" in frame and "plt_last" not in frame and "ecog" not in frame


def test_transform_is_numeric_indexed_by_episode_and_every_column_is_declared(cohort):
    pipeline = FeaturePipeline().fit(cohort)
    X = pipeline.transform(cohort)
    assert X.index.name == "episode_id"
    assert list(X.columns) == pipeline.feature_names_
    assert all(dtype == np.float64 for dtype in X.dtypes)
    for name in X.columns:
        assert spec_of(name).group == pipeline.group_of(name)
    assert list(X.loc["E-3", ["subtype=HER2+", "subtype=HR+/HER2-", "subtype=TNBC"]]) == [0, 0, 1]
    assert X.attrs["warnings"] == []


def test_unseen_category_is_all_zeros_and_reported(cohort_tables):
    fit_tables = {k: v.copy() for k, v in cohort_tables.items()}
    fit_tables["patients"].loc[2, "subtype"] = "HER2+"  # no TNBC at fit time
    pipeline = FeaturePipeline().fit(cohort_from_tables(fit_tables))
    assert pipeline.categories_["subtype"] == ["HER2+", "HR+/HER2-"]
    X, warnings = pipeline.transform_with_warnings(cohort_from_tables(cohort_tables))
    assert list(X.loc["E-3", ["subtype=HER2+", "subtype=HR+/HER2-"]]) == [0.0, 0.0]
    assert len(warnings) == 1 and "E-3" in warnings[0] and "'TNBC'" in warnings[0]


def test_missing_category_stays_nan(cohort_tables):
    tables = {k: v.copy() for k, v in cohort_tables.items()}
    tables["patients"].loc[3, "subtype"] = None
    cohort = cohort_from_tables(tables)
    X = FeaturePipeline().fit(cohort).transform(cohort)
    assert X.loc["E-4", ["subtype=HER2+", "subtype=HR+/HER2-", "subtype=TNBC"]].isna().all()


def test_estimator_contract_and_pickle(cohort):
    pipeline = FeaturePipeline(FeatureConfig(extra_analytes=("FERRITIN",)))
    assert pipeline.get_params() == {"config": FeatureConfig(extra_analytes=("FERRITIN",))}
    assert not hasattr(clone(pipeline), "feature_names_")
    assert pipeline.fit(cohort) is pipeline
    restored = pickle.loads(pickle.dumps(pipeline))
    pd.testing.assert_frame_equal(restored.transform(cohort), pipeline.transform(cohort))


def test_transform_before_fit_is_a_clear_error(cohort):
    from sklearn.exceptions import NotFittedError

    with pytest.raises(NotFittedError, match="not fitted"):
        FeaturePipeline().transform(cohort)


def test_each_patient_alone_equals_its_rows_in_the_cohort(cohort_tables):
    config = FeatureConfig(extra_analytes=("FERRITIN",))
    cohort = cohort_from_tables(cohort_tables)
    pipeline = FeaturePipeline(config).fit(cohort)
    together = pipeline.transform(cohort)
    for patient in cohort_tables["patients"]["patient_id"]:
        alone_tables = {
            name: frame[frame["patient_id"] == patient].reset_index(drop=True)
            for name, frame in cohort_tables.items()
        }
        alone = pipeline.transform(cohort_from_tables(alone_tables))
        pd.testing.assert_frame_equal(alone, together.loc[alone.index], check_exact=True)


def test_names_are_valid_for_xgboost(cohort_tables):
    xgboost = pytest.importorskip("xgboost")
    tables = {k: v.copy() for k, v in cohort_tables.items()}
    tables["patients"]["stage, clinical"] = ["IV [a]", "IV <b>", "III", "IV [a]"]
    cohort = cohort_from_tables(tables)
    pipeline = FeaturePipeline(FeatureConfig(extra_static=("stage, clinical",))).fit(cohort)
    X = pipeline.transform(cohort)
    assert not any(c in name for name in X.columns for c in "[]<,")
    model = xgboost.XGBClassifier(n_estimators=3, max_depth=2, n_jobs=1)
    model.fit(X, np.array([1, 0, 1, 0, 1]))
    assert list(model.get_booster().feature_names) == list(X.columns)
    assert model.predict_proba(X).shape == (5, 2)


def test_batched_last_values_equal_the_one_analyte_search(cohort):
    from features.labs import LAB_ANALYTES, analyte_series, lab_features, last_values, read_labs
    from features.timeline import build_timeline, episode_frame

    ids, pids, index_ns = episode_frame(cohort.episodes)
    records = read_labs(cohort.labs)
    timeline = build_timeline(ids, pids, index_ns, [records.seconds], lookback_days=28)
    series = analyte_series(records, timeline, list(LAB_ANALYTES))
    batched = lab_features(series, timeline)
    for alias, (prefix, _, _) in LAB_ANALYTES.items():
        value, days = last_values(series[alias], timeline)
        np.testing.assert_array_equal(batched[f"{prefix}_last"], value)
        np.testing.assert_array_equal(batched[f"{prefix}_days_since"], days)


def test_recent_platelet_trend(raw):
    e1 = raw.loc["E-1"]
    # 90 on 03-01 (midnight), then 42 on 03-09 08:00: 8 1/3 days apart.
    assert e1["plt_change_last"] == pytest.approx((42 - 90) / (8 + 8 / 24))
    # 7 days before 03-10 (from 03-03): only the 42, so no slope.
    assert np.isnan(e1["plt_slope_7d"])
    # E-2: 150 on 05-20, 30 on the index date 06-01 (included): -120 over 12 days.
    assert raw.loc["E-2", "plt_change_last"] == pytest.approx(-10.0)
    # E-5: 120 on 08-20, 55 on 08-30; the later 80 (09-05) is after the index date.
    assert raw.loc["E-5", "plt_change_last"] == pytest.approx(-6.5)
    # E-3 and E-4 have one PLT before the index: no change.
    assert np.isnan(raw.loc["E-3", "plt_change_last"])
    assert np.isnan(raw.loc["E-4", "plt_change_last"])


def test_recent_trend_windows_and_the_index_time(cohort_tables):
    tables = {k: v.copy() for k, v in cohort_tables.items()}
    extra = pd.DataFrame(
        [
            # P-c3 (index 07-15): a fortnight of counts before the index
            ("P-c3", "2024-06-25", "PLT", 90, "10*9/L"),
            ("P-c3", "2024-07-09", "PLT", 35, "10*9/L"),
            ("P-c3", "2024-06-25", "751-8", 0.9, "10*3/uL"),
            ("P-c3", "2024-07-05", "751-8", 1.2, "10*3/uL"),
            ("P-c3", "2024-07-09", "751-8", 2.0, "10*3/uL"),
            # P-d4 (index 01-20): a count 40 days before the index, outside 28 days
            ("P-d4", "2024-12-11", "PLT", 150, "10*9/L"),
        ],
        columns=["patient_id", "time", "test", "value", "unit"],
    )
    tables["labs"] = pd.concat([tables["labs"], extra], ignore_index=True)
    raw = build_features(cohort_from_tables(tables)).set_index("episode_id")
    e3 = raw.loc["E-3"]
    # PLT 35 (07-09, x=-6 d) then 20 (07-12, x=-3 d): both within 7 days and adjacent.
    assert e3["plt_slope_7d"] == pytest.approx((20 - 35) / 3)
    assert e3["plt_change_last"] == pytest.approx((20 - 35) / 3)
    # ANC 0.9 (06-25) is 20 days old; within 14 days 1.2, 2.0 and 1.6 (07-12).
    assert e3["anc_min_14d"] == 1.2
    # Within 7 days (from 07-08): 2.0 at x=-6 and 1.6 at x=-3.
    assert e3["anc_slope_7d"] == pytest.approx((1.6 - 2.0) / 3)
    # P-d4: the 150 is 40 days before the index (outside 28 days): no previous count.
    assert np.isnan(raw.loc["E-4", "plt_change_last"])
    assert np.isnan(raw.loc["E-4", "anc_min_14d"])
    assert np.isnan(raw.loc["E-1", "anc_slope_7d"])
    # An index time before the 08:00 count of 03-09 leaves 180 (02-18) and 90 (03-01).
    tables["episodes"].loc[0, "index_date"] = "2024-03-09T07:00:00"
    e1 = build_features(cohort_from_tables(tables)).set_index("episode_id").loc["E-1"]
    assert e1["plt_change_last"] == pytest.approx((90 - 180) / 12)


def test_feature_warnings_name_their_episode_without_parsing(cohort_tables):
    import pickle

    from features.notes import FeatureWarning

    tables = {k: v.copy() for k, v in cohort_tables.items()}
    tables["patients"]["smoker"] = ["yes", "no", "no", None]
    config = FeatureConfig(extra_static=("smoker",))
    pipeline = FeaturePipeline(config).fit(cohort_from_tables(tables))
    tables["patients"]["smoker"] = ["yes", "maybe", "no", None]  # P-b2: E-2
    X, warnings = pipeline.transform_with_warnings(cohort_from_tables(tables))
    (warning,) = warnings
    assert isinstance(warning, FeatureWarning)
    assert (warning.episode_id, warning.text) == (
        "E-2",
        "smoker='maybe' is not boolean; encoded as missing",
    )
    assert warning == "episode E-2: smoker='maybe' is not boolean; encoded as missing"
    assert pickle.loads(pickle.dumps(warning)).episode_id == "E-2"
    assert np.isnan(X.loc["E-2", "static_smoker"])


def test_the_loaders_arrays_and_the_frames_give_the_same_features(tmp_path) -> None:
    """A loaded cohort's features come from its numpy columns; the same tables given as frames
    (a `CohortLike`, or frames a caller has asked for) give bit-identical features."""
    from types import SimpleNamespace

    from data.simulator import SimulationConfig, simulate_cohort

    simulate_cohort(SimulationConfig(n_patients=150, seed=4, workers=1), tmp_path)
    config = FeatureConfig(families=(*FeatureConfig().families, "prior_episode"))
    cohort = load_cohort(tmp_path)
    from_arrays = build_features(cohort, config)
    assert not cohort.table("labs").has_frame
    names = ("patients", "episodes", "labs", "regimens")
    frames = SimpleNamespace(**{name: getattr(cohort, name) for name in names})
    from_frames = build_features(frames, config)
    pd.testing.assert_frame_equal(from_arrays, from_frames, check_exact=True)
    assert build_features(cohort, config).equals(from_arrays)  # now read through its frames
