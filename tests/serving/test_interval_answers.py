"""The probability interval and the chance of response by day, as answers carry them."""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import numpy as np
import pytest
import xgboost as xgb
from hypothesis import given, settings
from hypothesis import strategies as st

from data.cohort import cohort_from_tables
from serving.bundle.calibrator import Calibrator
from serving.bundle.model import DeployableModel
from serving.predict.interval import BootstrapInterval
from serving.predict.survival import TimeToResponse, median_day
from serving.request.records import RecordBatch, validate_record
from serving.scoring.scorer import Scorer


def _stump(n_features: int = 2) -> xgb.Booster:
    X = np.arange(8 * n_features, dtype=np.float32).reshape(8, n_features)
    matrix = xgb.DMatrix(X, label=np.array([0, 1] * 4), nthread=1)
    return xgb.train({"max_depth": 1, "nthread": 1, "objective": "binary:logistic"}, matrix, 1)


def _identity() -> Calibrator:
    return Calibrator.from_dict({"method": "platt", "slope": 1.0, "intercept": 0.0})


def test_bounds_are_the_normal_logit_interval_hand_computed() -> None:
    interval = BootstrapInterval([_stump(), _stump(), _stump()], [_identity()] * 3, level=0.8)
    # three refits at log-odds -1, 0, 1: sd 1; t(2 df, 0.90) = 1.885618
    low, high = interval.bounds(np.array([0.5]), np.array([[-1.0], [0.0], [1.0]]))
    assert interval.multiplier == pytest.approx(1.885618, abs=1e-6)
    assert low[0] == pytest.approx(1 / (1 + math.exp(1.885618)), abs=1e-6)
    assert high[0] == pytest.approx(1 / (1 + math.exp(-1.885618)), abs=1e-6)
    # a Platt calibrator per refit maps its margins first: slope 2 doubles the spread
    doubled = Calibrator.from_dict({"method": "platt", "slope": 2.0, "intercept": 0.0})
    wide = BootstrapInterval([_stump(), _stump(), _stump()], [doubled] * 3, level=0.8)
    low2, high2 = wide.bounds(np.array([0.5]), np.array([[-1.0], [0.0], [1.0]]))
    assert high2[0] == pytest.approx(1 / (1 + math.exp(-2 * 1.885618)), abs=1e-6)
    assert low2[0] < low[0]


def test_isotonic_refits_give_the_same_interval_as_equivalent_platt_ones() -> None:
    margins = np.array([[-1.0, 0.3], [0.0, 0.1], [1.0, -0.2]])
    platt = BootstrapInterval([_stump()] * 3, [_identity()] * 3)
    # an isotonic map through sigmoid points is the identity on probabilities
    grid = np.linspace(1e-4, 1 - 1e-4, 2001)
    iso = Calibrator.from_dict({"method": "isotonic", "x": grid.tolist(), "y": grid.tolist()})
    other = BootstrapInterval([_stump()] * 3, [iso] * 3)
    p = np.array([0.4, 0.6])
    for a, b in zip(platt.bounds(p, margins), other.bounds(p, margins), strict=True):
        np.testing.assert_allclose(a, b, atol=2e-4)


def test_interval_needs_two_refits_and_a_level_inside_0_1() -> None:
    with pytest.raises(ValueError, match="at least 2"):
        BootstrapInterval([_stump()], [_identity()])
    with pytest.raises(ValueError, match="level"):
        BootstrapInterval([_stump(), _stump()], [_identity()] * 2, level=1.0)


def test_curve_hand_computed() -> None:
    model = TimeToResponse(_stump(), distribution="normal", scale=1.0, horizon_days=14)
    curve = model.curves(np.array([0.8]), np.array([math.log(7)]))[0]
    # F(7) = 0.5 and F(14) = Phi(ln 2) = 0.755891: P(by day 7) = 0.8 * 0.5 / 0.755891
    assert curve[6] == pytest.approx(0.8 * 0.5 / 0.755891, abs=1e-5)
    assert curve[-1] == pytest.approx(0.8, abs=1e-12)
    # day 6: 0.8 * Phi(ln(6/7)) / 0.755891 = 0.4643 < 0.5, day 7 = 0.5292: the median is day 7
    assert curve[5] == pytest.approx(0.8 * 0.438744 / 0.755891, abs=2e-5)
    assert median_day(curve) == 7
    assert median_day(model.curves(np.array([0.45]), np.array([0.0]))[0]) is None


@settings(max_examples=200, deadline=None)
@given(
    p=st.floats(0.0, 1.0),
    mu=st.floats(-30, 30),
    scale=st.floats(0.05, 5.0),
    horizon=st.integers(1, 60),
    distribution=st.sampled_from(["normal", "logistic"]),
)
def test_curve_is_monotone_in_0_1_and_ends_at_the_probability(
    p: float, mu: float, scale: float, horizon: int, distribution: str
) -> None:
    model = TimeToResponse(_stump(), distribution=distribution, scale=scale, horizon_days=horizon)
    curve = model.curves(np.array([p]), np.array([mu]))[0]
    assert curve.shape == (horizon,)
    assert np.all(np.isfinite(curve))
    assert np.all(np.diff(curve) >= 0)
    assert curve.min() >= 0 and curve.max() <= 1
    assert curve[-1] == pytest.approx(p, abs=1e-12)
    day = median_day(curve)
    if day is None:
        assert curve.max() < 0.5
    else:
        assert curve[day - 1] >= 0.5 and (day == 1 or curve[day - 2] < 0.5)


# -- a model with both parts, as training builds it ------------------------------------------------


def _with_uncertainty(base: DeployableModel, records: list[dict[str, Any]], y: np.ndarray):
    batch = RecordBatch.from_requests([validate_record(r) for r in records], keep_ids=True)
    X = base.pipeline.transform(cohort_from_tables(batch.tables)).to_numpy(np.float32)
    params = {"objective": "binary:logistic", "max_depth": 3, "eta": 0.3, "nthread": 1}
    rng = np.random.default_rng(0)
    boosters, calibrators = [], []
    for b in range(8):
        w = rng.multinomial(len(y), np.full(len(y), 1 / len(y))).astype(np.float32)
        matrix = xgb.DMatrix(X, label=y, weight=w, nthread=1)
        boosters.append(xgb.train({**params, "seed": b}, matrix, num_boost_round=25))
        calibrators.append(base.calibrator)
    # time to response: responders by day 3-12 (sooner with a higher baseline), others censored
    plt_last = X[:, base.feature_names.index("plt_last")]
    day = np.clip(np.round(12 - plt_last / 8), 2, 12)
    lower = np.where(y == 1, day - 2, 14).astype(np.float32)
    upper = np.where(y == 1, day, np.inf).astype(np.float32)
    matrix = xgb.DMatrix(X, nthread=1)
    matrix.set_float_info("label_lower_bound", lower)
    matrix.set_float_info("label_upper_bound", upper)
    aft = xgb.train(
        {"objective": "survival:aft", "aft_loss_distribution": "normal",
         "aft_loss_distribution_scale": 0.8, "max_depth": 3, "nthread": 1},
        matrix, num_boost_round=30,
    )  # fmt: skip
    return replace(
        base,
        interval_model=BootstrapInterval(boosters, calibrators, level=0.8),
        time_model=TimeToResponse(aft, "normal", 0.8, 14),
    )


@pytest.fixture(scope="module")
def full_model(deployable_model, _training_records_once) -> DeployableModel:
    records, y = _training_records_once
    return _with_uncertainty(deployable_model, records, y)


def test_answers_carry_level_curve_and_median(full_model, training_records) -> None:
    records, _ = training_records
    answers = Scorer(full_model, uri="t").score_batch(records[:30])
    for answer in answers:
        low, high = answer["interval"]
        assert answer["interval_level"] == 0.8
        assert 0 < low < answer["probability"] < high < 1
        curve = answer["response_by_day"]
        assert len(curve) == 14
        assert curve[-1] == pytest.approx(answer["probability"], abs=1e-12)
        assert answer["median_days_to_response"] == median_day(np.asarray(curve))
    assert any(a["median_days_to_response"] is not None for a in answers)
    assert any(a["median_days_to_response"] is None for a in answers)


def test_one_patient_and_a_batch_get_the_same_interval(full_model, training_records) -> None:
    """One row walks the numpy forest, many rows xgboost: the same interval to float rounding."""
    records, _ = training_records
    scorer = Scorer(full_model, uri="t")
    batch = scorer.score_batch(records[:12], explain=False)
    for record, answer in zip(records[:12], batch, strict=True):
        alone = scorer.score(record, explain=False)
        np.testing.assert_allclose(alone["interval"], answer["interval"], rtol=0, atol=1e-12)
        np.testing.assert_allclose(alone["response_by_day"], answer["response_by_day"], atol=1e-12)


def test_save_and_load_keep_the_interval_and_the_curve(full_model, tmp_path, record) -> None:
    loaded = DeployableModel.load(full_model.save(tmp_path / "m"))
    assert loaded.interval_model is not None and loaded.time_model is not None
    assert loaded.interval_model.n_refits == 8 and loaded.time_model.scale == 0.8
    a, b = Scorer(full_model).score(record), Scorer(loaded).score(record)
    assert a["interval"] == b["interval"]
    assert a["response_by_day"] == b["response_by_day"]
    assert a["interval_level"] == b["interval_level"] == 0.8


def test_a_model_without_refits_keeps_the_fold_interval_and_states_no_level(
    deployable_model, record
) -> None:
    answer = Scorer(deployable_model).score(record)
    assert answer["interval_level"] is None
    assert answer["response_by_day"] is None and answer["median_days_to_response"] is None
    described = Scorer(deployable_model).describe()
    assert "no stated coverage" in described["interval"]
    assert described["time_to_response"] is None


def test_model_card_states_the_meaning(full_model) -> None:
    described = Scorer(full_model, uri="t").describe()
    assert described["interval_level"] == 0.8
    assert "80% interval" in described["interval"] and "not a range" in described["interval"]
    assert described["time_to_response"]["horizon_days"] == 14
    assert "day 14 equals the probability" in described["time_to_response"]["meaning"]


def test_support_envelope_alternatives_hand_made() -> None:
    from serving.predict.interval import SupportEnvelope

    names = ["alb_last", "current_parp", "subtype=A", "subtype=B", "plt_last"]
    reference = {
        "alb_last": {
            "min": 20.0,
            "p01": 25.0,
            "p50": 38.0,
            "p99": 45.0,
            "max": 47.0,
            "missing_share": 0.2,
        },  # fmt: skip
        "current_parp": {"min": 0.0, "p01": 0.0, "p50": 0.0, "p99": 0.0, "max": 1.0},
        "subtype=A": {"min": 0.0, "p01": 0.0, "p50": 1.0, "p99": 1.0, "max": 1.0},
        "subtype=B": {"min": 0.0, "p01": 0.0, "p50": 0.0, "p99": 0.0, "max": 1.0},
        "plt_last": {
            "min": 5.0,
            "p01": 12.0,
            "p50": 60.0,
            "p99": 180.0,
            "max": 400.0,
            "missing_share": 0.0,
        },  # fmt: skip
    }
    envelope = SupportEnvelope(names, reference, [False, True, True, True, False])
    X = np.array(
        [
            [38.0, 0.0, 1.0, 0.0, 50.0],  # typical: no alternative
            [60.0, 0.0, 1.0, 0.0, 50.0],  # albumin above the training maximum
            # rare drug class and rare subtype; albumin missing as in 20% of training: not sparse
            [np.nan, 1.0, 0.0, 1.0, 50.0],
            [38.0, 0.0, 1.0, 0.0, np.nan],  # PLT missing, which no training episode was
            [60.0, 0.0, 1.0, 0.0, np.nan],  # both: PLT joins albumin's three rows
        ],
        dtype=np.float32,
    )
    rows, alts = envelope.alternatives(X)
    assert rows.tolist() == [1, 1, 1, 2, 3, 4, 4, 4]
    np.testing.assert_array_equal(alts[0], [25.0, 0.0, 1.0, 0.0, 50.0])  # the 1st percentile
    np.testing.assert_array_equal(alts[1], [38.0, 0.0, 1.0, 0.0, 50.0])  # the 50th
    np.testing.assert_array_equal(alts[2], [45.0, 0.0, 1.0, 0.0, 50.0])  # the 99th
    # the rare flag at its common level, the rare one-hot level as an unseen one (all zeros)
    np.testing.assert_array_equal(alts[3], [np.nan, 0.0, 0.0, 0.0, 50.0])
    np.testing.assert_array_equal(alts[4], [38.0, 0.0, 1.0, 0.0, 60.0])  # missing: the 50th
    np.testing.assert_array_equal(alts[5:, 0], [25.0, 38.0, 45.0])
    np.testing.assert_array_equal(alts[5:, 4], [12.0, 60.0, 180.0])
    low, high = SupportEnvelope.widen(
        np.array([0.4, 0.5, 0.6]),
        np.array([0.5, 0.6, 0.7]),
        np.array([1, 1, 2]),
        np.array([0.3, 0.55, 0.5]),
        np.array([0.45, 0.8, 0.65]),
    )
    np.testing.assert_allclose(low, [0.4, 0.3, 0.5])
    np.testing.assert_allclose(high, [0.5, 0.8, 0.7])


def test_fhir_risk_assessment_has_one_prediction_per_horizon(full_model, record) -> None:
    from serving.fhir.convert import risk_assessment

    answer = Scorer(full_model).score(record)
    resource = risk_assessment(answer, record)
    by_horizon = {p["whenRange"]["high"]["value"]: p for p in resource["prediction"]}
    assert sorted(by_horizon) == [7, 14]
    assert by_horizon[14]["probabilityDecimal"] == round(answer["probability"], 4)
    assert by_horizon[7]["probabilityDecimal"] == round(answer["response_by_day"][6], 4)
    for prediction in resource["prediction"]:
        assert prediction["whenRange"]["low"] == {
            "value": 1, "unit": "days", "system": "http://unitsofmeasure.org", "code": "d"
        }  # fmt: skip
    assert any("80% interval for the probability" in n["text"] for n in resource["note"])


def test_cds_card_says_how_soon_in_one_sentence(full_model, record) -> None:
    from serving.fhir.cds_hooks import detail_of

    answer = Scorer(full_model).score(record)
    detail = detail_of(answer, record, [])
    sentence = next(line for line in detail.splitlines() if line.startswith("Chance of response"))
    assert sentence.count(".") == 1 and sentence.endswith(".")
    assert f"by day 7: {answer['response_by_day'][6]:.0%}" in sentence
    assert f"by day 14: {answer['probability']:.0%}" in sentence
    assert "80% interval" in detail


def test_http_answers_and_model_card_carry_the_fields(full_model, record, tmp_path) -> None:
    """Through a real uvicorn: the response model keeps the new fields."""
    import threading
    import time

    import httpx
    import uvicorn

    from serving.http.app import create_app
    from serving.settings import ServingSettings

    settings = ServingSettings(model_uri="in-memory", audit_path=tmp_path / "audit.db")
    app = create_app(settings, scorer=Scorer(full_model, uri="in-memory"))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.02)
    url = f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
    try:
        with httpx.Client(base_url=url, timeout=30) as client:
            answer = client.post("/v1/score", json=record).json()
            card = client.get("/v1/model").json()
    finally:
        server.should_exit = True
        thread.join(timeout=10)
    assert answer["interval_level"] == 0.8
    assert len(answer["response_by_day"]) == 14
    assert answer["response_by_day"][-1] == pytest.approx(answer["probability"], abs=1e-12)
    assert answer["median_days_to_response"] == median_day(np.asarray(answer["response_by_day"]))
    assert card["interval_level"] == 0.8 and "80% interval" in card["interval"]
    assert card["time_to_response"]["horizon_days"] == 14


def test_support_envelope_of_a_reference_without_its_median_uses_the_p01() -> None:
    from serving.predict.interval import SupportEnvelope

    reference = {"plt_last": {"min": 5.0, "p01": 12.0, "p99": 180.0, "max": 400.0}}
    envelope = SupportEnvelope(["plt_last"], reference, [False])
    rows, alts = envelope.alternatives(np.array([[500.0]], dtype=np.float32))
    assert rows.tolist() == [0, 0, 0]
    np.testing.assert_array_equal(alts[:, 0], [12.0, 12.0, 180.0])
