"""The one-patient path of `cohort_from_tables` (plain Python, no pandas per column) gives exactly
the Cohort of the pandas path, or hands the input to it: same frames, dtypes, column order,
warnings and conversions, and the same errors, for valid and invalid small inputs alike."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from data import units
from data.cohort import (
    Cohort,
    _cohort_from_tables_general,
    _small_cohort,
    cohort_from_tables,
)
from data.issues import CohortError

FRAMES = ("patients", "episodes", "labs", "regimens")
# examples/patient.json as of this test (the hand-checked values below refer to it).
RECORD: dict[str, Any] = {
    "patient": {
        "patient_id": "P1",
        "sex": "F",
        "birth_date": "1973-05-02",
        "race": "Asian",
        "ecog": 0,
        "subtype": "HR+/HER2-",
        "bone_mets": True,
        "liver_mets": False,
        "marrow_involvement": False,
        "splenomegaly": False,
        "prior_radiotherapy": False,
    },
    "episode": {"episode_id": "E1", "index_date": "2025-03-10", "dose_mg": 7.5},
    "labs": [
        {"time": "2025-02-17T08:00:00", "test": "777-3", "value": 186, "unit": "10*3/uL"},
        {"time": "2025-02-17T08:00:00", "test": "718-7", "value": 10.8, "unit": "g/dL"},
        {"time": "2025-02-17T08:00:00", "test": "6690-2", "value": 5.9, "unit": "10*3/uL"},
        {"time": "2025-02-17T08:00:00", "test": "751-8", "value": 3.9, "unit": "10*3/uL"},
        {"time": "2025-02-28T08:00:00", "test": "PLT", "value": 96, "unit": "10*9/L"},
        {"time": "2025-03-10T08:00:00", "test": "777-3", "value": 64, "unit": "10*3/uL"},
        {"time": "2025-03-10T08:00:00", "test": "718-7", "value": 10.4, "unit": "g/dL"},
        {"time": "2025-03-10T08:00:00", "test": "WBC", "value": 5.2, "unit": "10*9/L"},
        {"time": "2025-03-10T08:00:00", "test": "ANC", "value": 3.4, "unit": "10*9/L"},
        {"time": "2025-03-10T08:00:00", "test": "ALT", "value": 21, "unit": "U/L"},
        {"time": "2025-03-10T08:00:00", "test": "AST", "value": 24, "unit": "U/L"},
        {"time": "2025-03-10T08:00:00", "test": "TBIL", "value": 0.5, "unit": "mg/dL"},
        {"time": "2025-03-10T08:00:00", "test": "CREA", "value": 0.8, "unit": "mg/dL"},
        {"time": "2025-03-10T08:00:00", "test": "ALB", "value": 40, "unit": "g/L"},
    ],
    "regimens": [
        {
            "start_date": "2024-06-03",
            "end_date": "2024-10-20",
            "drugs": ["palbociclib", "letrozole"],
            "line": 1,
            "cycle": 6,
        },
        {
            "start_date": "2024-12-02",
            "end_date": "2024-12-22",
            "drugs": ["capecitabine"],
            "line": 2,
            "cycle": 1,
        },
        {
            "start_date": "2024-12-23",
            "end_date": "2025-01-12",
            "drugs": ["capecitabine"],
            "line": 2,
            "cycle": 2,
        },
        {
            "start_date": "2025-01-27",
            "end_date": "2025-02-16",
            "drugs": ["capecitabine"],
            "line": 2,
            "cycle": 3,
        },
        {
            "start_date": "2025-02-17",
            "end_date": "2025-03-09",
            "drugs": ["capecitabine"],
            "line": 2,
            "cycle": 4,
        },
    ],
}


def _outcome(fn, tables: dict[str, Any]) -> Cohort | CohortError:
    try:
        return fn(copy.deepcopy(tables))
    except CohortError as exc:
        return exc


def _assert_same(tables: dict[str, Any]) -> Cohort | CohortError:
    """`cohort_from_tables` equals the pandas path on `tables`; returns the outcome."""
    reference = _outcome(_cohort_from_tables_general, tables)
    result = _outcome(cohort_from_tables, tables)
    assert type(result) is type(reference)
    if isinstance(reference, CohortError):
        assert result.errors == reference.errors
        assert result.warnings == reference.warnings
        return result
    for name in FRAMES:
        got, want = getattr(result, name), getattr(reference, name)
        assert list(got.columns) == list(want.columns), name
        assert list(got.dtypes) == list(want.dtypes), name
        pd.testing.assert_frame_equal(got, want, check_exact=True, obj=name)
    if reference.outcomes is None:  # given outcomes go through the pandas path on both sides
        assert result.outcomes is None
    else:
        pd.testing.assert_frame_equal(result.outcomes, reference.outcomes, check_exact=True)
    assert result.warnings == reference.warnings
    assert list(result.conversions.items()) == list(reference.conversions.items())
    return result


def _record_tables() -> dict[str, list[dict[str, Any]]]:
    """RECORD as contract tables (as `serving.request.records` makes them, absent keys left out)."""
    record = copy.deepcopy(RECORD)
    pid = record["patient"]["patient_id"]
    episode = {"patient_id": pid, **record["episode"]}
    labs = [{"patient_id": pid, **lab} for lab in record["labs"]]
    regimens = [{"patient_id": pid, **r, "drugs": ";".join(r["drugs"])} for r in record["regimens"]]
    return {
        "patients": [record["patient"]],
        "episodes": [episode],
        "labs": labs,
        "regimens": regimens,
    }


def test_example_record_takes_the_small_path_and_matches() -> None:
    tables = _record_tables()
    tables["regimens"].append(  # no end_date key: NaN in pandas, the pd.to_datetime route there
        {"patient_id": "P1", "start_date": "2025-03-10", "drugs": "capecitabine", "line": 2}
    )
    assert _small_cohort(copy.deepcopy(tables)) is not None
    cohort = _assert_same(tables)
    labs = cohort.labs
    # Hand-checked: CREA 0.8 mg/dL x 88.42 = 70.736 umol/L; HGB 10.8 and 10.4 g/dL x 10 in g/L.
    assert labs["value"][labs["test"] == "CREA"].tolist() == pytest.approx([70.736])
    assert labs["value"][labs["test"] == "HGB"].tolist() == pytest.approx([108.0, 104.0])
    assert labs["unit"][labs["test"] == "HGB"].tolist() == ["g/L", "g/L"]
    assert dict(cohort.conversions) == {
        ("PLT", "10*3/uL"): 2,  # counted although the factor is 1: the unit is not canonical
        ("HGB", "g/dL"): 2,
        ("WBC", "10*3/uL"): 1,
        ("ANC", "10*3/uL"): 1,
        ("TBIL", "mg/dL"): 1,
        ("CREA", "mg/dL"): 1,
    }
    assert cohort.regimens["end_date"].isna().tolist() == [False] * 5 + [True]
    assert cohort.regimens["cycle"].isna().tolist() == [False] * 5 + [True]
    # 1973-05-02 to 2025-03-10: 18940 days (52 years of 18993 days less 53) / 365.25.
    assert cohort.episodes["age_years"].iloc[0] == pytest.approx(18940 / 365.25)


def test_serving_tables_take_the_small_path() -> None:
    from serving.request.records import patient_record_to_tables

    tables = patient_record_to_tables(copy.deepcopy(RECORD))
    assert _small_cohort(copy.deepcopy(tables)) is not None
    _assert_same(tables)
    tables["regimens"] = []
    assert _small_cohort(copy.deepcopy(tables)) is not None
    _assert_same(tables)


def test_warnings_come_out_alike_in_order() -> None:
    tables = _record_tables()
    tables["patients"][0]["subtype"] = "luminal"
    tables["labs"].append({"patient_id": "P1", "time": "2025-03-01", "test": "FERR", "value": 3,
                           "unit": "ng/mL"})  # fmt: skip
    tables["labs"].append({"patient_id": "X9", "time": "2025-01-01", "test": "PLT", "value": 50,
                           "unit": "/uL"})  # fmt: skip
    tables["regimens"][0]["drugs"] = "docetaxel;wonderdrug, placebo"
    assert _small_cohort(copy.deepcopy(tables)) is not None
    cohort = _assert_same(tables)
    assert [(w.table, w.line, w.column) for w in cohort.warnings] == [
        ("patients", 0, "subtype"),
        ("labs", 15, "patient_id"),
        ("labs", 14, "test"),
        ("regimens", 0, "drugs"),
    ]
    assert cohort.labs["patient_id"].iloc[0] == "P1"  # sorted by patient, then time
    assert cohort.labs["patient_id"].iloc[-1] == "X9"
    assert cohort.labs["value"].iloc[-1] == 0.05


def test_errors_go_through_the_pandas_path() -> None:
    tables = _record_tables()
    tables["labs"][0]["unit"] = "furlongs"
    tables["episodes"][0]["index_date"] = "10/03/2025"
    assert _small_cohort(copy.deepcopy(tables)) is None
    error = _assert_same(tables)
    assert [(i.table, i.line, i.column) for i in error.errors] == [
        ("episodes", 0, "index_date"),
        ("labs", 0, "unit"),
    ]


def test_dataframes_and_outcomes_go_through_the_pandas_path(cohort_tables) -> None:
    assert _small_cohort(cohort_tables) is None
    tables = _record_tables()
    tables["outcomes"] = [{"episode_id": "E1", "response": 1}]
    assert _small_cohort(copy.deepcopy(tables)) is None
    assert cohort_from_tables(tables).outcomes["response"].tolist() == [1]


# ---------------------------------------------------------------------------------------------
# Random small inputs, valid and invalid

_UNITS = sorted({u for a in units.ANALYTES.values() for u in a.units}) + ["mg/L", "", " g/L"]
_TESTS = [*units.ANALYTES, "777-3", "718-7", "1975-2", "plt", " HGB ", "FERRITIN", "", None]
_DATES = st.one_of(
    st.dates(
        min_value=pd.Timestamp("1930-01-01").date(), max_value=pd.Timestamp("2030-01-01").date()
    ).map(lambda d: d.isoformat()),
    st.sampled_from(
        [
            "2025-03-10T08:00:00",
            "2025-03-09T08:00",
            "2025-03-09T23:59:59.5",
            "2025-03-09T08:00:00Z",
            "2025-03-09T08:00:00+02:00",
            "2025-02-30",
            "10/03/2025",
            "2025",
            "1500-01-01",
            "",
            " ",
            "NA",
            "junk",
        ]
    ),
    st.none(),
    st.just(float("nan")),
    st.integers(0, 3),
)
_NUMBERS = st.one_of(
    st.floats(-10, 6000, allow_nan=False),
    st.integers(-5, 6000),
    st.sampled_from([None, float("nan"), float("inf"), "7.5", "x", True, 2**70]),
)
_TEXT = st.one_of(st.sampled_from(["P1", " P1", "P2", "", None, 7, 7.0, True]), st.text(max_size=4))
_DRUGS = st.one_of(
    st.sampled_from(
        [
            "docetaxel",
            "gemcitabine;carboplatin",
            "T-DM1",
            "trastuzumab emtansine",
            "wonderdrug",
            "docetaxel, carboplatin",
            ";",
            "",
            None,
        ]
    ),
    st.lists(st.sampled_from(["docetaxel", "Pembrolizumab", "xyz", ""]), max_size=3),
)
_VALID_DRUGS = st.sampled_from(["docetaxel", "gemcitabine;carboplatin", "wonderdrug", ["T-DM1"]])
_BOOLS = st.sampled_from([True, False, None, 1, 0, 2, "yes", "no", "maybe", float("nan")])
_MISSING = object()  # a key left out of a row


@st.composite
def _tables(draw, valid_bias: bool) -> dict[str, Any]:
    def pick(common, strategy):
        if valid_bias and draw(st.sampled_from([True] * 60 + [False])):
            return common
        value = draw(st.one_of(st.just(common), strategy, st.just(_MISSING)))
        return value

    def row(fields: dict[str, tuple[Any, Any]]) -> dict[str, Any]:
        out = {}
        for key, (common, strategy) in fields.items():
            value = pick(common, strategy)
            if value is not _MISSING:
                out[key] = value
        if draw(st.integers(0, 9)) == 0:
            out[draw(st.sampled_from(["note", "classes", "source"]))] = draw(_TEXT | _NUMBERS)
        return out

    pid = "P1"
    patient = row(
        {
            "patient_id": (pid, _TEXT),
            "sex": ("F", _TEXT),
            "birth_date": (
                draw(st.sampled_from(["1960-01-01", "1973-05-02", "2030-01-01"])),
                _DATES,
            ),
            "ecog": (draw(st.sampled_from([0, 1, 2, None])), _NUMBERS),
            "subtype": (draw(st.sampled_from(["HER2+", "TNBC", "hr+/her2-", "luminal"])), _TEXT),
            "bone_mets": (draw(_BOOLS), _BOOLS),
            "marrow_involvement": (False, _BOOLS),
        }
    )
    n_episodes = draw(st.integers(1, 2)) if not valid_bias else 1
    episodes = [
        row(
            {
                "episode_id": (f"E{k}", _TEXT),
                "patient_id": (pid, _TEXT),
                "index_date": ("2025-03-10", _DATES),
                "age_years": (draw(st.sampled_from([None, 51.5, 60])), _NUMBERS),
                "dose_mg": (7.5, _NUMBERS),
            }
        )
        for k in range(n_episodes)
    ]
    labs = []
    for _ in range(draw(st.integers(0, 16))):
        test = draw(st.sampled_from(_TESTS[:-2] if valid_bias else _TESTS))
        analyte = units.canonical_test(test) if isinstance(test, str) else None
        accepted = list(units.ANALYTES[analyte].units) if analyte else ["ng/mL", "%"]
        unit = (
            draw(st.sampled_from(accepted))
            if draw(st.integers(0, 9))
            else draw(st.sampled_from([*_UNITS, None]))
        )
        labs.append(
            row(
                {
                    "patient_id": (draw(st.sampled_from([pid, pid, pid, "P2"])), _TEXT),
                    "time": (
                        f"2025-03-0{draw(st.integers(1, 9))}T0{draw(st.integers(0, 9))}:00:00",
                        _DATES,
                    ),
                    "test": (test, st.sampled_from(_TESTS)),
                    "value": (
                        draw(
                            st.one_of(
                                st.integers(0, 30), st.floats(0, 30).map(lambda x: round(x, 2))
                            )
                        ),
                        _NUMBERS,
                    ),
                    "unit": (unit, st.sampled_from([*_UNITS, None])),
                }
            )
        )
    regimens = [
        row(
            {
                "patient_id": (pid, _TEXT),
                "start_date": (f"2024-0{draw(st.integers(1, 9))}-15", _DATES),
                "end_date": (draw(st.sampled_from([None, "2024-10-01", _MISSING])), _DATES),
                "drugs": (draw(_VALID_DRUGS if valid_bias else _DRUGS), _DRUGS),
                "line": (draw(st.sampled_from([1, 2, None])), _NUMBERS),
                "cycle": (draw(st.sampled_from([1, 6, None])), _NUMBERS),
            }
        )
        for _ in range(draw(st.integers(0, 4)))
    ]
    tables: dict[str, Any] = {
        "patients": [patient],
        "episodes": episodes,
        "labs": labs,
        "regimens": regimens,
    }
    if not valid_bias:
        shape = draw(st.integers(0, 12))
        if shape == 0:
            del tables[draw(st.sampled_from(list(tables)))]
        elif shape == 1:
            tables[draw(st.sampled_from(list(tables)))] = None
        elif shape == 2:
            tables["labs"] = [*labs, "not a row"]
        elif shape == 3:
            tables["episodes"] = []
        elif shape == 4:
            tables["outcomes"] = [{"episode_id": "E0", "response": 1}]
        elif shape == 5:
            tables["extra"] = []
    return tables


_SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@_SETTINGS
@given(_tables(valid_bias=False))
def test_random_inputs_match_the_pandas_path(tables: dict[str, Any]) -> None:
    _assert_same(tables)


@_SETTINGS
@given(_tables(valid_bias=True))
def test_mostly_valid_inputs_match_the_pandas_path(tables: dict[str, Any]) -> None:
    _assert_same(tables)


def test_mostly_valid_inputs_mostly_take_the_small_path() -> None:
    """The equivalence tests above exercise the small path, not only its declines."""
    taken = 0
    tried = 0

    @settings(max_examples=120, deadline=None, database=None, derandomize=True)
    @given(_tables(valid_bias=True))
    def count(tables: dict[str, Any]) -> None:
        nonlocal taken, tried
        if isinstance(_outcome(_cohort_from_tables_general, tables), Cohort):
            tried += 1
            taken += _small_cohort(copy.deepcopy(tables)) is not None

    count()
    assert tried >= 10
    assert taken >= 0.8 * tried


def test_inferred_columns_are_those_of_pandas() -> None:
    from data.cohort import _small_array, _small_rows

    rows = [
        {"a": 1, "b": 1.5, "c": None, "d": True, "e": "x", "f": 3, "g": ["x"]},
        {"a": 2, "b": 2, "c": None, "d": False, "e": None, "f": None},
    ]
    src = _small_rows("labs", rows)
    frame = pd.DataFrame(rows)
    assert src.names == list(frame.columns)
    for name in src.names:
        got = _small_array(src, name)
        want = frame[name].to_numpy()
        assert got.dtype == want.dtype, name
        np.testing.assert_array_equal(pd.isna(got), pd.isna(want))
