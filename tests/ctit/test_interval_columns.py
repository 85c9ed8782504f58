"""`ctit score` CSV columns for the interval's level and the chance of response by day."""

from __future__ import annotations

import math

from ctit.cmd_serve import answers_frame


def _answer(curve, median, level):
    return {
        "episode_id": "E1",
        "probability": 0.6,
        "interval": [0.5, 0.7],
        "interval_level": level,
        "response_by_day": curve,
        "median_days_to_response": median,
        "band": "intermediate",
        "margin": 0.4,
        "model": {"name": "m", "version": "1", "label_definition": "d"},
    }


def test_columns_give_level_median_and_each_day() -> None:
    curve = [0.1, 0.3, 0.5, 0.6]
    frame = answers_frame([_answer(curve, 3, 0.8)])
    row = frame.iloc[0]
    assert row["interval_level"] == 0.8 and row["median_days_to_response"] == 3
    assert [row[f"response_by_day_{d}"] for d in range(1, 5)] == curve
    order = list(frame.columns)
    assert order.index("interval_high") < order.index("interval_level") < order.index("band")


def test_a_model_without_a_curve_leaves_the_columns_empty() -> None:
    frame = answers_frame([_answer(None, None, None)])
    assert "response_by_day_1" not in frame.columns
    assert frame.iloc[0]["interval_level"] is None or math.isnan(frame.iloc[0]["interval_level"])
