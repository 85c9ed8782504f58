"""Promotion judges what is deployed against the comparators: a candidate that loses to logistic
regression on a cohort built for it to lose is refused, and the refusal says by how much."""

import mlflow
import numpy as np
import pandas as pd
from mlflow.tracking import MlflowClient

from data.cohort import cohort_from_tables
from training.config import parse_experiment
from training.promote import promote
from training.run import train_experiment
from training.tracking import TrackingSettings

LAB_EFFECTS = {  # analyte: (unit, mean, sd); each adds 0.8 x its z-score to the logit
    "HGB": ("g/L", 100, 15),
    "ALB": ("g/L", 38, 4),
    "ANC": ("10*9/L", 3, 1),
    "WBC": ("10*9/L", 5, 1.5),
    "CREA": ("umol/L", 70, 15),
    "ALT": ("U/L", 30, 8),
}


def linear_tables(n_patients: int, seed: int) -> dict[str, pd.DataFrame]:
    """One episode per patient; the response is logistic in six labs with equal weights (the
    case logistic regression is made for) and given in the outcomes table."""
    rng = np.random.default_rng(seed)
    patients, episodes, labs, outcomes = [], [], [], []
    for i in range(n_patients):
        pid, eid = f"L{i:04d}", f"L{i:04d}-E0"
        index = pd.Timestamp("2023-01-01") + pd.Timedelta(days=int(rng.integers(0, 500)))
        patients.append({"patient_id": pid, "sex": "F", "birth_date": "1965-01-01"})
        episodes.append(
            {"episode_id": eid, "patient_id": pid, "index_date": index.date().isoformat()}
        )
        day = (index - pd.Timedelta(days=1)).isoformat()
        logit = 0.0
        for test, (unit, mean, sd) in LAB_EFFECTS.items():
            z = rng.normal()
            logit += 0.8 * z
            labs.append((pid, day, test, mean + sd * z, unit))
        labs.append((pid, day, "PLT", float(rng.integers(20, 70)), "10*9/L"))
        responds = int(rng.random() < 1 / (1 + np.exp(-logit)))
        outcomes.append({"episode_id": eid, "response": responds})
    return {
        "patients": pd.DataFrame(patients),
        "episodes": pd.DataFrame(episodes),
        "labs": pd.DataFrame(labs, columns=["patient_id", "time", "test", "value", "unit"]),
        "outcomes": pd.DataFrame(outcomes),
    }


# The booster is held to fifteen stumps: it can use a few of the six labs, never all of them.
LOSING = {
    "name": "losing",
    "label": {"definition": "given"},
    "model": {
        "n_trials": 1,
        "max_rounds": 15,
        "early_stopping_rounds": 15,
        "search": {"max_depth": [1, 1], "learning_rate": [0.05, 0.05]},
    },
    "validation": {"n_splits": 3, "n_repeats": 1},
    "evaluation": {"n_bootstrap": 200, "n_bootstrap_subgroup": 50, "shap_sample": 50},
    "promotion": {"min_auroc_low": 0.5, "slope_band": [0.0, 10.0]},
}


def test_a_candidate_that_loses_to_logistic_regression_is_refused(tmp_path) -> None:
    settings = TrackingSettings(
        tracking_uri=f"sqlite:///{tmp_path / 'mlruns.db'}",
        experiment_name="losing",
        registered_model="losing-model",
    )
    cohort = cohort_from_tables(linear_tables(300, seed=0))
    result = train_experiment(parse_experiment(LOSING), cohort, tracking=settings)
    diff = result.tuning["comparison"]["logreg"]["auroc_diff"]
    assert diff["high"] < 0  # the cohort did its job: logistic regression is clearly better

    mlflow.set_tracking_uri(settings.tracking_uri)
    client = MlflowClient()
    decision = promote("losing-model", client)
    assert not decision.promoted
    assert [g.name for g in decision.failed] == ["not_worse_than_logreg"]
    detail = decision.failed[0].detail
    assert detail.startswith(
        f"logistic regression is better: its out-of-fold AUROC is {-diff['estimate']:.3f} above "
        "the candidate's"
    )
    assert f"{diff['low']:+.3f} to {diff['high']:+.3f}" in detail
    assert "must be above -0.010" in detail
    # The logged figures the gate read are the training run's paired comparison.
    metrics = client.get_run(result.run_id).data.metrics
    assert metrics["xgboost_minus_logreg.auroc_diff"] == diff["estimate"]
    try:
        client.get_model_version_by_alias("losing-model", "champion")
        raise AssertionError("a losing candidate became champion")
    except mlflow.exceptions.MlflowException:
        pass
