"""Response labels: every definition at its boundaries, given outcomes, attrition (by hand)."""

import numpy as np
import pandas as pd
import pytest

from data.cohort import cohort_from_tables
from data.labels import (
    NAMED_DEFINITIONS,
    NO_BASELINE,
    NO_OUTCOME,
    LabelDefinition,
    attrition,
    custom_definition,
    derive_labels,
    follow_up_ended_reason,
    get_definition,
    no_followup_reason,
    unconfirmed_reason,
)

NO_FOLLOWUP = no_followup_reason(14)


def _cohort(
    episodes: list[tuple[str, str]],
    plt: list[tuple[str, str, float]],
    outcomes=None,
    transfusions=None,
):
    """One patient; `episodes` (episode_id, index_date); `plt` (patient, time, value);
    `transfusions` (time, product)."""
    tables = {
        "patients": [{"patient_id": p} for p in sorted({"P1", *(row[0] for row in plt)})],
        "episodes": [{"episode_id": e, "patient_id": "P1", "index_date": d} for e, d in episodes],
        "labs": [
            {"patient_id": p, "time": t, "test": "PLT", "value": v, "unit": "10*9/L"}
            for p, t, v in plt
        ],
    }
    if outcomes is not None:
        tables["outcomes"] = [{"episode_id": e, "response": r} for e, r in outcomes]
    if transfusions is not None:
        tables["transfusions"] = [
            {"patient_id": "P1", "time": t, "product": p, "units": 1} for t, p in transfusions
        ]
    return cohort_from_tables(tables)


def _one(
    plt: list[tuple[str, float]],
    definition="plt100_or_rise50_d14",
    index="2024-06-01",
    transfusions=None,
):
    cohort = _cohort([("E1", index)], [("P1", t, v) for t, v in plt], transfusions=transfusions)
    return derive_labels(cohort, definition).iloc[0]


def _label(row) -> object:
    return None if pd.isna(row["label"]) else int(row["label"])


def test_output_columns_and_types(cohort_tables) -> None:
    labels = derive_labels(cohort_from_tables(cohort_tables), "plt100_or_rise50_d14")
    assert list(labels.columns) == [
        "episode_id",
        "label",
        "baseline_plt",
        "days_to_response",
        "exclusion",
    ]
    assert str(labels["label"].dtype) == "Int64"
    assert labels["baseline_plt"].dtype == float
    assert labels["days_to_response"].dtype == float


# The shared fixture, by hand (see tests/conftest.py):
# E-1 P-a1 index 03-10: baseline 03-09 42000/uL = 42; day 2 PLT 70, day 5 PLT 110.
# E-2 P-b2 index 06-01: baseline on the index date 30; day 7 PLT 80 (rise exactly +50).
# E-3 P-c3 index 07-15: baseline 07-12 (exactly 3 days before) 20; day 5 PLT 60; day 15 is out:
#     no response and no PLT on or after day 10: not evaluable (follow-up ended day 5).
# E-4 P-d4 index 2025-01-20: last PLT 10 days before: no baseline.
# E-5 P-a1 index 09-01: baseline 08-30 55; day 4 PLT 80, day 11 PLT 104.
# Under plt100_d14, E-2 (last PLT day 7, 80) has not responded: follow-up ended day 7.
ENDED_5, ENDED_7 = follow_up_ended_reason(5), follow_up_ended_reason(7)
FIXTURE_EXPECTED = {
    "plt100_or_rise50_d14": {"E-1": (1, 5), "E-2": (1, 7), "E-3": ENDED_5, "E-5": (1, 11)},
    "plt75_d14": {"E-1": (1, 5), "E-2": (1, 7), "E-3": ENDED_5, "E-5": (1, 4)},
    "plt100_d14": {"E-1": (1, 5), "E-2": ENDED_7, "E-3": ENDED_5, "E-5": (1, 11)},
}


@pytest.mark.parametrize("name", list(FIXTURE_EXPECTED))
def test_fixture_labels_by_hand(cohort_tables, name: str) -> None:
    labels = derive_labels(cohort_from_tables(cohort_tables), name).set_index("episode_id")
    assert labels["baseline_plt"].to_dict() == pytest.approx(
        {"E-1": 42.0, "E-2": 30.0, "E-3": 20.0, "E-4": np.nan, "E-5": 55.0}, nan_ok=True
    )
    assert pd.isna(labels.loc["E-4", "label"])
    assert labels.loc["E-4", "exclusion"] == NO_BASELINE
    for episode, expected in FIXTURE_EXPECTED[name].items():
        row = labels.loc[episode]
        if isinstance(expected, str):
            assert pd.isna(row["label"]), episode
            assert row["exclusion"] == expected
            continue
        label, day = expected
        assert int(row["label"]) == label, episode
        assert row["exclusion"] == ""
        if day is None:
            assert np.isnan(row["days_to_response"])
        else:
            assert row["days_to_response"] == day


def test_fixture_attrition_by_hand(cohort_tables) -> None:
    cohort = cohort_from_tables(cohort_tables)
    assert attrition(derive_labels(cohort, "plt100_or_rise50_d14")) == {
        "episodes_in": 5,
        "excluded_by_reason": {NO_BASELINE: 1, ENDED_5: 1},
        "labelled": 3,
        "responders": 3,
        "response_rate": 1.0,
    }
    assert attrition(derive_labels(cohort, "plt100_d14"))["excluded_by_reason"] == {
        NO_BASELINE: 1,
        ENDED_5: 1,
        ENDED_7: 1,
    }


def test_threshold_exactly_100_responds_and_99_9_does_not() -> None:
    row = _one([("2024-05-31", 60.0), ("2024-06-04", 100.0)], "plt100_d14")
    assert (_label(row), row["days_to_response"]) == (1, 3)
    late = ("2024-06-11", 70.0)  # day 10: the episode stays evaluable
    row = _one([("2024-05-31", 60.0), ("2024-06-04", 99.9), late], "plt100_d14")
    assert _label(row) == 0
    row = _one([("2024-05-31", 60.0), ("2024-06-04", 99.9), late], "plt100_or_rise50_d14")
    assert _label(row) == 0  # rise 39.9 < 50


def test_rise_of_exactly_50_responds_and_49_9_does_not() -> None:
    row = _one([("2024-06-01", 30.0), ("2024-06-08", 80.0)])
    assert (_label(row), row["days_to_response"]) == (1, 7)
    row = _one([("2024-06-01", 30.0), ("2024-06-08", 79.9), ("2024-06-11", 60.0)])
    assert _label(row) == 0


def test_plt75_boundary() -> None:
    assert _label(_one([("2024-06-01", 30.0), ("2024-06-05", 75.0)], "plt75_d14")) == 1
    late = ("2024-06-12", 60.0)
    assert _label(_one([("2024-06-01", 30.0), ("2024-06-05", 74.9), late], "plt75_d14")) == 0
    # plt75 has no rise criterion: +60 to 70 is not a response.
    assert _label(_one([("2024-06-01", 10.0), ("2024-06-05", 70.0), late], "plt75_d14")) == 0


def test_day_14_counts_and_day_15_does_not() -> None:
    row = _one([("2024-06-01", 30.0), ("2024-06-15T23:59:00", 120.0)])
    assert (_label(row), row["days_to_response"]) == (1, 14)
    row = _one([("2024-06-01", 30.0), ("2024-06-11", 40.0), ("2024-06-16", 120.0)])
    assert (_label(row), row["exclusion"]) == (0, "")
    row = _one([("2024-06-01", 30.0), ("2024-06-05", 40.0), ("2024-06-16", 120.0)])
    assert (_label(row), row["exclusion"]) == (None, follow_up_ended_reason(4))
    row = _one([("2024-06-01", 30.0), ("2024-06-16T00:00:00", 120.0)])
    assert _label(row) is None
    assert row["exclusion"] == NO_FOLLOWUP


def test_baseline_exactly_3_days_before_counts_and_4_does_not() -> None:
    row = _one([("2024-05-29T00:00:00", 40.0), ("2024-06-03", 100.0)])
    assert (row["baseline_plt"], _label(row)) == (40.0, 1)
    row = _one([("2024-05-28T23:59:59", 40.0), ("2024-06-03", 100.0)])
    assert np.isnan(row["baseline_plt"])
    assert (_label(row), row["exclusion"]) == (None, NO_BASELINE)


def test_lab_on_the_index_date_is_baseline_not_response() -> None:
    row = _one([("2024-05-30", 20.0), ("2024-06-01T17:00:00", 150.0)])
    assert row["baseline_plt"] == 150.0  # the last PLT in the window
    assert (_label(row), row["exclusion"]) == (None, NO_FOLLOWUP)


def test_index_time_splits_the_index_day() -> None:
    plt = [("2024-06-01T08:00:00", 35.0), ("2024-06-01T12:00:00", 200.0)]
    row = _one(plt, index="2024-06-01T10:00:00")
    assert row["baseline_plt"] == 35.0  # the 12:00 value is after the index time
    assert row["exclusion"] == NO_FOLLOWUP  # and it is day 0, not a response day


def test_last_baseline_value_wins_and_other_patients_do_not_leak() -> None:
    cohort = _cohort(
        [("E1", "2024-06-01")],
        [
            ("P1", "2024-05-30", 10.0),
            ("P1", "2024-05-31", 45.0),
            ("P1", "2024-06-03", 90.0),
            ("P0", "2024-06-01", 5.0),
            ("P2", "2024-06-02", 500.0),
        ],
    )
    row = derive_labels(cohort, "plt100_or_rise50_d14").iloc[0]
    assert row["baseline_plt"] == 45.0
    assert _label(row) is None  # no response, and the follow-up of P1 ended on day 2
    assert row["exclusion"] == follow_up_ended_reason(2)
    assert np.isnan(row["days_to_response"])


def test_given_outcomes_win_over_derived_labels() -> None:
    cohort = _cohort(
        [("E1", "2024-06-01"), ("E2", "2024-08-01"), ("E3", "2024-10-01")],
        [
            ("P1", "2024-06-01", 30.0),
            ("P1", "2024-06-05", 150.0),  # E1 derived responder, given 0
            ("P1", "2024-07-01", 30.0),  # E2 no baseline, given 1
            ("P1", "2024-10-01", 30.0),
            ("P1", "2024-10-03", 40.0),
            ("P1", "2024-10-13", 45.0),  # E3 derived non-responder, no outcome
        ],
        outcomes=[("E1", 0), ("E2", 1)],
    )
    labels = derive_labels(cohort, "plt100_or_rise50_d14").set_index("episode_id")
    assert labels["label"].tolist() == [0, 1, 0]
    assert labels["exclusion"].tolist() == ["", "", ""]
    assert np.isnan(labels.loc["E1", "days_to_response"])
    assert np.isnan(labels.loc["E2", "baseline_plt"])


def test_given_definition_uses_outcomes_only() -> None:
    cohort = _cohort(
        [("E1", "2024-06-01"), ("E2", "2024-08-01")],
        [("P1", "2024-06-01", 30.0), ("P1", "2024-06-05", 150.0)],
        outcomes=[("E2", 0)],
    )
    labels = derive_labels(cohort, "given").set_index("episode_id")
    assert pd.isna(labels.loc["E1", "label"])
    assert labels.loc["E1", "exclusion"] == NO_OUTCOME
    assert int(labels.loc["E2", "label"]) == 0
    assert labels["days_to_response"].isna().all()
    assert attrition(labels.reset_index())["excluded_by_reason"] == {NO_OUTCOME: 1}


def test_given_definition_without_outcomes_table_is_an_error(cohort_tables) -> None:
    with pytest.raises(ValueError, match="needs an outcomes table"):
        derive_labels(cohort_from_tables(cohort_tables), "given")


def test_custom_definition_parses_and_round_trips() -> None:
    definition = get_definition("custom:threshold=100,rise=50,horizon=14")
    named = NAMED_DEFINITIONS["plt100_or_rise50_d14"]
    assert (definition.threshold, definition.rise, definition.horizon_days) == (100.0, 50.0, 14)
    assert definition.threshold == named.threshold
    assert get_definition(definition.name) == definition
    short = get_definition("custom: rise=30, horizon=7")
    assert (short.threshold, short.rise, short.horizon_days) == (None, 30.0, 7)
    assert short == custom_definition(None, 30.0, 7)


def test_custom_horizon_and_rise_only() -> None:
    plt = [("2024-06-01", 30.0), ("2024-06-09", 65.0)]
    assert _label(_one(plt, "custom:threshold=60,horizon=8")) == 1
    row = _one(plt, "custom:threshold=60,horizon=7")
    assert (_label(row), row["exclusion"]) == (None, no_followup_reason(7))
    assert _label(_one(plt, "custom:rise=35")) == 1
    assert _label(_one(plt, "custom:rise=35.1,horizon=12")) == 0
    row = _one(plt, "custom:rise=35.1")  # day 8 is before day 14 - 4
    assert (_label(row), row["exclusion"]) == (None, follow_up_ended_reason(8))


@pytest.mark.parametrize(
    ("name", "match"),
    [
        ("plt50_d7", "unknown label definition"),
        ("custom:", "needs a threshold or a rise"),
        ("custom:threshold=abc", "bad number"),
        ("custom:threshold=100,days=3", "bad item"),
        ("custom:threshold=100,threshold=90", "given twice"),
        ("custom:threshold=100,horizon=0", "horizon must be"),
        ("custom:threshold=-5", "threshold must be > 0"),
    ],
)
def test_bad_definitions_are_refused_with_a_reason(name: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        get_definition(name)


def test_definition_objects_can_be_passed_directly(cohort_tables) -> None:
    cohort = cohort_from_tables(cohort_tables)
    by_object = derive_labels(cohort, LabelDefinition("x", 75.0, None, 14))
    by_name = derive_labels(cohort, "plt75_d14")
    pd.testing.assert_frame_equal(by_object, by_name)


def test_attrition_when_nothing_is_labelled() -> None:
    labels = derive_labels(
        _cohort([("E1", "2024-06-01")], [("P1", "2024-01-01", 30.0)]), "plt75_d14"
    )
    assert attrition(labels) == {
        "episodes_in": 1,
        "excluded_by_reason": {NO_BASELINE: 1},
        "labelled": 0,
        "responders": 0,
        "response_rate": None,
    }


def _reference(episodes: pd.DataFrame, labs: pd.DataFrame, threshold, rise, horizon) -> list:
    """Per-episode loop straight from the definition in DESIGN.md, for comparison."""
    out = []
    for e in episodes.itertuples():
        own = labs[labs.patient_id == e.patient_id]
        day = (own.time.dt.normalize() - e.index_date.normalize()).dt.days
        cutoff = (
            e.index_date
            if e.index_date != e.index_date.normalize()
            else e.index_date.normalize() + pd.Timedelta("1D") - pd.Timedelta("1s")
        )
        base = own[(day >= -3) & (own.time <= cutoff)]
        follow = own[(day >= 1) & (day <= horizon)]
        if base.empty:
            out.append((None, None))
            continue
        b = base.sort_values("time", kind="stable").value.iloc[-1]
        if follow.empty:
            out.append((None, b))
            continue
        hit = np.zeros(len(follow), dtype=bool)
        if threshold is not None:
            hit |= follow.value.to_numpy() >= threshold
        if rise is not None:
            hit |= follow.value.to_numpy() - b >= rise
        if not hit.any() and day[follow.index].max() < horizon - 4:
            out.append((None, b))  # not evaluable: follow-up ended early
            continue
        out.append((int(hit.any()), b))
    return out


@pytest.mark.parametrize("name", ["plt100_or_rise50_d14", "plt75_d14", "plt100_d14"])
def test_vectorised_labels_match_a_per_episode_loop(name: str) -> None:
    rng = np.random.default_rng(7)
    n_patients = 60
    patients = [f"P{i:03d}" for i in range(n_patients)]
    episodes = pd.DataFrame(
        {
            "episode_id": [f"E{i}" for i in range(120)],
            "patient_id": rng.choice(patients, 120),
            "index_date": pd.Timestamp("2024-01-01")
            + pd.to_timedelta(rng.integers(0, 60, 120), unit="D")
            + pd.to_timedelta(rng.choice([0, 0, 9 * 3600], 120), unit="s"),
        }
    )
    n_labs = 3000
    labs = pd.DataFrame(
        {
            "patient_id": rng.choice(patients, n_labs),
            "time": pd.Timestamp("2023-12-20")
            + pd.to_timedelta(rng.integers(0, 100 * 24, n_labs), unit="h"),
            "test": "PLT",
            "value": rng.integers(5, 200, n_labs).astype(float),
            "unit": "10*9/L",
        }
    )
    cohort = cohort_from_tables(
        {"patients": pd.DataFrame({"patient_id": patients}), "episodes": episodes, "labs": labs}
    )
    definition = get_definition(name)
    got = derive_labels(cohort, definition)
    expected = _reference(
        cohort.episodes, cohort.labs, definition.threshold, definition.rise, definition.horizon_days
    )
    assert [None if pd.isna(x) else int(x) for x in got["label"]] == [e[0] for e in expected]
    assert got["baseline_plt"].tolist() == pytest.approx(
        [np.nan if e[1] is None else e[1] for e in expected], nan_ok=True
    )
    assert 10 < got["label"].notna().sum() < 120  # the sample exercises both kinds of row


# Rescue, confirmation and truncated follow-up, by hand (index 2024-06-01, baseline 15).
def test_rise_within_the_rescue_window_after_a_platelet_transfusion_does_not_count() -> None:
    plt = [("2024-06-01", 15.0), ("2024-06-03", 70.0), ("2024-06-12", 30.0)]
    # transfusion on day 1 at 10:00: day 2 (+55) is 1 day after it, inside the 3-day window
    tx = [("2024-06-02T10:00:00", "platelets")]
    row = _one(plt, transfusions=tx)
    assert (_label(row), row["exclusion"]) == (0, "")
    assert np.isnan(row["days_to_response"])
    # without the transfusion the same series responds on day 2
    row = _one(plt)
    assert (_label(row), row["days_to_response"]) == (1, 2)
    # red cells are not a platelet rescue
    assert _label(_one(plt, transfusions=[("2024-06-02T10:00:00", "red_cells")])) == 1
    # a window of 0 days turns the rule off; the count 4 days after is outside 3 days
    assert (
        _label(_one(plt, "custom:threshold=100,rise=50,rescue_window_days=0", transfusions=tx)) == 1
    )
    late = [("2024-06-01", 15.0), ("2024-06-07", 70.0), ("2024-06-12", 30.0)]
    row = _one(late, transfusions=[("2024-06-03T10:00:00", "platelets")])
    assert (_label(row), row["days_to_response"]) == (1, 6)  # 3 days 14 h after: counts


def test_confirmation_needs_the_next_count_at_least_n_days_later() -> None:
    confirm = "custom:threshold=100,rise=50,horizon=14,confirm_days=7"
    assert get_definition(confirm).confirm_days == 7
    # day 5 responds (+55 = 70); day 8 is too early to confirm; day 12 (7 days later) 80 holds
    held = [("2024-06-01", 15.0), ("2024-06-06", 70.0), ("2024-06-09", 10.0), ("2024-06-13", 80.0)]
    row = _one(held, confirm)
    assert (_label(row), row["days_to_response"]) == (1, 5)
    # the rise on day 5 falls to 7 by day 20: not confirmed, and day 13's 7 is evaluable
    fell = [("2024-06-01", 15.0), ("2024-06-06", 70.0), ("2024-06-14", 7.0)]
    row = _one(fell, confirm)
    assert (_label(row), row["exclusion"]) == (0, "")
    assert _label(_one(fell)) == 1  # without the rule it would count
    # a response with no count 7 days later cannot be confirmed: not evaluable
    lone = [("2024-06-01", 15.0), ("2024-06-09", 90.0), ("2024-06-12", 95.0)]
    row = _one(lone, confirm)
    assert (_label(row), row["exclusion"]) == (None, unconfirmed_reason(7))


def test_truncated_follow_up_is_not_evaluable_with_its_own_attrition_row() -> None:
    cohort = _cohort(
        [("E1", "2024-06-01"), ("E2", "2024-08-01"), ("E3", "2024-10-01"), ("E4", "2024-12-01")],
        [
            ("P1", "2024-06-01", 15.0),
            ("P1", "2024-06-03", 20.0),  # E1: one PLT on day 2 and nothing after it
            ("P1", "2024-08-01", 40.0),
            ("P1", "2024-08-04", 95.0),  # E2: +55 on day 3 responds despite the short follow-up
            ("P1", "2024-10-01", 40.0),
            ("P1", "2024-10-11", 50.0),  # E3: day 10 = horizon - 4: evaluable non-responder
            ("P1", "2024-12-01", 40.0),
            ("P1", "2024-12-10", 60.0),  # E4: last PLT day 9: not evaluable
        ],
    )
    labels = derive_labels(cohort, "plt100_or_rise50_d14").set_index("episode_id")
    assert [_label(labels.loc[e]) for e in ("E1", "E2", "E3", "E4")] == [None, 1, 0, None]
    assert labels.loc["E1", "exclusion"] == follow_up_ended_reason(2)
    assert labels.loc["E4", "exclusion"] == follow_up_ended_reason(9)
    assert attrition(labels.reset_index()) == {
        "episodes_in": 4,
        "excluded_by_reason": {follow_up_ended_reason(2): 1, follow_up_ended_reason(9): 1},
        "labelled": 2,
        "responders": 1,
        "response_rate": 0.5,
    }


def test_rescue_confirmation_and_follow_up_rows_in_one_attrition() -> None:
    cohort = _cohort(
        [("E1", "2024-06-01"), ("E2", "2024-08-01"), ("E3", "2024-10-01")],
        [
            ("P1", "2024-06-01", 15.0),
            ("P1", "2024-06-03", 70.0),  # E1: transfusion rise only, then day 4 is the last
            ("P1", "2024-06-05", 20.0),
            ("P1", "2024-08-01", 15.0),
            ("P1", "2024-08-06", 80.0),  # E2: responds day 5, nothing 7 days later
            ("P1", "2024-10-01", 15.0),
            ("P1", "2024-10-06", 80.0),  # E3: responds day 5, confirmed day 12
            ("P1", "2024-10-13", 75.0),
        ],
        transfusions=[("2024-06-02T09:00:00", "platelets")],
    )
    labels = derive_labels(cohort, "custom:threshold=100,rise=50,confirm_days=7")
    assert attrition(labels) == {
        "episodes_in": 3,
        "excluded_by_reason": {follow_up_ended_reason(4): 1, unconfirmed_reason(7): 1},
        "labelled": 1,
        "responders": 1,
        "response_rate": 1.0,
    }
