"""The deployable model: calibration, bands, explanations, warnings, persistence, MLflow pyfunc."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest

from serving.answers.bands import RiskBands
from serving.bundle.calibrator import Calibrator
from serving.bundle.model import DeployableModel
from serving.bundle.pyfunc import log_deployable_model
from serving.bundle.store import ModelLoadError
from serving.bundle.uri import load_deployable_model
from serving.scoring.scorer import Scorer


def _sigmoid(z: float) -> float:
    return 1.0 / (1.0 + np.exp(-z))


# -- calibrator and bands --------------------------------------------------------------------------


def test_isotonic_calibrator_matches_hand_computed_steps() -> None:
    # Pool-adjacent-violators on y = 0, 1, 0, 1 merges the middle pair to 0.5.
    calibrator = Calibrator("isotonic").fit([0.1, 0.2, 0.3, 0.4], [0, 1, 0, 1])
    got = calibrator.transform([0.05, 0.1, 0.25, 0.4, 0.9])
    np.testing.assert_allclose(got, [0.0, 0.0, 0.5, 1.0, 1.0], atol=1e-12)


def test_platt_calibrator_is_a_logistic_map_of_the_margin() -> None:
    rng = np.random.default_rng(0)
    p_raw = rng.uniform(0.05, 0.95, 400)
    y = (rng.uniform(size=400) < p_raw**2).astype(int)
    calibrator = Calibrator("platt").fit(p_raw, y)
    a, b = calibrator.slope_, calibrator.intercept_
    assert a > 0
    margin = np.log(0.3 / 0.7)
    assert calibrator.transform([0.3])[0] == pytest.approx(_sigmoid(a * margin + b), abs=1e-9)
    assert calibrator.transform_margin(np.array([margin]))[0] == pytest.approx(
        _sigmoid(a * margin + b), abs=1e-9
    )
    # It survives a JSON round trip exactly.
    again = Calibrator.from_dict(json.loads(json.dumps(calibrator.to_dict())))
    np.testing.assert_array_equal(again.transform(p_raw), calibrator.transform(p_raw))


def test_identity_calibrator_and_unfitted_refusal() -> None:
    assert Calibrator("none").fit([0.2, 0.8], [0, 1]).transform([0.2])[0] == pytest.approx(0.2)
    with pytest.raises(ValueError, match="not fitted"):
        Calibrator("platt").transform([0.5])
    with pytest.raises(ValueError, match="unknown calibration method"):
        Calibrator("beta").fit([0.2, 0.8], [0, 1])


def test_risk_bands_put_a_threshold_in_the_upper_band() -> None:
    bands = RiskBands(thresholds=(0.5, 0.75), labels=("low", "intermediate", "high"))
    assert [bands.band_of(p) for p in (0.1, 0.4999, 0.5, 0.7499, 0.75, 0.99)] == [
        "low",
        "low",
        "intermediate",
        "intermediate",
        "high",
        "high",
    ]
    assert list(bands.bands(np.array([0.2, 0.6, 0.8]))) == ["low", "intermediate", "high"]
    with pytest.raises(ValueError, match="one more label"):
        RiskBands(thresholds=(0.5,), labels=("a", "b", "c"))
    with pytest.raises(ValueError, match="increasing"):
        RiskBands(thresholds=(0.7, 0.3))


# -- answers ---------------------------------------------------------------------------------------


def test_contributions_add_up_to_the_margin(scorer: Scorer, training_records) -> None:
    records, _ = training_records
    answers = scorer.score_batch(records[:40])
    for answer in answers:
        total = answer["base_value"] + sum(answer["contributions"].values())
        assert total == pytest.approx(answer["margin"], abs=1e-4)
        assert sum(answer["group_contributions"].values()) == pytest.approx(
            sum(answer["contributions"].values()), abs=1e-6
        )
        low, high = answer["interval"]
        assert 0.0 <= low <= answer["probability"] <= high <= 1.0


def test_contributions_are_exact_treeshap(deployable_model: DeployableModel, training_records):
    import shap

    from data.cohort import cohort_from_tables
    from serving.request.records import RecordBatch, validate_record

    records = training_records[0][:8]
    batch = RecordBatch.from_requests([validate_record(r) for r in records])
    X = deployable_model.prepare(cohort_from_tables(batch.tables)).X
    explanation = shap.TreeExplainer(deployable_model.booster)(X)
    answers = Scorer(deployable_model).score_batch(records)
    for i, answer in enumerate(answers):
        got = [answer["contributions"][n] for n in deployable_model.feature_names]
        np.testing.assert_allclose(got, explanation.values[i], atol=1e-5)
        assert answer["base_value"] == pytest.approx(float(explanation.base_values[i]), abs=1e-5)
    # The bias is the same for every episode: the model's expected margin.
    assert len({round(a["base_value"], 6) for a in answers}) == 1


def test_probability_is_the_calibrated_margin(deployable_model: DeployableModel, record) -> None:
    answer = Scorer(deployable_model).score(record)
    calibrator = deployable_model.calibrator
    expected = _sigmoid(calibrator.slope_ * answer["margin"] + calibrator.intercept_)
    assert answer["probability"] == pytest.approx(expected, abs=1e-9)
    assert answer["band"] == deployable_model.bands.band_of(answer["probability"])
    assert answer["model"] == {
        "name": "ctit-response",
        "version": "7",
        "label_definition": "plt100_or_rise50_d14",
    }


def test_top_factors_speak_plain_words(scorer: Scorer, record) -> None:
    record["labs"] = [lab for lab in record["labs"] if lab["test"] not in ("777-3", "PLT")]
    index = pd.Timestamp(record["episode"]["index_date"])
    when = (index - pd.Timedelta(days=2)).isoformat()
    record["labs"].append({"time": when, "test": "PLT", "value": 12, "unit": "10*9/L"})
    answer = scorer.score(record)
    factors = {factor["feature"]: factor for factor in answer["top_factors"]}
    assert "plt_last" in factors, answer["top_factors"]
    assert factors["plt_last"]["text"] == (
        "platelet count 12 ×10⁹/L two days before the index date: lowers the chance of response"
    )
    assert factors["plt_last"]["contribution"] < 0
    magnitudes = [abs(f["contribution"]) for f in answer["top_factors"]]
    assert magnitudes == sorted(magnitudes, reverse=True)


def test_warnings_name_missing_stale_and_out_of_range_labs(scorer: Scorer, record) -> None:
    index = pd.Timestamp(record["episode"]["index_date"])
    labs = [lab for lab in record["labs"] if lab["test"] not in ("HGB", "ALB")]
    labs.append(
        {
            "time": (index - pd.Timedelta(days=20)).isoformat(),
            "test": "ALB",
            "value": 36,
            "unit": "g/L",
        }
    )
    for lab in labs:
        if lab["test"] == "ANC":
            lab["value"] = 40.0  # far above anything in training, still possible
    answer = scorer.score({**record, "labs": labs})
    codes = {(w["code"], w.get("feature")) for w in answer["warnings"]}
    assert ("missing_lab", "hgb_last") in codes
    assert ("stale_lab", "alb_days_since") in codes
    assert ("out_of_range", "anc_last") in codes
    assert ("improbable_value", None) not in codes  # 40 x10^9/L neutrophils is within 0-50
    stale = next(w for w in answer["warnings"] if w["code"] == "stale_lab")
    assert "20 days old" in stale["message"]


def test_warnings_for_unknown_drugs_late_rows_and_improbable_values(scorer: Scorer, record) -> None:
    index = pd.Timestamp(record["episode"]["index_date"])
    late = (index + pd.Timedelta(days=3)).date().isoformat()
    record["regimens"].append({"start_date": late, "drugs": ["zorbicillin"]})
    record["regimens"].append(
        {"start_date": record["regimens"][0]["start_date"], "drugs": ["fantasimab"]}
    )
    record["labs"].append({"time": late, "test": "PLT", "value": 140, "unit": "10*9/L"})
    record["labs"].append(
        {"time": record["labs"][0]["time"], "test": "CREA", "value": 1400, "unit": "umol/L"}
    )
    answer = scorer.score(record)
    by_code: dict[str, list[dict]] = {}
    for warning in answer["warnings"]:
        by_code.setdefault(warning["code"], []).append(warning)
    assert (
        "1 lab result dated after the index date not used"
        in by_code["labs_after_index"][0]["message"]
    )
    assert by_code["regimen_after_index"][0]["loc"] == ["regimens", 2, "start_date"]
    assert any("fantasimab" in w["message"] for w in by_code["unknown_drug"])
    # the unknown drug started after the index date is not the model's business (not used)
    assert not any("zorbicillin" in w["message"] for w in by_code["unknown_drug"])
    assert by_code["improbable_value"][0]["loc"] == ["labs", len(record["labs"]) - 1, "value"]


def test_labs_after_the_index_date_do_not_change_the_score(scorer: Scorer, record) -> None:
    before = scorer.score(record)
    index = pd.Timestamp(record["episode"]["index_date"])
    later = [
        {"time": (index + pd.Timedelta(days=d)).isoformat(), "test": "PLT", "value": v,
         "unit": "10*9/L"}
        for d, v in ((1, 5), (4, 300), (9, 20))
    ]  # fmt: skip
    after = scorer.score({**record, "labs": record["labs"] + later})
    assert after["probability"] == before["probability"]
    assert after["contributions"] == before["contributions"]


def test_unseen_category_is_warned(model_builder, training_records) -> None:
    records, y = training_records
    tnbc = [copy.deepcopy(r) for r in records[:60]]
    for r in tnbc:
        r["patient"]["subtype"] = "TNBC"
    model = model_builder(tnbc, y[:60], n_folds=2)
    answer = Scorer(model).score(records[1])  # subtype HER2+, never seen by this pipeline
    unseen = [w for w in answer["warnings"] if w["code"] == "unseen_category"]
    assert len(unseen) == 1 and "'HER2+' was not seen" in unseen[0]["message"]
    assert "r0e0" not in unseen[0]["message"]  # internal ids never leak into messages


# -- persistence -----------------------------------------------------------------------------------


def test_save_and_load_give_the_same_answers(deployable_model, model_dir: Path, record) -> None:
    loaded = DeployableModel.load(model_dir)
    assert Scorer(loaded).score(record) == Scorer(deployable_model).score(record)
    assert loaded.metadata == deployable_model.metadata
    assert len(loaded.fold_boosters) == 3


def test_missing_model_fails_at_load_naming_the_path(tmp_path: Path) -> None:
    where = tmp_path / "nowhere"
    with pytest.raises(ModelLoadError, match=re.escape(f"model {where}: no such file")):
        Scorer.load(str(where))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="neither a ctit deployable model nor an MLflow"):
        Scorer.load(str(tmp_path / "empty"))


def test_corrupted_model_fails_at_load_naming_the_file(model_dir: Path, tmp_path: Path) -> None:
    import shutil

    broken = Path(shutil.copytree(model_dir, tmp_path / "broken"))
    raw = bytearray((broken / "booster.ubj").read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    (broken / "booster.ubj").write_bytes(bytes(raw))
    with pytest.raises(ModelLoadError, match=r"file booster\.ubj is corrupted"):
        Scorer.load(str(broken))
    (broken / "fold_01.ubj").unlink()
    with pytest.raises(ModelLoadError, match=r"broken: file (booster\.ubj is corrupted|fold_01)"):
        load_deployable_model(str(broken))
    (broken / "manifest.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(ModelLoadError, match="manifest.json is corrupted"):
        load_deployable_model(str(broken))


def test_metadata_must_name_the_model(deployable_model: DeployableModel) -> None:
    with pytest.raises(ValueError, match="metadata lacks label_definition"):
        DeployableModel(
            pipeline=deployable_model.pipeline,
            booster=deployable_model.booster,
            calibrator=deployable_model.calibrator,
            metadata={"name": "x", "version": "1"},
        )


# -- MLflow ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tracking(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("mlflow")
    previous = mlflow.get_tracking_uri()
    # the registry follows the tracking URI; setting it globally here would outlive the module
    # (a later test's `MlflowClient(tracking_uri=...)` would then look in this store's registry)
    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlruns.db'}")
    experiment = mlflow.create_experiment("serving-tests", artifact_location=str(root / "art"))
    yield experiment
    mlflow.set_tracking_uri(previous)


def test_pyfunc_logs_registers_and_predicts_probabilities(
    tracking: str, deployable_model: DeployableModel, training_records
) -> None:
    records, _ = training_records
    with mlflow.start_run(experiment_id=tracking) as run:
        info = log_deployable_model(
            deployable_model,
            "model",
            registered_model_name="ctit-response",
            input_example=records[0],
        )
    client = mlflow.MlflowClient()
    version = client.search_model_versions("name='ctit-response'")[0].version
    client.set_registered_model_alias("ctit-response", "champion", version)

    assert info.signature.inputs.input_names() == ["record"]
    requirements = Path(mlflow.artifacts.download_artifacts(info.model_uri)) / "requirements.txt"
    assert "xgboost==" in requirements.read_text()

    pyfunc = mlflow.pyfunc.load_model(info.model_uri)
    frame = pd.DataFrame({"record": [json.dumps(r) for r in records[:5]]})
    out = pyfunc.predict(frame)
    expected = Scorer(deployable_model).score_batch(records[:5], explain=False)
    assert list(out["episode_id"]) == [r["episode"]["episode_id"] for r in records[:5]]
    np.testing.assert_allclose(out["probability"], [e["probability"] for e in expected])
    assert out["probability"].between(0, 1).all() and set(out["band"]) <= {
        "low",
        "intermediate",
        "high",
    }

    by_alias = Scorer.load("models:/ctit-response@champion")
    assert by_alias.model.info["version"] == str(version)
    assert by_alias.score(records[0])["probability"] == pytest.approx(expected[0]["probability"])
    by_run = load_deployable_model(f"runs:/{run.info.run_id}/model")
    assert by_run.feature_names == deployable_model.feature_names


def test_unknown_registry_model_fails_naming_the_uri(tracking: str) -> None:
    with pytest.raises(ModelLoadError, match="model models:/no-such-model@champion: cannot be"):
        Scorer.load("models:/no-such-model@champion")


@pytest.mark.slow
def test_mlflow_models_serve_returns_probabilities(
    tracking: str, deployable_model: DeployableModel, training_records, tmp_path: Path
) -> None:
    import os
    import signal
    import socket
    import subprocess
    import sys
    import time

    import httpx

    records, _ = training_records
    with mlflow.start_run(experiment_id=tracking):
        info = log_deployable_model(deployable_model, "served", input_example=records[0])
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    bin_dir = Path(sys.executable).parent
    env = {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ.get('PATH', '')}",
        "MLFLOW_TRACKING_URI": mlflow.get_tracking_uri(),
    }
    argv = [str(bin_dir / "mlflow"), "models", "serve", "-m", info.model_uri, "--env-manager",
            "local", "-h", "127.0.0.1", "-p", str(port)]  # fmt: skip
    # stderr goes to a file: an undrained pipe fills up and blocks the server's logging
    log = tmp_path / "mlflow-serve.log"
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            argv, env=env, stdout=subprocess.DEVNULL, stderr=sink, start_new_session=True
        )
    try:
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, log.read_text(errors="replace")[-2000:]
            try:
                if httpx.get(f"http://127.0.0.1:{port}/ping", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "mlflow models serve did not start"
            time.sleep(0.25)
        body = {
            "dataframe_split": {
                "columns": ["record"],
                "data": [[json.dumps(r)] for r in records[:3]],
            }
        }
        response = httpx.post(f"http://127.0.0.1:{port}/invocations", json=body, timeout=60)
        assert response.status_code == 200, response.text
        predictions = response.json()["predictions"]
        expected = Scorer(deployable_model).score_batch(records[:3], explain=False)
        assert [p["episode_id"] for p in predictions] == [e["episode_id"] for e in expected]
        np.testing.assert_allclose(
            [p["probability"] for p in predictions], [e["probability"] for e in expected]
        )
        bad = {"dataframe_split": {"columns": ["record"], "data": [['{"patient": {}}']]}}
        refused = httpx.post(f"http://127.0.0.1:{port}/invocations", json=bad, timeout=60)
        assert refused.status_code == 400 and "patient_id" in refused.text
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


def test_interval_is_the_fold_models_spread(deployable_model: DeployableModel, record) -> None:
    from data.cohort import cohort_from_tables
    from serving.request.records import RecordBatch, validate_record

    answer = Scorer(deployable_model).score(record)
    batch = RecordBatch.from_requests([validate_record(record)])
    X = deployable_model.prepare(cohort_from_tables(batch.tables)).X
    calibrator = deployable_model.calibrator
    folds = sorted(
        float(_sigmoid(calibrator.slope_ * float(b.inplace_predict(X, predict_type="margin")[0])
                       + calibrator.intercept_))
        for b in deployable_model.fold_boosters
    )  # fmt: skip
    # Three fold models: linear interpolation puts the 10th percentile at 20% of the way from
    # the lowest to the middle one, and the 90th at 80% of the way from the middle to the highest.
    low = folds[0] + 0.2 * (folds[1] - folds[0])
    high = folds[1] + 0.8 * (folds[2] - folds[1])
    p = answer["probability"]
    assert answer["interval"][0] == pytest.approx(min(low, p), abs=1e-9)
    assert answer["interval"][1] == pytest.approx(max(high, p), abs=1e-9)


# -- the numpy tree walk of small inputs -----------------------------------------------------------


def _training_matrix(deployable_model: DeployableModel, records: list[dict]) -> np.ndarray:
    from data.cohort import cohort_from_tables
    from serving.request.records import RecordBatch, validate_record

    batch = RecordBatch.from_requests([validate_record(r) for r in records])
    return deployable_model.prepare(cohort_from_tables(batch.tables)).X


def test_small_inputs_get_xgboosts_margins_to_the_bit(
    deployable_model: DeployableModel, training_records
) -> None:
    X = _training_matrix(deployable_model, training_records[0][:60])
    # Missing values and values exactly on split thresholds take xgboost's branches too.
    rng = np.random.default_rng(3)
    X[rng.random(X.shape) < 0.25] = np.nan
    X[::7, 0] = 40.0
    assert deployable_model._forest is not None
    boosters = [deployable_model.booster, *deployable_model.fold_boosters]
    expected = np.vstack([b.inplace_predict(X, predict_type="margin") for b in boosters])
    for size in (1, 3, 8):
        got = np.hstack(
            [deployable_model._forest.margins(X[i : i + size]) for i in range(0, len(X), size)]
        )
        np.testing.assert_array_equal(got, expected)
    # One row at a time (the numpy walk) and all rows at once (xgboost) give the same answers.
    whole = deployable_model.predict_matrix(X)
    for i in range(0, len(X), 5):
        single = deployable_model.predict_matrix(X[i : i + 1])
        for key in ("margin", "probability", "interval_low", "interval_high", "band"):
            np.testing.assert_array_equal(single[key], whole[key][i : i + 1])


def test_the_tree_walk_declines_what_it_does_not_reproduce() -> None:
    import xgboost as xgb

    from serving.predict.forest import _Forest

    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 4)).astype(np.float32)
    y = (X[:, 0] + rng.normal(size=200) > 0).astype(int)

    def train(**params: object) -> xgb.Booster:
        matrix = xgb.DMatrix(X, label=y, nthread=1)
        return xgb.train({"nthread": 1, "max_depth": 3, **params}, matrix, num_boost_round=5)

    assert _Forest.build([train(objective="binary:logistic")]) is not None
    assert _Forest.build([train(objective="reg:squarederror")]) is None
    assert _Forest.build([train(objective="binary:logistic", booster="dart")]) is None


def test_interval_percentiles_equal_numpy() -> None:
    from serving.predict.forest import percentiles

    rng = np.random.default_rng(4)
    for folds in (1, 2, 3, 5, 10):
        values = rng.random((folds, 7))
        got = percentiles(values, (10.0, 90.0))
        assert np.allclose(got, np.percentile(values, (10.0, 90.0), axis=0), atol=1e-15)


def test_explanations_come_from_the_precomputed_table_and_equal_pred_contribs(
    deployable_model, training_records
) -> None:
    import xgboost as xgb

    records, _ = training_records
    from data.cohort import cohort_from_tables
    from serving.request.records import RecordBatch, validate_record

    batch = RecordBatch.from_requests([validate_record(r) for r in records[:40]])
    X = deployable_model.prepare(cohort_from_tables(batch.tables)).X
    deployable_model.warm()
    assert deployable_model._shap is not None  # the fast path serves the fixture model
    expected = deployable_model.booster.predict(
        xgb.DMatrix(X, missing=np.nan, nthread=1), pred_contribs=True, validate_features=False
    )
    assert np.abs(deployable_model.contributions(X) - expected).max() < 2e-5


def test_a_failing_table_build_falls_back_to_xgboost(
    model_builder, training_records, monkeypatch
) -> None:
    import xgboost as xgb

    import serving.bundle.model as model_module

    def broken(booster):
        raise MemoryError("no room for the table")

    monkeypatch.setattr(model_module.ShapTable, "build", staticmethod(broken))
    model = model_builder(*training_records)
    model.warm()  # a load must not fail because the fast path cannot be built
    assert model._shap is None
    X = np.zeros((2, len(model.feature_names)), dtype=np.float32)
    expected = model.booster.predict(
        xgb.DMatrix(X, missing=np.nan, nthread=1), pred_contribs=True, validate_features=False
    )
    assert np.array_equal(model.contributions(X), expected)
