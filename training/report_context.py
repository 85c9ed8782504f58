"""Everything the reviewer report shows, computed as plain data (no HTML).

`build_context(result, settings)` returns a `ReportContext` (`training.report_types`: frozen
dataclasses of strings, numbers, tuples and `Table`s, and figures as base64 PNG data URIs from
`training.plots`). The shared inputs are computed once (`_features`, `_shap`, `_identity`), then
one function per section: `key_figures_section`, `summary_section` (with `model_spec`),
`performance_section`, `explanations_section`, `plausibility_section`, `stability_section`,
`gallery_section`, `limitations` and `tripod_section`. `training.report` renders the context with
the Jinja templates of `training/templates`.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import shap

from data.labels import get_definition
from features.registry import (
    FeatureSpec,
    feature_label,
    missing_text,
    outcome_words,
    spec_of,
    unit_text,
    value_words,
)
from training import plots
from training.explain import (
    ProbabilityMap,
    feature_importance,
    group_importance,
    plausibility_table,
    probability_scale,
    rank_stability,
    select_cases,
    sigmoid_then,
    tree_shap,
)
from training.report_tripod import load_checklist
from training.report_types import (
    Badge,
    Case,
    Cell,
    Explanations,
    Figure,
    Gallery,
    KeyCell,
    KeyFigure,
    KeyFigures,
    Performance,
    Plausibility,
    ReportContext,
    ReportError,
    ReportSettings,
    RileyVerdict,
    SampleSize,
    Stability,
    Summary,
    Table,
    Tripod,
    Uncertainty,
    ci,
    fmt,
    humanise,
    table,
)

if TYPE_CHECKING:
    from training.result import TrainResult

log = logging.getLogger(__name__)

SECTIONS: tuple[tuple[str, str], ...] = (
    ("key-figures", "Key figures"),
    ("summary", "Summary"),
    ("performance", "Performance"),
    ("global-explanations", "Global explanations"),
    ("plausibility", "Plausibility"),
    ("stability", "Stability"),
    ("case-gallery", "Case gallery"),
    ("limitations", "Limitations"),
    ("tripod", "TRIPOD+AI"),
)

INTENDED_USE = (
    "Decision support for clinicians treating adult patients with breast cancer who have "
    "cancer-therapy-induced thrombocytopenia (CTIT) and are about to start hetrombopag: the model "
    "estimates, before the first dose, the probability that this episode of CTIT responds, from "
    "baseline laboratory values, platelet history, regimen history and clinical characteristics. "
    "It supports, and does not replace, clinical judgement; it is not validated for other "
    "cancers, other thrombopoietin-receptor agonists, children, or decisions after treatment "
    "starts."
)

METRIC_LABELS = {
    "auroc": "AUROC (C statistic)",
    "auprc": "AUPRC",
    "brier": "Brier score",
    "scaled_brier": "Scaled Brier",
    "calibration_intercept": "Calibration intercept (CITL)",
    "calibration_slope": "Calibration slope",
    "oe_ratio": "Observed:expected ratio",
    "ece": "Expected calibration error",
    "sensitivity": "Sensitivity",
    "specificity": "Specificity",
    "ppv": "PPV",
    "npv": "NPV",
}

GROUP_LABELS = {
    "labs": "Laboratory values",
    "platelet_history": "Platelet history",
    "regimen_history": "Regimen history",
    "clinical": "Clinical characteristics",
    "extra": "Extra (experiment-specific)",
    "other": "Other",
}

RILEY_CRITERIA = {
    "overall_risk": "Overall risk within ±0.05",
    "mape": "Mean absolute prediction error ≤ 0.05",
    "shrinkage": "Expected shrinkage ≥ 0.9",
    "optimism": "Optimism in Nagelkerke R² ≤ 0.05",
}

DIRECTION_WORDS = {1: "higher → more response", -1: "higher → less response", 0: "≈ none"}

#: The key figures of the first screen: (metric, what it says, better when).
KEY_METRICS = (
    ("auroc", "Discrimination: AUROC (C statistic)", "higher"),
    ("calibration_slope", "Calibration slope", "near 1"),
    ("calibration_intercept", "Calibration intercept (calibration-in-the-large)", "near 0"),
    ("oe_ratio", "Observed:expected ratio", "near 1"),
    ("brier", "Brier score", "lower"),
)

TIME_METRICS = {
    "harrell_c": "Harrell's C (time model)",
    "uno_c": "Uno's C (time model, IPCW, to the horizon)",
    "curve_harrell_c": "Harrell's C of the served P(response by day 7)",
    "day7.oe_ratio": "Day 7: observed / expected",
    "day7.calibration_intercept": "Day 7: calibration intercept",
    "day7.calibration_slope": "Day 7: calibration slope",
    "day7.brier": "Day 7: Brier score",
    "day14.oe_ratio": "Day 14: observed / expected",
    "day14.calibration_intercept": "Day 14: calibration intercept",
    "day14.calibration_slope": "Day 14: calibration slope",
    "aft_day14.oe_ratio": "Day 14 before reconciliation (AFT alone): observed / expected",
    "responders.median_abs_error_days": "Responders: days from the predicted median day to "
    "the observed response interval",
    "responders.median_in_observed_interval": "Responders: median day inside the observed interval",
}

_MODELS = ("xgboost", "logreg", "plt_baseline")
_PLAUSIBILITY_BADGES = {
    "agrees": "ok",
    "contradicts": "flag",
    "no clear direction": "warn",
    "not used by the model": "warn",
    "not assessable": "na",
}


def _frame_table(frame: pd.DataFrame | None) -> Table | None:
    if frame is None or frame.empty:
        return None
    if not isinstance(frame.index, pd.RangeIndex):
        frame = frame.reset_index()
    numeric = [i for i, c in enumerate(frame.columns) if pd.api.types.is_numeric_dtype(frame[c])]
    return table([humanise(c) for c in frame.columns], frame.itertuples(index=False), numeric)


def _flatten(mapping: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    items: list[tuple[str, Any]] = []
    for key, value in mapping.items():
        label = f"{prefix}{humanise(key)}"
        if isinstance(value, Mapping):
            items.extend(_flatten(value, prefix=f"{label} / "))
        else:
            items.append((label, value))
    return items


def _flatten_values(mapping: Mapping[str, Any]) -> list[Any]:
    return [v for _, v in _flatten(mapping)]


def _mapping_table(mapping: Mapping[str, Any] | None) -> Table | None:
    if not mapping:
        return None
    return table(["Item", "Value"], _flatten(mapping), numeric=[1])


def _capital(text: str) -> str:
    return text[:1].upper() + text[1:]


def _number(value: Any) -> float | None:
    return None if value is None else float(value)


def _direction(value: Any) -> str:
    """A direction (+1, -1, 0) in words; '—' when there is none."""
    if value is None or pd.isna(value):
        return "—"
    return DIRECTION_WORDS[int(value)]


def display_labels(columns: Iterable[str]) -> dict[str, str]:
    """Each feature's clinical name with its unit, as the report's plots and tables show it."""
    out = {}
    for name in columns:
        try:
            unit = unit_text(spec_of(name).unit)
        except KeyError:
            unit = ""
        out[name] = feature_label(name) + (f" ({unit})" if unit else "")
    return out


def _value_cell(name: str, value: float) -> str:
    """A value for a table whose row already names the feature and its unit."""
    try:
        unit = spec_of(name).unit
    except KeyError:
        unit = ""
    if unit == "0/1" or "=" in name:
        return "yes" if value >= 0.5 else "no"
    return fmt(value)


# --------------------------------------------------------------------------------------------
# Inputs: what several sections share


def _check_result(result: TrainResult) -> None:
    if result.model is None or getattr(result.model, "booster", None) is None:
        raise ReportError("TrainResult.model: no deployable model with a booster to explain")
    if result.X is None or result.X.empty:
        raise ReportError("TrainResult.X: no labelled episodes to explain")
    if len(result.y) != len(result.X):
        raise ReportError(
            f"TrainResult.y has {len(result.y)} rows but TrainResult.X has {len(result.X)}"
        )
    missing = {"y", "p_xgb"} - set(result.oof.columns)
    if missing:
        raise ReportError(f"TrainResult.oof lacks columns {sorted(missing)}")


def _config(result: TrainResult, *path: str, default: Any = None) -> Any:
    node: Any = result.config or {}
    for key in path:
        if not isinstance(node, Mapping) or key not in node:
            return default
        node = node[key]
    return node


def _threshold(result: TrainResult) -> float:
    bands = getattr(result.model, "bands", None)
    value = getattr(bands, "operating_threshold", None)
    if value is None:
        value = _config(result, "evaluation", "operating_threshold", default=0.5)
    return float(value)


def _to_probability(result: TrainResult) -> ProbabilityMap:
    calibrator = getattr(result.model, "calibrator", None)
    if calibrator is not None and hasattr(calibrator, "transform_margin"):
        return calibrator.transform_margin
    return sigmoid_then(None if calibrator is None else calibrator.transform)


def _is_simulated(result: TrainResult) -> bool:
    summary = result.cohort_summary or {}
    return any("simulat" in str(v).lower() for v in _flatten_values(summary)) or bool(
        _config(result, "cohort", "simulate")
    )


@dataclass(frozen=True)
class _Features:
    """The model's features as the report names them."""

    X: pd.DataFrame
    specs: dict[str, FeatureSpec | None]
    groups: dict[str, str]
    labels: dict[str, str]
    monotone: dict[str, int]

    @property
    def expected(self) -> dict[str, int | None]:
        return {name: (spec.direction if spec else None) for name, spec in self.specs.items()}


@dataclass(frozen=True)
class _Shap:
    """Exact TreeSHAP of every labelled episode, the sample the global plots use, and what the
    plausibility and stability sections read from it."""

    every: shap.Explanation
    sample: shap.Explanation
    gap: float
    importance: pd.DataFrame
    plausibility: pd.DataFrame
    stability_features: list[str]


@dataclass(frozen=True)
class _Identity:
    name: str
    version_label: str
    registered: bool
    run_short: str


def _features(result: TrainResult) -> _Features:
    columns = list(result.model.booster.feature_names or result.X.columns)
    X = result.X[columns] if set(columns) <= set(result.X.columns) else result.X
    specs: dict[str, FeatureSpec | None] = {}
    for name in X.columns:
        try:
            specs[name] = spec_of(name)
        except KeyError:
            log.warning("report: feature %r is not declared in features.registry", name)
            specs[name] = None
    pipeline = getattr(result.model, "pipeline", None)
    groups = {}
    for name, spec in specs.items():
        group = None
        if pipeline is not None and hasattr(pipeline, "group_of"):
            try:
                group = pipeline.group_of(name)
            except (KeyError, ValueError):
                group = None
        if group is None and spec is not None:
            group = spec.group
        groups[name] = group or "other"
    monotone = {k: int(v) for k, v in (result.monotone_constraints or {}).items()}
    return _Features(X, specs, groups, display_labels(X.columns), monotone)


def _shap(result: TrainResult, features: _Features, settings: ReportSettings) -> _Shap:
    # Exact TreeSHAP on every labelled episode (cheap) for the case gallery; the global plots use
    # a seeded sample when the cohort is large.
    try:
        every, gap = tree_shap(result.model.booster, features.X)
    except ValueError as error:
        raise ReportError(f"TrainResult.X: {error}") from error
    limit = settings.max_explained or int(
        _config(result, "evaluation", "shap_sample", default=1000)
    )
    X = features.X
    sampled = X if len(X) <= limit else X.sample(n=limit, random_state=settings.seed).sort_index()
    sample = every[X.index.get_indexer(sampled.index)]
    importance = feature_importance(sample)
    plausibility = plausibility_table(
        sample, features.expected, features.monotone, settings.direction
    )
    stability_features = importance["feature"].head(settings.stability_features).tolist()
    return _Shap(every, sample, gap, importance, plausibility, stability_features)


def _identity(result: TrainResult) -> _Identity:
    metadata = getattr(result.model, "metadata", {}) or {}
    version_label = result.registered_version or metadata.get("version")
    registered = version_label not in (None, "", "unregistered")
    run_short = (result.run_id or "")[:12] or "—"
    if not registered:
        # The copy logged with the run is written before the version exists; say what it is.
        version_label = f"not registered when written (MLflow run {run_short})"
    return _Identity(metadata.get("name", "ctit model"), str(version_label), registered, run_short)


def _has_folds(result: TrainResult) -> bool:
    return result.fold_importance is not None and not result.fold_importance.empty


# --------------------------------------------------------------------------------------------
# Key figures


def key_figures(metrics: Mapping[str, Mapping[str, Mapping[str, float]]]) -> tuple[KeyFigure, ...]:
    """The first screen's rows: each key metric for XGBoost and the comparators, with CIs."""
    models = [m for m in _MODELS if m in metrics]
    rows = []
    for key, label, better in KEY_METRICS:
        cells = []
        for model in models:
            cell = metrics[model].get(key) or {}
            low, high = _number(cell.get("low")), _number(cell.get("high"))
            cells.append(KeyCell(model, ci(cell), _number(cell.get("estimate")), low, high))
        rows.append(KeyFigure(key, label, better, tuple(cells)))
    return tuple(rows)


def _contradicted(plausibility: pd.DataFrame) -> str:
    """The features whose learned direction contradicts clinical expectation, in words ("" if
    none): the key flags and the limitations say the same."""
    features = plausibility.loc[plausibility["status"] == "contradicts", "feature"]
    return ", ".join(feature_label(c) for c in features)


def _small_subgroup_levels(result: TrainResult) -> int:
    """How many subgroup levels of the XGBoost model rest on fewer than 30 episodes."""
    subgroups = result.subgroups
    if subgroups is None or subgroups.empty or "n" not in subgroups:
        return 0
    if "model" in subgroups:
        subgroups = subgroups[subgroups["model"] == "xgboost"]
    return int((subgroups["n"] < 30).sum())


def _flags(result: TrainResult, plausibility: pd.DataFrame) -> tuple[str, ...]:
    """What a reviewer must look at first: weak calibration or discrimination, sample size,
    contradicted directions, small subgroups, a simulated cohort."""
    metrics = result.metrics or {}
    flags = []
    xgb = metrics.get("xgboost", {})
    auroc = (xgb.get("auroc") or {}).get("low")
    if auroc is not None and auroc < 0.7:
        flags.append(f"AUROC lower 95% bound {auroc:.3f} is below 0.70.")
    slope = xgb.get("calibration_slope") or {}
    if slope.get("estimate") is not None and not 0.8 <= slope["estimate"] <= 1.2:
        flags.append(f"Calibration slope {slope['estimate']:.3f} is outside 0.8 to 1.2.")
    base = (metrics.get("logreg") or {}).get("auroc") or {}
    if base.get("estimate") is not None and (xgb.get("auroc") or {}).get("estimate") is not None:
        gain = xgb["auroc"]["estimate"] - base["estimate"]
        if gain < 0.01:
            flags.append(
                f"XGBoost adds {gain:+.3f} AUROC over logistic regression: the simpler model "
                "may do as well."
            )
    for message in (result.sample_size or {}).get("warnings") or []:
        flags.append(f"Sample size: {message}.")
    contradicting = _contradicted(plausibility)
    if contradicting:
        flags.append(f"Learned direction contradicts clinical expectation for {contradicting}.")
    n_small = _small_subgroup_levels(result)
    if n_small:
        flags.append(f"{n_small} subgroup levels have fewer than 30 episodes.")
    if _is_simulated(result):
        flags.append("The cohort is simulated: the figures test the software, not the clinic.")
    return tuple(flags)


def key_figures_section(result: TrainResult, shap_values: _Shap) -> KeyFigures:
    metrics = result.metrics or {}
    return KeyFigures(
        outcome_words=outcome_words(result.label_definition),
        n_episodes=len(result.y),
        n_events=int(result.y.astype(int).sum()),
        models=tuple(plots.MODEL_LABELS.get(m, m) for m in _MODELS if m in metrics),
        rows=key_figures(metrics),
        flags=_flags(result, shap_values.plausibility),
    )


# --------------------------------------------------------------------------------------------
# 1. Summary


def _label_text(result: TrainResult) -> str:
    name = result.label_definition
    try:
        definition = get_definition(name)
    except ValueError as error:
        raise ReportError(f"TrainResult.label_definition: {error}") from error
    if definition.given_only:
        return (
            f"{name}: {definition.describe()}; the software did not derive these labels, so the "
            "authors must state how and by whom response was assessed, and whether blinded."
        )
    return (
        f"{name}: an episode responds when {definition.describe()} (the index date is the first "
        "hetrombopag dose). Baseline PLT is the last PLT in the 3 days up to and including the "
        "index date. Episodes with no baseline PLT, or with no PLT in the horizon and no recorded "
        "outcome, have no label and are excluded (see attrition). The label is derived from "
        "laboratory values by code, so outcome assessment is objective and the same across sites "
        "and patient groups."
    )


def _cohort_facts(result: TrainResult) -> tuple[tuple[str, str], ...]:
    y = result.y.astype(int)
    events = int(y.sum())
    facts = [
        ("Labelled episodes", fmt(len(y))),
        ("Patients with a labelled episode", fmt(int(result.groups.nunique()))),
        ("Responders (events)", f"{events:,} ({100 * events / len(y):.1f}%)"),
        ("Non-responders", fmt(len(y) - events)),
    ]
    summary = result.cohort_summary or {}
    facts += [(k, fmt(v)) for k, v in _flatten(summary) if "date" in k.lower()]
    subgroups = result.subgroups
    if subgroups is not None and not subgroups.empty and "subgroup" in subgroups:
        sites = sorted(subgroups.loc[subgroups["subgroup"] == "site", "level"].astype(str).unique())
        if sites:
            facts.append(("Sites", f"{len(sites)}: {', '.join(sites)}"))
    facts += _simulation_facts(summary)
    skip = {"tables", "conversions", "outcomes", "simulation"}
    # The cohort summary counts the whole cohort; the rows above count the labelled episodes.
    whole = {"Patients": "Patients in the cohort (all)", "Episodes": "Episodes in the cohort (all)"}
    for key, value in _flatten({k: v for k, v in summary.items() if k not in skip}):
        if "date" not in key.lower():
            facts.append((whole.get(key, f"{key} (whole cohort)"), fmt(value)))
    return tuple(facts)


def _simulation_facts(summary: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The simulator's true response with and without hetrombopag (oracle.csv), if simulated."""
    sim = summary.get("simulation")
    if not isinstance(sim, Mapping) or "response_untreated" not in sim:
        return []
    return [
        (
            "Simulated response with hetrombopag (true probability, all episodes)",
            f"{100 * float(sim['response_with_hetrombopag']):.1f}%",
        ),
        (
            "Simulated response without it (same episodes, same label definition)",
            f"{100 * float(sim['response_untreated']):.1f}%",
        ),
        ("Simulated mean benefit of hetrombopag", f"{float(sim['mean_benefit']):.3f}"),
    ]


def _sample_size(sample_size: Mapping[str, Any]) -> SampleSize | None:
    if not sample_size:
        return None
    riley = sample_size.get("riley")
    verdict = None
    if riley:
        n, minimum = sample_size.get("n_episodes"), riley.get("minimum_n")
        criteria = riley.get("criteria", {})
        verdict = RileyVerdict(
            n_episodes=fmt(n),
            minimum_n=fmt(minimum),
            limited_by=RILEY_CRITERIA.get(riley.get("limiting_criterion"), "?").lower(),
            enough=n is not None and minimum is not None and n >= minimum,
            criteria=table(
                ["Criterion (Riley et al., BMJ 2020)", "Minimum episodes"],
                [(RILEY_CRITERIA.get(k, humanise(k)), v) for k, v in criteria.items()],
                numeric=[1],
            ),
        )
    rest = {k: v for k, v in sample_size.items() if k not in {"riley", "warnings"}}
    warnings = tuple(str(m) for m in sample_size.get("warnings") or [])
    return SampleSize(verdict, warnings, _mapping_table(rest))


def _predictors(features: _Features) -> Table:
    rows = []
    for name in features.X.columns:
        spec = features.specs.get(name)
        group = features.groups[name]
        rows.append(
            (
                Cell(text=feature_label(name), code=name),
                GROUP_LABELS.get(group, group),
                unit_text(spec.unit) or spec.unit if spec else "—",
                spec.description if spec else "not declared in the registry",
                DIRECTION_WORDS.get(spec.direction, "—") if spec and spec.direction else "—",
                _direction(features.monotone.get(name)),
                f"{100 * float(features.X[name].isna().mean()):.1f}%",
            )
        )
    return table(
        ["Feature", "Group", "Unit", "Definition", "Expected", "Constraint", "Missing"],
        rows,
        numeric=[6],
    )


def summary_section(result: TrainResult, features: _Features, identity: _Identity) -> Summary:
    return Summary(
        intended_use=INTENDED_USE,
        model_facts=(
            ("Model", f"{identity.name}, version {identity.version_label}"),
            ("Intended users", "oncologists and haematologists; reviewers of the model"),
            ("Prediction time", "the index date, before the first hetrombopag dose"),
            ("Output", "calibrated probability that this CTIT episode responds, with a band"),
        ),
        label_text=_label_text(result),
        cohort_facts=_cohort_facts(result),
        attrition=_mapping_table(result.attrition),
        table1=_frame_table(result.table1),
        sample_size=_sample_size(result.sample_size or {}),
        predictors=_predictors(features),
        model_spec=model_spec(result, identity.version_label),
    )


# --------------------------------------------------------------------------------------------
# The model specification (summary)


def _booster_facts(booster: Any) -> list[tuple[str, str]]:
    import json

    facts = [("Trees (boosting rounds)", fmt(int(booster.num_boosted_rounds())))]
    try:
        learner = json.loads(booster.save_config())["learner"]
        params = learner["gradient_booster"]["tree_train_param"]
        for key in (
            "max_depth",
            "eta",
            "min_child_weight",
            "subsample",
            "colsample_bytree",
            "lambda",
            "alpha",
        ):
            if key in params:
                facts.append((f"Final model {key}", str(params[key])))
        objective = learner.get("objective", {}).get("name")
        if objective:
            facts.append(("Objective", str(objective)))
    except (KeyError, ValueError, TypeError):
        log.warning("report: could not read the booster configuration")
    return facts


def _procedure_facts(result: TrainResult) -> list[tuple[str, str]]:
    """How the model was validated and tuned, from the experiment."""
    facts = []
    validation = _config(result, "validation", default={}) or {}
    if validation:
        facts.append(
            (
                "Internal validation",
                f"patient-grouped, outcome-stratified {validation.get('scheme', 'cv')}: "
                f"{validation.get('n_splits', '?')} folds × {validation.get('n_repeats', '?')} "
                f"repeats (seed {validation.get('seed', '?')}); no patient in both training and "
                "test folds",
            )
        )
    model_cfg = _config(result, "model", default={}) or {}
    if model_cfg:
        facts.append(
            (
                "Tuning",
                f"random search, {model_cfg.get('n_trials', '?')} trial(s), each scored by "
                f"patient-grouped inner {model_cfg.get('inner_folds', '?')}-fold cross-validation "
                f"of the training part; early stopping "
                f"({model_cfg.get('early_stopping_rounds', '?')} rounds) on the inner validation "
                "folds only",
            )
        )
        if model_cfg.get("params"):
            facts.append(("Fixed parameters", fmt(model_cfg["params"])))
    final = (getattr(result, "tuning", None) or {}).get("final") or {}
    if not final:
        return facts + _booster_facts(result.model.booster)
    shown = {k: v for k, v in final.items() if k not in {"nthread", "seed", "objective"}}
    facts.append(
        ("Final model parameters", "; ".join(f"{k} = {fmt(v, 3)}" for k, v in shown.items()))
    )
    facts.append(("Trees (boosting rounds)", fmt(int(result.model.booster.num_boosted_rounds()))))
    return facts


def _calibration_fact(result: TrainResult) -> str:
    """How the deployed calibrator was fitted, with its evidence when the run recorded it."""
    method = _config(result, "calibration", "method", default="?")
    evidence = (getattr(result, "tuning", None) or {}).get("final_calibrator") or {}
    raw = evidence.get("raw") or {}
    if not raw:
        return f"{method} on out-of-fold predictions"
    return (
        f"{method}, fitted on {evidence.get('n_episodes', '?')} out-of-fold predictions of the "
        "final model's own configuration (patient-grouped inner folds); before calibration their "
        f"slope was {fmt(raw.get('calibration_slope'), 3)} and calibration-in-the-large "
        f"{fmt(raw.get('calibration_intercept'), 3)}. Every cross-validation fold fits its "
        "calibrator the same way on its own training part, so the performance section evaluates "
        "the procedure that built the deployed model."
    )


def model_spec(result: TrainResult, version_label: str) -> tuple[tuple[str, str], ...]:
    """The model specification and internal validation, as (term, description) pairs."""
    metadata = getattr(result.model, "metadata", {}) or {}
    facts: list[tuple[str, str]] = [
        ("Model type", "Gradient-boosted decision trees (XGBoost), binary logistic objective"),
        ("Comparators", "Logistic regression; baseline-PLT rule (same folds)"),
        *_procedure_facts(result),
        ("Class imbalance", "no resampling; class weights only if listed in the parameters above"),
        ("Calibration", _calibration_fact(result)),
    ]
    procedure = metadata.get("procedure")
    if procedure:
        facts.append(("Procedure the performance figures describe", str(procedure)))
    bands = getattr(result.model, "bands", None)
    if bands is not None:
        facts.append(
            (
                "Output",
                f"calibrated probability of response; bands {fmt(getattr(bands, 'labels', ''))} "
                f"at thresholds {fmt(getattr(bands, 'thresholds', ''))}; operating threshold "
                f"{fmt(_threshold(result))}",
            )
        )
    for key in ("name", "trained_at", "experiment"):
        if key in metadata:
            facts.append((f"Model {key}", fmt(metadata[key])))
    facts.append(("Model version (registry)", version_label))
    facts.append(("MLflow run", result.run_id or "—"))
    facts.append(("Model URI", result.model_uri or "—"))
    if getattr(result, "data_fingerprint", ""):
        facts.append(("Data fingerprint", result.data_fingerprint))
    return tuple(facts)


# --------------------------------------------------------------------------------------------
# 2. Performance


def _metrics_table(metrics: Mapping[str, Mapping[str, Mapping[str, float]]]) -> Table:
    models = [m for m in _MODELS if m in metrics]
    models += [m for m in metrics if m not in models]
    names = [m for m in METRIC_LABELS if any(m in metrics[x] for x in models)]
    names += sorted({k for x in models for k in metrics[x]} - set(names))
    rows = [
        [METRIC_LABELS.get(name, humanise(name))]
        + [ci(metrics[model].get(name)) for model in models]
        for name in names
    ]
    headers = ["Metric"] + [plots.MODEL_LABELS.get(m, m) for m in models]
    return table(headers, rows, numeric=range(1, len(headers)))


def _subgroups_table(subgroups: pd.DataFrame | None) -> Table | None:
    if subgroups is None or subgroups.empty:
        return None
    model_order = {"xgboost": 0, "logreg": 1, "plt_baseline": 2}
    frame = subgroups.assign(_m=subgroups["model"].map(model_order).fillna(9))
    frame = frame.sort_values(["subgroup", "level", "_m"], kind="stable").drop(columns="_m")
    rows = []
    for record in frame.to_dict("records"):
        auroc = {
            "estimate": record.get("auroc"),
            "low": record.get("auroc_low"),
            "high": record.get("auroc_high"),
        }
        rows.append(
            [
                plots.MODEL_LABELS.get(record.get("model"), record.get("model")),
                humanise(record.get("subgroup", "")),
                record.get("level"),
                record.get("n"),
                record.get("events"),
                ci(auroc),
                *(record.get(k) for k in ("brier", "oe_ratio", "sensitivity", "specificity")),
            ]
        )
    small = [i for i, r in enumerate(rows) if isinstance(r[3], int | np.integer) and r[3] < 30]
    headers = ["Model", "Subgroup", "Level", "N", "Events", "AUROC (95% CI)", "Brier", "O:E"]
    headers += ["Sensitivity", "Specificity"]
    return table(headers, rows, numeric=range(3, 10), flagged=small)


def uncertainty(result: TrainResult) -> Uncertainty | None:
    """The interval's meaning and level, and the out-of-fold time-to-response metrics."""
    model = result.model
    describe = getattr(model, "describe_uncertainty", None)
    if describe is None:
        return None
    info = describe()
    time = info.get("time_to_response")
    evidence = model.metadata.get("time_to_response") or {}
    if not time:
        reason = evidence.get("not_estimable")
        if reason:  # stated, so a reviewer sees why the answers carry no curve
            return Uncertainty(
                interval=str(info["interval"]),
                time_meaning="Not served: " + str(reason),
                time_evidence=f"{evidence.get('n_episodes', 0):,} episodes with a target.",
            )
        return Uncertainty(interval=str(info["interval"]))
    rows = []
    for key, label in TIME_METRICS.items():
        cell = (time.get("metrics") or {}).get(key)
        if cell and "low" in cell:
            rows.append([label, ci(cell)])
    return Uncertainty(
        interval=str(info["interval"]),
        time_meaning=str(time["meaning"]),
        time_evidence=(
            f"{evidence.get('n_episodes', 0):,} episodes with a time to response: "
            f"{evidence.get('n_events', 0):,} responses (interval-censored between platelet "
            f"draws), {evidence.get('n_no_response', 0):,} non-responders and "
            f"{evidence.get('n_lost', 0):,} not evaluable, right-censored at their last draw. "
            "Out of fold on the first cross-validation repeat, 95% patient-bootstrap CIs."
        ),
        time_metrics=table(["Metric", "Estimate (95% CI)"], rows, numeric=[1]) if rows else None,
    )


def performance_section(result: TrainResult) -> Performance:
    metrics = result.metrics or {}
    n_repeats = _config(result, "validation", "n_repeats", default="?")
    n_splits = _config(result, "validation", "n_splits", default="?")
    n_boot = _config(result, "evaluation", "n_bootstrap", default="?")
    has_subgroups = result.subgroups is not None and not result.subgroups.empty
    return Performance(
        note=(
            f"Out-of-fold predictions of patient-grouped, stratified {n_splits}-fold "
            f"cross-validation repeated {n_repeats} times; metrics averaged over repeats; 95% "
            f"confidence intervals from {n_boot} patient-level bootstrap resamples. XGBoost "
            "probabilities are calibrated out of fold."
        ),
        metrics=_metrics_table(metrics),
        roc=plots.roc_figure(result.oof, metrics),
        calibration=plots.calibration_figure(result.oof, metrics),
        decision_curve=plots.decision_curve_figure(result.decision_curve),
        forest=plots.forest_figure(result.subgroups, metrics.get("xgboost", {}).get("auroc"))
        if has_subgroups
        else plots.message_figure("No subgroup analysis in this run."),
        subgroups=_subgroups_table(result.subgroups),
        uncertainty=uncertainty(result),
    )


# --------------------------------------------------------------------------------------------
# 3. Global explanations


def _importance_table(importance: pd.DataFrame, features: _Features) -> Table:
    rows = [
        (
            r.rank,
            Cell(text=features.labels[r.feature], code=r.feature),
            GROUP_LABELS.get(features.groups[r.feature], features.groups[r.feature]),
            r.mean_abs_shap,
            f"{100 * r.share:.1f}",
        )
        for r in importance.itertuples()
        if r.mean_abs_shap > 0
    ]
    return table(
        ["Rank", "Feature", "Group", "Mean |SHAP| (log-odds)", "Share (%)"],
        rows,
        numeric=[0, 3, 4],
    )


def explanations_section(
    features: _Features, shap_values: _Shap, settings: ReportSettings
) -> Explanations:
    importance, sample, labels = shap_values.importance, shap_values.sample, features.labels
    # The plots show the features the final model uses, so their counts match the table's.
    used_names = importance.loc[importance["mean_abs_shap"] > 0, "feature"].tolist()
    used = sample[:, [list(sample.feature_names).index(n) for n in used_names]]
    shown = plots.relabel(used, labels)
    group_table = group_importance(sample, features.groups)
    group_table["group"] = group_table["group"].map(lambda g: GROUP_LABELS.get(g, g))
    importance_figure = plots.importance_figure(shown, settings.top_features)
    groups_figure = plots.group_figure(group_table)
    beeswarm = plots.beeswarm_figure(shown, settings.top_features)
    named = plots.relabel(sample, labels)
    dependence = []
    for name in importance["feature"].head(settings.n_dependence):
        spec = features.specs.get(name)
        description = spec.description if spec else "not declared in the registry"
        dependence.append(
            Figure(
                src=plots.dependence_figure(named, labels[name], xlabel=labels[name]),
                alt=f"SHAP dependence of {labels[name]}",
                caption=f"{labels[name]}: {description}",
            )
        )
    return Explanations(
        note=(
            f"Exact TreeSHAP from the final booster (Booster.predict with pred_contribs) on the "
            f"raw features with missing values kept as missing, {len(sample.values):,} episodes. "
            "Values are log-odds of response; base values come from the bias column. "
            "Contributions plus base value reproduce the booster's margin within "
            f"{shap_values.gap:.1e}."
        ),
        importance_figure=importance_figure,
        groups_figure=groups_figure,
        beeswarm=beeswarm,
        dependence=tuple(dependence),
        importance=_importance_table(importance, features),
        n_unused=int((importance["mean_abs_shap"] == 0).sum()),
    )


# --------------------------------------------------------------------------------------------
# 4. Plausibility


def _plausibility_table(plausibility: pd.DataFrame) -> Table | None:
    if plausibility.empty:
        return None
    rows = []
    for record in plausibility.to_dict("records"):
        badges = [Badge(record["status"], _PLAUSIBILITY_BADGES[record["status"]])]
        if record["flag"] and record["status"] != "contradicts":
            badges.append(Badge("constraint opposes registry", "flag"))
        rows.append(
            [
                record["feature"],
                DIRECTION_WORDS[record["expected"]],
                _direction(record["constraint"]),
                _direction(record["learned"]),
                record["rho"],
                record["n_observed"],
                Cell(badges=tuple(badges)),
            ]
        )
    headers = ["Feature", "Expected (registry)", "Constraint", "Learned (SHAP)", "Spearman ρ"]
    headers += ["Observed rows", "Status"]
    flagged = [i for i, flag in enumerate(plausibility["flag"]) if flag]
    return table(headers, rows, numeric=[4, 5], flagged=flagged)


def plausibility_section(
    features: _Features, shap_values: _Shap, settings: ReportSettings
) -> Plausibility:
    expected = features.expected
    monotone = (
        table(
            ["Feature", "Constraint", "Expected (registry)"],
            [
                (name, DIRECTION_WORDS[sign], _direction(expected.get(name) or None))
                for name, sign in sorted(features.monotone.items())
            ],
        )
        if features.monotone
        else None
    )
    return Plausibility(
        note=(
            "For each feature the registry gives an expected direction (from the literature), the "
            "learned direction is the sign of the Spearman correlation between the feature's value "
            "and its SHAP value on episodes where it is observed; |ρ| below "
            f"{settings.direction.tolerance} counts as no clear direction, and fewer than "
            f"{settings.direction.min_rows} observed rows as not assessable."
        ),
        n_contradictions=int(shap_values.plausibility["flag"].sum()),
        table=_plausibility_table(shap_values.plausibility),
        monotone=monotone,
    )


# --------------------------------------------------------------------------------------------
# 5. Stability


def stability_section(result: TrainResult, shap_values: _Shap) -> Stability:
    top = shap_values.stability_features
    if not _has_folds(result):
        message = "No fold-model importance recorded in this run."
        return Stability(message, plots.message_figure(message), None)
    folds = result.fold_importance
    n_models = int(folds[["repeat", "fold"]].drop_duplicates().shape[0])
    stability = rank_stability(folds, top)
    rows = [
        (
            r.feature,
            r.n_models,
            f"{r.median_rank:g}",
            f"{r.best_rank:g}",
            f"{r.worst_rank:g}",
            f"{100 * r.top_k_share:.0f}%",
        )
        for r in stability.itertuples()
    ]
    headers = ["Feature", "Fold models", "Median rank", "Best", "Worst", f"In top {len(top)}"]
    return Stability(
        note=(
            f"Mean |SHAP| ranks of the final model's top {len(top)} features in each of the "
            f"{n_models} cross-validation fold models. A feature that is important in the final "
            "model but ranks erratically across folds is a weaker finding."
        ),
        figure=plots.stability_figure(folds, top),
        table=table(headers, rows, numeric=range(1, 6)) if not stability.empty else None,
    )


# --------------------------------------------------------------------------------------------
# 6. Case gallery


def _case_table(
    row: shap.Explanation,
    prob_row: shap.Explanation,
    totals: tuple[float, float],
    n_shown: int,
    labels: Mapping[str, str],
) -> Table:
    """The exact log-odds contributions beside the probability steps of one episode."""
    order = np.argsort(-np.abs(row.values), kind="stable")[:n_shown]
    rows: list[tuple[Any, ...]] = [("Base value (bias)", "", float(row.base_values), "")]
    for j in order:
        name = row.feature_names[j]
        value = float(row.data[j])
        rows.append(
            (
                labels.get(name, name),
                missing_text(name) if math.isnan(value) else _value_cell(name, value),
                float(row.values[j]),
                float(prob_row.values[j]),
            )
        )
    rest = np.setdiff1d(np.arange(row.values.size), order)
    rest = rest[np.asarray(row.values)[rest] != 0]  # unused features are not "other"
    if rest.size:
        rows.append(
            (
                f"{rest.size} other features",
                "",
                float(row.values[rest].sum()),
                float(prob_row.values[rest].sum()),
            )
        )
    rows.append(("Margin (sum)", "", *totals))
    return table(["Feature", "Value", "Log-odds", "Probability step"], rows, numeric=[1, 2, 3])


def gallery_section(
    result: TrainResult, features: _Features, shap_values: _Shap, settings: ReportSettings
) -> Gallery:
    explanation, to_probability = shap_values.every, _to_probability(result)
    margin = explanation.base_values + explanation.values.sum(axis=1)
    index = pd.Index(result.X.index.astype(str))
    probability = pd.Series(to_probability(margin), index=index)
    oof = result.oof.assign(episode_id=result.oof["episode_id"].astype(str))
    oof_mean = oof.groupby("episode_id")["p_xgb"].mean()
    y = pd.Series(result.y.to_numpy(), index=index)
    threshold = _threshold(result)
    titles = {
        "high": "High predicted response",
        "low": "Low predicted response",
        "borderline": f"Borderline (near the operating threshold {fmt(threshold)})",
    }
    cases = []
    for kind, episode in select_cases(probability, threshold).items():
        i = index.get_loc(episode)
        row = explanation[i]
        prob_row = probability_scale(row, to_probability)
        observed = "responded" if int(y[episode]) == 1 else "did not respond"
        words = {
            name: _capital(value_words(name, float(value)))
            for name, value in zip(row.feature_names, row.data, strict=True)
        }
        src = plots.waterfall_figure(
            prob_row,
            settings.waterfall_features,
            "Probability of response (calibrated): probability-scale view",
            words,
        )
        totals = (float(margin[i]), float(probability[episode]))
        title = (
            f"{titles[kind]}: episode {episode}, p = {probability[episode]:.2f} "
            f"(out-of-fold {oof_mean.get(episode, math.nan):.2f}); observed: {observed}"
        )
        case_table = _case_table(
            row, prob_row, totals, settings.waterfall_features, features.labels
        )
        cases.append(Case(kind, str(episode), title, src, case_table))
    return Gallery(
        note=(
            "Example episodes of the training cohort at the 95th and 5th centiles of predicted "
            "response and near the operating threshold. The waterfall is on the probability "
            "scale (calibrated), labelled as such; the exact log-odds contributions are beside it."
        ),
        cases=tuple(cases),
    )


# --------------------------------------------------------------------------------------------
# 7. Limitations


def _single_arm_limitation(summary: Mapping[str, Any]) -> str:
    """What single-arm response labels cannot tell."""
    text = (
        "Response labels come from treated episodes only (no untreated comparison): a PLT rise "
        "after hetrombopag cannot be told apart from spontaneous recovery after the "
        "chemotherapy nadir, so the model predicts response under treatment, not the benefit "
        "of treatment, and a high score does not mean the drug is needed."
    )
    sim = summary.get("simulation")
    if isinstance(sim, Mapping) and "response_untreated" in sim:
        text += (
            f" In this simulated cohort {100 * float(sim['response_untreated']):.0f}% of episodes "
            "would have met the definition without the drug."
        )
    return text


def limitations(result: TrainResult, features: _Features, shap_values: _Shap) -> tuple[str, ...]:
    """What the evidence cannot show, the general caveats first, then this run's own."""
    X, n_explained = features.X, len(shap_values.sample.values)
    items = [
        "Internal validation only (cross-validation in the development cohort): performance in "
        "other hospitals, periods or populations is unknown until externally validated.",
        "SHAP values describe how the model uses the features, not causal effects of changing "
        "them; correlated features share credit in ways that depend on the trees.",
        "Global explanations and the case gallery use the final model on its own training "
        "episodes (in-sample); the performance section uses out-of-fold predictions.",
        "The probability-scale waterfall depends on the order in which features are added; the "
        "log-odds contributions beside it are exact and order-free.",
    ]
    if n_explained < len(X):
        items.append(
            f"Global SHAP plots use a seeded sample of {n_explained:,} of {len(X):,} episodes."
        )
    items.append(_single_arm_limitation(result.cohort_summary or {}))
    if _is_simulated(result):
        items.append(
            "The cohort is simulated (no patient-level CTIT data is public): figures show that the "
            "software works, not how the model performs on real patients."
        )
    for message in (result.sample_size or {}).get("warnings") or []:
        items.append(f"Sample size: {message}.")
    contradicting = _contradicted(shap_values.plausibility)
    if contradicting:
        items.append(
            f"Learned direction contradicts clinical expectation for: {contradicting} "
            "(see plausibility)."
        )
    high_missing = [c for c in X.columns if X[c].isna().mean() > 0.5]
    if high_missing:
        items.append(
            "More than half missing (the model's behaviour for these rests on few values): "
            + ", ".join(feature_label(c) for c in high_missing)
            + "."
        )
    small = _small_subgroup_levels(result)
    if small:
        items.append(f"{small} subgroup levels rest on fewer than 30 episodes.")
    return tuple(items)


# --------------------------------------------------------------------------------------------
# 8. TRIPOD+AI


def template_ids(template: str = "report.html") -> set[str]:
    """Element ids a template renders unconditionally (TRIPOD links point only to these)."""
    source = resources.files("training").joinpath(f"templates/{template}").read_text("utf-8")
    return set(re.findall(r'id="([a-z0-9-]+)"', source))


def tripod_section(result: TrainResult, present: set[str]) -> Tripod:
    """The TRIPOD+AI items the report fills (linked) and those left to the authors. Index dates
    (item 5b) are claimed only when this run recorded them."""
    items, coverage = load_checklist()
    has_dates = any("date" in k.lower() for k, _ in _flatten(result.cohort_summary or {}))
    absent = set() if has_dates else {"5b"}
    filled, authors = [], []
    for item in items:
        covered = coverage.get(item.item)
        if covered is not None and covered.anchor in present and item.item not in absent:
            extent = Badge(covered.extent, "ok" if covered.extent == "full" else "warn")
            filled.append(
                [
                    item.item,
                    item.topic,
                    item.text,
                    Cell(href=covered.anchor),
                    Cell(badges=(extent,)),
                    covered.note,
                ]
            )
        else:
            who = "evaluation studies only" if item.applies == "E" else "authors"
            authors.append([item.item, item.section, item.topic, item.applies, item.text, who])
    return Tripod(
        filled=table(
            ["Item", "Topic", "Requirement (paraphrased)", "Where", "Extent"]
            + ["What the report shows"],
            filled,
        ),
        authors=table(
            ["Item", "Section", "Topic", "Applies", "Requirement (paraphrased)", "Who"], authors
        ),
    )


# --------------------------------------------------------------------------------------------
# The whole context


def _package_version() -> str:
    try:
        return version("ctit")
    except PackageNotFoundError:
        return "unknown"


def build_context(result: TrainResult, settings: ReportSettings | None = None) -> ReportContext:
    """Compute everything the reviewer report shows, as plain data.

    Raises:
        ReportError: the result lacks what the report needs (the message names the field).
    """
    settings = settings or ReportSettings()
    _check_result(result)
    _label_text(result)  # an unknown label definition fails before the SHAP work
    features = _features(result)
    shap_values = _shap(result, features, settings)
    identity = _identity(result)
    version = (
        f"version {identity.version_label}"
        if identity.registered
        else f"MLflow run {identity.run_short}"
    )
    return ReportContext(
        title=f"Reviewer report: {identity.name}, {version}",
        subtitle=(
            "Hetrombopag response in cancer-therapy-induced thrombocytopenia: SHAP explanations "
            f"and the evidence behind the model (TRIPOD+AI). Response: "
            f"{outcome_words(result.label_definition)} ({result.label_definition})."
        ),
        toc=SECTIONS,
        key=key_figures_section(result, shap_values),
        summary=summary_section(result, features, identity),
        performance=performance_section(result),
        explanations=explanations_section(features, shap_values, settings),
        plausibility=plausibility_section(features, shap_values, settings),
        stability=stability_section(result, shap_values),
        gallery=gallery_section(result, features, shap_values, settings),
        limitations=limitations(result, features, shap_values),
        tripod=tripod_section(result, template_ids()),
        footer=(
            f"Generated by ctit {_package_version()} on "
            f"{datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}; MLflow run "
            f"{result.run_id or '—'}; shap {shap.__version__}."
        ),
    )
