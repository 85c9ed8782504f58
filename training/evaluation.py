"""Evaluation of out-of-fold predictions: overall metrics, subgroups and the decision curve."""

from __future__ import annotations

import numpy as np
import pandas as pd

from training import metrics as m
from training.config import EvaluationConfig
from training.crossval import prediction_matrix

MODELS = {"xgboost": "p_xgb", "logreg": "p_logreg", "plt_baseline": "p_plt"}
SUBGROUP_COLUMNS = ("subtype", "baseline_plt", "regimen_class", "age_band", "site")

_REGIMEN_ORDER = (
    ("gemcitabine/platinum", ("gemcitabine", "platinum")),
    ("adc", ("adc",)),
    ("anthracycline/taxane", ("anthracycline", "taxane")),
    ("targeted/endocrine", ("cdk46", "parp", "anti_her2", "endocrine", "immunotherapy")),
)


def _present(predictions: pd.DataFrame) -> list[tuple[str, str]]:
    """The models that have a prediction column (an old artifact may lack the comparators)."""
    return [(model, column) for model, column in MODELS.items() if column in predictions]


def regimen_class(classes: str | None) -> str:
    """Coarse class of the regimen current at the index date (most myelotoxic first)."""
    if classes is None or (isinstance(classes, float) and np.isnan(classes)) or classes == "":
        return "none recorded"
    present = set(str(classes).split(";"))
    for label, members in _REGIMEN_ORDER:
        if present & set(members):
            return label
    return "other chemotherapy"


def subgroup_frame(cohort, labels: pd.DataFrame) -> pd.DataFrame:
    """Subgroup membership per episode: subtype, baseline PLT band, regimen class, age, site."""
    episodes = cohort.episodes.set_index("episode_id")
    patients = cohort.patients.set_index("patient_id")
    out = pd.DataFrame(index=episodes.index)
    pid = episodes["patient_id"]
    for column in ("subtype", "site"):
        if column in patients:
            out[column] = (
                pid.map(patients[column])
                .astype(object)
                .where(pid.map(patients[column]).notna(), "missing")
            )
    base = labels.set_index("episode_id")["baseline_plt"].reindex(out.index)
    out["baseline_plt"] = np.where(base.isna(), "missing", np.where(base < 50, "<50", ">=50"))
    if "age_years" in episodes:
        age = episodes["age_years"]
        out["age_band"] = (
            pd.cut(age, [-np.inf, 50, 65, np.inf], right=False, labels=["<50", "50-64", ">=65"])
            .astype(object)
            .where(age.notna(), "missing")
        )
    out["regimen_class"] = _current_regimen_classes(cohort).reindex(out.index).map(regimen_class)
    return out


def _current_regimen_classes(cohort) -> pd.Series:
    """Classes of the latest regimen started on or before each episode's index date."""
    episodes = cohort.episodes[["episode_id", "patient_id", "index_date"]]
    regimens = cohort.regimens[["patient_id", "start_date", "classes"]].dropna(
        subset=["start_date"]
    )
    merged = episodes.merge(regimens, on="patient_id", how="left")
    merged = merged[merged["start_date"] <= merged["index_date"]]
    latest = merged.sort_values("start_date").groupby("episode_id")["classes"].last()
    return latest.reindex(episodes["episode_id"]).rename(index=None)


def overall_metrics(
    oof: pd.DataFrame, config: EvaluationConfig
) -> dict[str, dict[str, dict[str, float]]]:
    """Every metric with a patient-bootstrap 95% CI, for each model."""
    settings = m.MetricSettings(config.operating_threshold, config.ece_bins)
    out = {}
    for model, column in _present(oof):
        predictions, y, ids = prediction_matrix(oof, column)
        groups = oof.drop_duplicates("episode_id").set_index("episode_id").loc[ids, "patient_id"]
        weights = m.bootstrap_weights(groups.to_numpy(), config.n_bootstrap, config.bootstrap_seed)
        out[model] = m.evaluate(y, predictions, weights, settings)
    return out


def subgroup_metrics(
    oof: pd.DataFrame, subgroups: pd.DataFrame, config: EvaluationConfig, min_n: int = 10
) -> pd.DataFrame:
    """Per-subgroup discrimination and calibration (AUROC with a bootstrap CI)."""
    rows = []
    settings = m.MetricSettings(config.operating_threshold, config.ece_bins)
    fns = m.metric_functions(settings)
    for model, column in _present(oof):
        predictions, y, ids = prediction_matrix(oof, column)
        groups = oof.drop_duplicates("episode_id").set_index("episode_id").loc[ids, "patient_id"]
        members = subgroups.reindex(ids)
        for subgroup in members.columns:
            for level in sorted(members[subgroup].astype(str).unique()):
                mask = (members[subgroup].astype(str) == level).to_numpy()
                n, events = int(mask.sum()), int(y[mask].sum())
                row = {
                    "model": model,
                    "subgroup": subgroup,
                    "level": level,
                    "n": n,
                    "events": events,
                }
                if n >= min_n and 0 < events < n:
                    p_sub, y_sub = predictions[:, mask], y[mask]
                    weights = m.bootstrap_weights(
                        groups.to_numpy()[mask], config.n_bootstrap_subgroup, config.bootstrap_seed
                    )
                    auc = m.evaluate(y_sub, p_sub, weights, settings, names=["auroc"])["auroc"]
                    ones = np.ones((1, n))
                    row.update(
                        auroc=auc["estimate"],
                        auroc_low=auc["low"],
                        auroc_high=auc["high"],
                        **{
                            name: float(np.mean([fns[name](y_sub, p, ones)[0] for p in p_sub]))
                            for name in (
                                "brier",
                                "oe_ratio",
                                "sensitivity",
                                "specificity",
                                "ppv",
                                "npv",
                            )
                        },
                    )
                rows.append(row)
    columns = [
        "model",
        "subgroup",
        "level",
        "n",
        "events",
        "auroc",
        "auroc_low",
        "auroc_high",
        "brier",
        "oe_ratio",
        "sensitivity",
        "specificity",
        "ppv",
        "npv",
    ]
    return pd.DataFrame(rows).reindex(columns=columns)


def decision_curve(oof: pd.DataFrame, config: EvaluationConfig) -> pd.DataFrame:
    """Net benefit over thresholds for each model, treat-all and treat-none (mean over repeats)."""
    start, stop, step = config.decision_thresholds
    thresholds = np.round(np.arange(start, stop + step / 2, step), 6)
    frames = []
    y_all = None
    for model, column in _present(oof):
        predictions, y, _ = prediction_matrix(oof, column)
        y_all = y
        nb = np.mean([m.net_benefit(y, p, thresholds) for p in predictions], axis=0)
        frames.append(pd.DataFrame({"threshold": thresholds, "model": model, "net_benefit": nb}))
    assert y_all is not None
    frames.append(
        pd.DataFrame(
            {
                "threshold": thresholds,
                "model": "treat_all",
                "net_benefit": m.net_benefit_treat_all(y_all, thresholds),
            }
        )
    )
    frames.append(
        pd.DataFrame({"threshold": thresholds, "model": "treat_none", "net_benefit": 0.0})
    )
    return pd.concat(frames, ignore_index=True)


COMPARATORS = {"logreg": "p_logreg", "plt_baseline": "p_plt"}


def paired_comparison(
    oof: pd.DataFrame, config: EvaluationConfig
) -> dict[str, dict[str, dict[str, float]]]:
    """XGBoost minus each comparator on the same episodes, with paired patient-bootstrap 95% CIs.

    Returns `{comparator: {"auroc_diff": {...}, "brier_diff": {...}}}`.
    """
    p_xgb, y, ids = prediction_matrix(oof, "p_xgb")
    groups = oof.drop_duplicates("episode_id").set_index("episode_id").loc[ids, "patient_id"]
    weights = m.bootstrap_weights(groups.to_numpy(), config.n_bootstrap, config.bootstrap_seed)
    out = {}
    for name, column in COMPARATORS.items():
        if column not in oof:
            continue
        p_other, _, other_ids = prediction_matrix(oof, column)
        if other_ids != ids:
            raise ValueError(f"{name} was not predicted on the same episodes as XGBoost")
        out[name] = {
            "auroc_diff": m.paired_difference(m.auroc, y, p_xgb, p_other, weights),
            "brier_diff": m.paired_difference(m.brier, y, p_xgb, p_other, weights),
        }
    return out
