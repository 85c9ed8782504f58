"""training.monitor: drift statistics by hand, the audit-log scan, the hashed outcome join.

The false-alarm and detection tests here draw cheap synthetic feature vectors and write them
through the real audit log; `test_recalibrate.py` runs the same checks on simulated sites.
"""

from __future__ import annotations

import json
import math
import sqlite3
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.special import expit

from serving.answers.answer import Answer
from serving.bundle.calibrator import Calibrator
from serving.http.audit import AuditLog, salted_hash
from training import metrics
from training.monitor import (
    MonitorConfig,
    MonitorError,
    Reference,
    bin_counts,
    bin_edges,
    delong_auroc,
    expected_auroc,
    hash_outcomes,
    monitor_audit,
    oe_with_ci,
    outcomes_from_file,
    psi,
    psi_p_value,
    render_html,
    slope_with_ci,
    summary_json,
)

MODEL = {"name": "ctit-response", "version": "3", "label_definition": "plt100_or_rise50_d14"}
NAMES = ("plt_last", "hgb_last", "alb_last", "bone_mets", "anc_last", "prior_lines", "age", "wbc")
IDENTITY = Calibrator.from_dict({"method": "none"})
COEF = np.array([0.9, 0.3, 0.2, -0.5, 0.0, -0.3, -0.1, 0.1])


def draw(n: int, rng: np.random.Generator, shift: bool = False) -> np.ndarray:
    """Synthetic model inputs: continuous, skewed, binary, count and partly missing columns."""
    X = np.column_stack(
        [
            rng.normal(0.8 if shift else 0.0, 1.0, n),
            rng.normal(0, 1, n),
            rng.lognormal(0, 0.5, n),
            rng.binomial(1, 0.3, n).astype(float),
            rng.normal(0, 1, n),
            rng.poisson(2, n).astype(float),
            rng.normal(0, 1, n),
            rng.normal(0, 1, n),
        ]
    )
    missing = rng.random(n) < (0.6 if shift else 0.3)
    X[missing, 4] = np.nan
    return X


def raw_probability(X: np.ndarray) -> np.ndarray:
    return expit(np.nan_to_num(X) @ COEF - 0.2)


def write_audit(
    path: Path, X: np.ndarray, ids: list[str], model: dict | None = None, salt: str = "pepper"
) -> None:
    """Score rows as the service writes them: one answer per episode, with its model input."""
    model = model or MODEL
    p = raw_probability(X)
    audit = AuditLog(path, salt=salt, synchronous="NORMAL")
    items = []
    for i, episode_id in enumerate(ids):
        answer = Answer(
            episode_id=episode_id,
            probability=float(p[i]),
            margin=float(np.log(p[i] / (1 - p[i]))),
            model=model,
        )
        answer.model_input = (NAMES, X[i].astype(np.float32))
        items.append((f"patient-{episode_id}", "0" * 64, [answer]))
    audit.record_scores(model=model, items=items, endpoint="/v1/score/batch", caller="test")
    audit.close()


def reference(seed: int = 0, n: int = 2000) -> Reference:
    X = draw(n, np.random.default_rng(seed))
    return Reference(list(NAMES), X, raw_probability(X), auroc=0.75, source="synthetic")


def run(path: Path, ref: Reference, **kwargs) -> dict:
    return monitor_audit(
        audit_path=path,
        model_info=MODEL,
        feature_names=NAMES,
        calibrator=IDENTITY,
        reference=ref,
        **kwargs,
    )


# -- statistics by hand -------------------------------------------------------------------------


def test_psi_by_hand() -> None:
    assert psi(np.array([50, 50]), np.array([50, 50])) == 0.0
    # half a count in every bin: e = (90.5, 10.5) / 101, a = (10.5, 90.5) / 101
    expected = 2 * (80 / 101) * math.log(90.5 / 10.5)
    assert psi(np.array([90, 10]), np.array([10, 90])) == pytest.approx(expected)


def test_psi_null_p_value_is_the_chi_square_tail() -> None:
    # PSI * nm/(n+m) = 0.02 * 100*100/200 = 1.0 with 1 degree of freedom: P(chi2_1 >= 1) = 0.3173
    assert psi_p_value(0.02, 100, 100, 2) == pytest.approx(0.31731, abs=1e-4)


def test_bins_of_a_discrete_and_a_continuous_feature() -> None:
    cuts, discrete = bin_edges(np.array([0.0, 1.0, 1.0, np.nan, 0.0]), 10)
    assert discrete and cuts.tolist() == [0.5]
    assert bin_counts(np.array([0.0, 1.0, 1.0, np.nan, 7.0]), cuts).tolist() == [1, 3]
    cuts, discrete = bin_edges(np.arange(100, dtype=float), 4)
    assert not discrete and cuts.tolist() == [24.75, 49.5, 74.25]


def test_expected_auroc_by_hand() -> None:
    # p = (0.2, 0.8): pairs (i pos, j neg) weigh p_i (1 - p_j): 0.8*0.8 ranked right, 0.2*0.2 wrong
    assert expected_auroc(np.array([0.2, 0.8])) == pytest.approx(0.64 / (0.64 + 0.04))


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(0.01, 0.99), min_size=2, max_size=30))
def test_expected_auroc_equals_the_pairwise_sum(values: list[float]) -> None:
    p = np.round(np.asarray(values), 2)  # rounding makes ties
    num = den = 0.0
    for i in range(p.size):
        for j in range(p.size):
            if i == j:
                continue
            weight = p[i] * (1 - p[j])
            den += weight
            num += weight * (1.0 if p[i] > p[j] else 0.5 if p[i] == p[j] else 0.0)
    assert expected_auroc(p) == pytest.approx(num / den)


def test_delong_agrees_with_the_project_auroc_and_the_ci_covers_it() -> None:
    rng = np.random.default_rng(1)
    p = rng.random(400)
    y = (rng.random(400) < p).astype(int)
    auc, low, high = delong_auroc(y, p)
    assert auc == pytest.approx(float(metrics.auroc(y, p)[0]))
    assert low < auc < high and high - low < 0.15


def test_oe_and_slope_by_hand_and_against_training_metrics() -> None:
    y = np.array([1, 1, 1, 1, 0, 0, 0, 0])
    p = np.full(8, 0.25)
    oe, low, high = oe_with_ci(y, p)
    assert oe == 2.0
    assert low == pytest.approx(2 * math.exp(-1.96 / 2)) and high == pytest.approx(
        2 * math.exp(0.98)
    )
    rng = np.random.default_rng(2)
    p = rng.uniform(0.05, 0.95, 500)
    y = (rng.random(500) < expit(0.3 + 0.7 * np.log(p / (1 - p)))).astype(int)
    slope, s_low, s_high, _ = slope_with_ci(y, p)
    assert slope == pytest.approx(float(metrics.calibration_slope(y, p)[0]), abs=1e-6)
    assert s_low < slope < s_high


# -- the audit log ------------------------------------------------------------------------------


def test_monitor_on_an_empty_audit_log_says_so(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    AuditLog(path, salt="pepper").close()
    with pytest.raises(MonitorError, match="is empty: no scores have been recorded yet"):
        run(path, reference())


def test_monitor_of_another_model_names_what_the_log_holds(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    X = draw(50, np.random.default_rng(0))
    write_audit(path, X, [f"E{i}" for i in range(50)], model={**MODEL, "name": "other-model"})
    with pytest.raises(MonitorError, match="no scores of model 'ctit-response'.*other-model"):
        run(path, reference())


def test_monitor_without_recorded_inputs_says_why(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    audit = AuditLog(path, salt="pepper", model_inputs=False)
    answer = Answer(episode_id="E1", probability=0.5, margin=0.0, model=MODEL)
    answer.model_input = (NAMES, np.zeros(len(NAMES), dtype=np.float32))
    audit.record_scores(model=MODEL, items=[("P1", "0" * 64, [answer])], endpoint="x", caller="t")
    audit.close()
    assert AuditLog(path, salt="pepper").rows("score_inputs") == []
    with pytest.raises(MonitorError, match="1 scores but no model inputs"):
        run(path, reference())


def test_a_score_and_its_model_input_commit_together_or_not_at_all(tmp_path: Path) -> None:
    """One transaction (one durable sync) per request: if the model-input row cannot be written,
    the score row is rolled back with it and the caller is told."""
    path = tmp_path / "audit.db"
    audit = AuditLog(path, salt="pepper")
    answer = Answer(episode_id="E1", probability=0.5, margin=0.0, model=MODEL)
    answer.model_input = (NAMES, np.zeros(len(NAMES), dtype=np.float32))
    audit.record_scores(model=MODEL, items=[("P1", "0" * 64, [answer])], endpoint="x", caller="t")
    with sqlite3.connect(path) as db:  # the next model-input row will fail
        db.execute("CREATE TRIGGER refuse BEFORE INSERT ON score_inputs BEGIN "
                   "SELECT RAISE(ABORT, 'refused'); END")  # fmt: skip
    second = Answer(episode_id="E2", probability=0.4, margin=-0.4, model=MODEL)
    second.model_input = answer.model_input
    with pytest.raises(sqlite3.DatabaseError, match="refused"):
        audit.record_scores(
            model=MODEL, items=[("P2", "1" * 64, [second])], endpoint="x", caller="t"
        )
    audit.close()
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT COUNT(*) FROM scores").fetchone()[0] == 1
        assert db.execute("SELECT COUNT(*) FROM score_inputs").fetchone()[0] == 1


def test_feature_vectors_are_the_model_inputs_and_carry_no_identifier(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    X = draw(3, np.random.default_rng(3))
    write_audit(path, X, ["EPISODE-0001", "EPISODE-0002", "EPISODE-0003"])
    db = sqlite3.connect(path)
    rows = db.execute("SELECT episode_hash, feature_set, features FROM score_inputs").fetchall()
    names = db.execute("SELECT names FROM feature_sets").fetchall()
    dump = "\n".join(db.iterdump())
    db.close()
    assert "EPISODE-000" not in dump and "patient-EPISODE" not in dump
    assert [json.loads(n[0]) for n in names] == [list(NAMES)]
    decoded = np.vstack([np.frombuffer(r[2], dtype="<f4") for r in rows])
    np.testing.assert_array_equal(decoded, X.astype(np.float32))
    assert rows[0][0] == salted_hash(b"pepper", "EPISODE-0001")


def test_same_distribution_false_alarm_rate_over_20_seeds(tmp_path: Path) -> None:
    """No-shift audit logs (1,000 episodes against a 2,000-episode reference): alarms in 20 seeds.

    With PSI >= 0.25 and a Bonferroni-corrected null test both required, no seed alarms here
    (0/20); the bound allows one.
    """
    ref = reference(seed=100)
    alarms = 0
    for seed in range(20):
        path = tmp_path / f"same-{seed}.db"
        X = draw(1000, np.random.default_rng(seed))
        write_audit(path, X, [f"E{seed}-{i}" for i in range(1000)])
        summary = run(path, ref)
        alarms += summary["status"] == "alert"
    assert alarms <= 1, f"{alarms}/20 false alarms"


def test_shift_is_detected_top_drifting_first(tmp_path: Path) -> None:
    path = tmp_path / "shifted.db"
    X = draw(1000, np.random.default_rng(7), shift=True)
    write_audit(path, X, [f"E{i}" for i in range(1000)])
    summary = run(path, reference(seed=100))
    assert summary["status"] == "alert" and summary["exit_code"] == 1
    assert summary["features"][0]["feature"] == "plt_last"
    assert summary["features"][0]["status"] == "major"
    anc = next(r for r in summary["features"] if r["feature"] == "anc_last")
    assert anc["missing_drift"] and anc["missing_current"] == pytest.approx(0.6, abs=0.05)
    assert summary["score"]["status"] in ("moderate", "major")
    assert any(a.startswith("input drift") for a in summary["alerts"])
    assert any(a.startswith("missingness drift") for a in summary["alerts"])


def test_each_episode_counts_once_with_its_latest_score(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    rng = np.random.default_rng(4)
    write_audit(path, draw(40, rng), [f"E{i}" for i in range(40)])
    write_audit(path, draw(40, rng), [f"E{i}" for i in range(20)] + [f"F{i}" for i in range(20)])
    summary = run(path, reference())
    assert summary["audit"]["episodes"] == 60


def test_outcomes_join_through_hashes_only(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    rng = np.random.default_rng(5)
    X = draw(600, rng)
    ids = [f"E{i}" for i in range(600)]
    write_audit(path, X, ids)
    p = raw_probability(X)
    y = (rng.random(600) < p).astype(int)
    outcomes = pd.DataFrame({"episode_id": ids + ["never-scored"], "response": [*y, 1]})
    hashed = hash_outcomes(outcomes, b"pepper")
    assert list(hashed.columns) == ["episode_hash", "response"]
    assert not hashed["episode_hash"].isin(ids).any()
    summary = run(path, reference(), outcomes=hashed)
    overall = summary["outcomes"]["overall"]
    assert summary["outcomes"]["given"] == 601 and summary["outcomes"]["joined"] == 600
    assert overall["events"] == int(y.sum())
    assert overall["oe_ratio"]["estimate"] == pytest.approx(y.sum() / p.sum())
    assert overall["auroc"]["estimate"] == pytest.approx(float(metrics.auroc(y, p)[0]))
    assert len(summary["outcomes"]["windows"]) >= 1
    assert "E1" not in summary_json(summary)
    # another salt gives other hashes: nothing joins
    other = run(path, reference(), outcomes=hash_outcomes(outcomes, b"salt"))
    assert other["outcomes"]["joined"] == 0 and other["outcomes"]["overall"] is None


def test_miscalibration_with_outcomes_raises_an_alert(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    rng = np.random.default_rng(6)
    X = draw(1500, rng)
    ids = [f"E{i}" for i in range(1500)]
    write_audit(path, X, ids)
    true_p = expit(np.log(raw_probability(X) / (1 - raw_probability(X))) + 1.0)
    y = (rng.random(1500) < true_p).astype(int)
    outcomes = hash_outcomes(pd.DataFrame({"episode_id": ids, "response": y}), b"pepper")
    summary = run(path, reference(), outcomes=outcomes)
    assert any(a.startswith("calibration-in-the-large") for a in summary["alerts"])


def test_since_filters_by_date_and_the_page_renders(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    write_audit(path, draw(50, np.random.default_rng(8)), [f"E{i}" for i in range(50)])
    with pytest.raises(MonitorError, match="since 2999-01-01"):
        run(path, reference(), since="2999-01-01")
    summary = run(path, reference(), since="2000-01-01")
    html = render_html(summary)
    assert "Input drift" in html and "estimate" in html and "<script" not in html
    assert "--accent" in html  # the reviewer report's stylesheet


def test_outcomes_file_errors_name_the_row(tmp_path: Path) -> None:
    path = tmp_path / "outcomes.csv"
    path.write_text("episode_id,response\nE1,1\nE2,yes\n", encoding="utf-8")
    with pytest.raises(MonitorError, match="outcomes:3: response: 'yes' is not 0/1"):
        outcomes_from_file(path)
    path.write_text("episode,response\nE1,1\n", encoding="utf-8")
    with pytest.raises(MonitorError, match="episode_id: required column is missing"):
        outcomes_from_file(path)


def test_config_refuses_an_unknown_window() -> None:
    with pytest.raises(ValueError, match="window"):
        MonitorConfig(window="year")


def test_summary_json_is_strict_json_and_alerts_skip_unknown_cis() -> None:
    from training.monitor import _alerts

    text = summary_json({"a": float("nan"), "b": [np.float64(1.5), np.inf], "c": np.int64(2)})
    assert json.loads(text) == {"a": None, "b": [1.5, None], "c": 2}
    summary = {
        "features": [],
        "score": {},
        "reference": {"auroc": None},
        "outcomes": {
            "overall": {
                "oe_ratio": {"estimate": 2.0, "low": None, "high": None},
                "calibration_slope": {"estimate": 3.0, "low": 2.5, "high": 3.5},
                "auroc": {"estimate": None, "low": None, "high": None},
            }
        },
    }
    alerts = _alerts(summary, MonitorConfig())
    assert len(alerts) == 1 and alerts[0].startswith("calibration slope 3.00")
