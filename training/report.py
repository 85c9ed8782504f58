"""The reviewer report: SHAP explanations and the evidence behind a model (TRIPOD+AI).

`render_report(result)` returns one self-contained HTML page: CSS inline, every figure an inline
base64 PNG, no script and no font or other resource fetched from anywhere (a Content-Security-Policy
forbids it). Section ids are stable: summary, performance, global-explanations, plausibility,
stability, case-gallery, limitations, tripod.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jinja2
import numpy as np
import pandas as pd
import shap
from markupsafe import Markup, escape

from data.labels import get_definition
from data.outputs import write_text
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
    DirectionRule,
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
from training.report_tripod import REPORT_COVERAGE, TRIPOD_AI_ITEMS

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


class ReportError(ValueError):
    """The training result cannot be rendered; the message names the field and the problem."""


@dataclass(frozen=True)
class ReportSettings:
    """What the report shows.

    Attributes:
        top_features: features in the importance bar chart and beeswarm.
        n_dependence: dependence plots (the most important features).
        stability_features: top features whose fold ranks are shown.
        waterfall_features: features shown per waterfall (the rest are summed).
        max_explained: episodes explained for the global plots (a seeded sample when there are
            more); None takes the experiment's `evaluation.shap_sample`.
        direction: how learned directions are read from the SHAP dependence.
        seed: sampling seed.
    """

    top_features: int = 15
    n_dependence: int = 4
    stability_features: int = 10
    waterfall_features: int = 10
    max_explained: int | None = None
    direction: DirectionRule = field(default_factory=DirectionRule)
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("top_features", "n_dependence", "stability_features", "waterfall_features"):
            if getattr(self, name) < 1:
                raise ValueError(f"ReportSettings.{name} must be at least 1")
        if self.max_explained is not None and self.max_explained < 10:
            raise ValueError("ReportSettings.max_explained must be at least 10")


# --------------------------------------------------------------------------------------------
# Formatting helpers


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool | np.bool_):
        return "yes" if value else "no"
    if isinstance(value, int | np.integer):
        return f"{int(value):,}"
    if isinstance(value, float | np.floating):
        if math.isnan(value):
            return "—"
        if value != 0 and (abs(value) >= 1e5 or abs(value) < 1e-3):
            return f"{value:.{digits}g}"
        if float(value).is_integer() and abs(value) >= 10:
            return f"{int(value):,}"
        return f"{value:.{digits}f}"
    if isinstance(value, list | tuple):
        return "; ".join(_fmt(v, digits) for v in value) or "—"
    return str(value)


def _humanise(key: str) -> str:
    text = str(key).replace("_", " ").strip()
    return text[:1].upper() + text[1:]


def _table(
    headers: Sequence[str],
    rows: Iterable[Sequence[Any]],
    numeric: Iterable[int] = (),
    flagged: Iterable[int] = (),
    html_columns: Iterable[int] = (),
) -> Markup:
    """An escaped HTML table; `numeric` columns align right, `flagged` rows are highlighted."""
    numeric, flagged, html_columns = set(numeric), set(flagged), set(html_columns)
    head = "".join(
        f"<th{' class=num' if i in numeric else ''}>{escape(h)}</th>" for i, h in enumerate(headers)
    )
    body = []
    for r, row in enumerate(rows):
        cells = []
        for i, cell in enumerate(row):
            content = cell if i in html_columns else escape(_fmt(cell))
            cells.append(f"<td{' class=num' if i in numeric else ''}>{content}</td>")
        cls = ' class="flagged"' if r in flagged else ""
        body.append(f"<tr{cls}>{''.join(cells)}</tr>")
    return Markup(f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>")


def _frame_table(frame: pd.DataFrame) -> Markup:
    if frame is None or frame.empty:
        return Markup('<p class="muted">Not available in this run.</p>')
    if not isinstance(frame.index, pd.RangeIndex):
        frame = frame.reset_index()
    numeric = [i for i, c in enumerate(frame.columns) if pd.api.types.is_numeric_dtype(frame[c])]
    return _table([_humanise(c) for c in frame.columns], frame.itertuples(index=False), numeric)


def _flatten(mapping: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    items: list[tuple[str, Any]] = []
    for key, value in mapping.items():
        label = f"{prefix}{_humanise(key)}"
        if isinstance(value, Mapping):
            items.extend(_flatten(value, prefix=f"{label} / "))
        else:
            items.append((label, value))
    return items


def _mapping_table(mapping: Mapping[str, Any] | None, what: str) -> Markup:
    if not mapping:
        return Markup(f'<p class="muted">No {escape(what)} recorded in this run.</p>')
    rows = _flatten(mapping)
    return _table(["Item", "Value"], rows, numeric=[1])


def _badge(text: str, kind: str) -> Markup:
    return Markup(f'<span class="badge {escape(kind)}">{escape(text)}</span>')


# --------------------------------------------------------------------------------------------
# Inputs


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


def _specs(columns: Iterable[str]) -> dict[str, FeatureSpec | None]:
    specs: dict[str, FeatureSpec | None] = {}
    for name in columns:
        try:
            specs[name] = spec_of(name)
        except KeyError:
            log.warning("report: feature %r is not declared in features.registry", name)
            specs[name] = None
    return specs


def _group_of(result: TrainResult, specs: Mapping[str, FeatureSpec | None]) -> dict[str, str]:
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
    return groups


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


def _sample(X: pd.DataFrame, limit: int, seed: int) -> pd.DataFrame:
    if len(X) <= limit:
        return X
    return X.sample(n=limit, random_state=seed).sort_index()


# --------------------------------------------------------------------------------------------
# Sections


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


def _cohort_facts(result: TrainResult) -> list[tuple[str, str]]:
    y = result.y.astype(int)
    events = int(y.sum())
    facts = [
        ("Labelled episodes", _fmt(len(y))),
        ("Patients", _fmt(int(result.groups.nunique()))),
        ("Responders (events)", f"{events:,} ({100 * events / len(y):.1f}%)"),
        ("Non-responders", _fmt(len(y) - events)),
    ]
    summary = result.cohort_summary or {}
    dates = [(k, v) for k, v in _flatten(summary) if "date" in k.lower()]
    facts += [(k, _fmt(v)) for k, v in dates]
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
            facts.append((whole.get(key, f"{key} (whole cohort)"), _fmt(value)))
    facts[1] = ("Patients with a labelled episode", facts[1][1])
    return facts


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


def _has_index_dates(result: TrainResult) -> bool:
    return any("date" in k.lower() for k, _ in _flatten(result.cohort_summary or {}))


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


def _sample_size_html(sample_size: Mapping[str, Any]) -> Markup:
    if not sample_size:
        return Markup('<p class="muted">No sample-size assessment recorded in this run.</p>')
    parts = []
    riley = sample_size.get("riley")
    n = sample_size.get("n_episodes")
    if riley:
        minimum = riley.get("minimum_n")
        enough = n is not None and minimum is not None and n >= minimum
        verdict = _badge("meets Riley's minimum", "ok") if enough else _badge("below", "flag")
        parts.append(
            Markup("<p>{} episodes against a minimum of {} (limited by {}). {}</p>").format(
                _fmt(n),
                _fmt(minimum),
                RILEY_CRITERIA.get(riley.get("limiting_criterion"), "?").lower(),
                verdict,
            )
        )
        criteria = riley.get("criteria", {})
        parts.append(
            _table(
                ["Criterion (Riley et al., BMJ 2020)", "Minimum episodes"],
                [(RILEY_CRITERIA.get(k, _humanise(k)), v) for k, v in criteria.items()],
                numeric=[1],
            )
        )
    for message in sample_size.get("warnings") or []:
        parts.append(Markup('<div class="callout flag">{}</div>').format(message))
    rest = {k: v for k, v in sample_size.items() if k not in {"riley", "warnings"}}
    parts.append(_mapping_table(rest, "sample-size figures"))
    return Markup("").join(parts)


def _predictors_html(
    columns: Sequence[str],
    specs: Mapping[str, FeatureSpec | None],
    groups: Mapping[str, str],
    X: pd.DataFrame,
    monotone: Mapping[str, int],
) -> Markup:
    rows = []
    for name in columns:
        spec = specs.get(name)
        missing = float(X[name].isna().mean())
        rows.append(
            (
                Markup("{} <code>{}</code>").format(feature_label(name), name),
                GROUP_LABELS.get(groups[name], groups[name]),
                unit_text(spec.unit) or spec.unit if spec else "—",
                spec.description if spec else "not declared in the registry",
                DIRECTION_WORDS.get(spec.direction, "—") if spec and spec.direction else "—",
                DIRECTION_WORDS[monotone[name]] if name in monotone else "—",
                f"{100 * missing:.1f}%",
            )
        )
    return _table(
        ["Feature", "Group", "Unit", "Definition", "Expected", "Constraint", "Missing"],
        rows,
        numeric=[6],
        html_columns=[0],
    )


def _booster_facts(booster: Any) -> list[tuple[str, str]]:
    import json

    facts = [("Trees (boosting rounds)", _fmt(int(booster.num_boosted_rounds())))]
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
                facts.append((f"Final model {key}", params[key]))
        objective = learner.get("objective", {}).get("name")
        if objective:
            facts.append(("Objective", objective))
    except (KeyError, ValueError, TypeError):
        log.warning("report: could not read the booster configuration")
    return facts


def _model_spec(result: TrainResult, version_label: str) -> list[tuple[str, str]]:
    metadata = getattr(result.model, "metadata", {}) or {}
    validation = _config(result, "validation", default={}) or {}
    facts: list[tuple[str, str]] = [
        ("Model type", "Gradient-boosted decision trees (XGBoost), binary logistic objective"),
        ("Comparators", "Logistic regression; baseline-PLT rule (same folds)"),
    ]
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
            facts.append(("Fixed parameters", _fmt(model_cfg["params"])))
    final = (getattr(result, "tuning", None) or {}).get("final") or {}
    if final:
        shown = {k: v for k, v in final.items() if k not in {"nthread", "seed", "objective"}}
        facts.append(
            ("Final model parameters", "; ".join(f"{k} = {_fmt(v, 3)}" for k, v in shown.items()))
        )
        facts.append(
            ("Trees (boosting rounds)", _fmt(int(result.model.booster.num_boosted_rounds())))
        )
    else:
        facts += _booster_facts(result.model.booster)
    facts.append(
        ("Class imbalance", "no resampling; class weights only if listed in the parameters above")
    )
    facts.append(("Calibration", _calibration_fact(result)))
    procedure = metadata.get("procedure")
    if procedure:
        facts.append(("Procedure the performance figures describe", str(procedure)))
    bands = getattr(result.model, "bands", None)
    if bands is not None:
        facts.append(
            (
                "Output",
                f"calibrated probability of response; bands {_fmt(getattr(bands, 'labels', ''))} "
                f"at thresholds {_fmt(getattr(bands, 'thresholds', ''))}; operating threshold "
                f"{_fmt(_threshold(result))}",
            )
        )
    for key in ("name", "trained_at", "experiment"):
        if key in metadata:
            facts.append((f"Model {key}", _fmt(metadata[key])))
    facts.append(("Model version (registry)", version_label))
    facts.append(("MLflow run", result.run_id or "—"))
    facts.append(("Model URI", result.model_uri or "—"))
    if getattr(result, "data_fingerprint", ""):
        facts.append(("Data fingerprint", result.data_fingerprint))
    return facts


def _metrics_html(metrics: Mapping[str, Mapping[str, Mapping[str, float]]]) -> Markup:
    models = [m for m in ("xgboost", "logreg", "plt_baseline") if m in metrics]
    models += [m for m in metrics if m not in models]
    names = [m for m in METRIC_LABELS if any(m in metrics[x] for x in models)]
    names += sorted({k for x in models for k in metrics[x]} - set(names))
    rows = []
    for name in names:
        row = [METRIC_LABELS.get(name, _humanise(name))]
        for model in models:
            cell = metrics[model].get(name)
            if not cell:
                row.append("—")
                continue
            row.append(_ci(cell))
        rows.append(row)
    headers = ["Metric"] + [plots.MODEL_LABELS.get(m, m) for m in models]
    return _table(headers, rows, numeric=range(1, len(headers)))


# -- issue 18: what the interval means, and the time-to-response evidence --------------------------

_TIME_METRICS = {
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
    "responders.median_abs_error_days": "Responders: |predicted median day - observed day|",
    "responders.median_in_observed_interval": "Responders: median day inside the observed interval",
}


def uncertainty_html(result: TrainResult) -> Markup:
    """The interval's meaning and level, and the out-of-fold time-to-response metrics."""
    model = result.model
    describe = getattr(model, "describe_uncertainty", None)
    if describe is None:
        return Markup("")
    info = describe()
    parts = [Markup("<p><strong>Interval.</strong> {}</p>").format(info["interval"])]
    time = info.get("time_to_response")
    if time:
        parts.append(Markup("<p><strong>Chance of response by day.</strong> {}.</p>").format(
            time["meaning"]
        ))  # fmt: skip
        evidence = model.metadata.get("time_to_response") or {}
        parts.append(
            Markup("<p class='note'>{}</p>").format(
                f"{evidence.get('n_episodes', 0):,} episodes with a time to response: "
                f"{evidence.get('n_events', 0):,} responses (interval-censored between platelet "
                f"draws), {evidence.get('n_no_response', 0):,} non-responders and "
                f"{evidence.get('n_lost', 0):,} not evaluable, right-censored at their last draw. "
                "Out of fold on the first cross-validation repeat, 95% patient-bootstrap CIs."
            )
        )
        rows = []
        for key, label in _TIME_METRICS.items():
            cell = (time.get("metrics") or {}).get(key)
            if cell and "low" in cell:
                rows.append([label, _ci(cell)])
        if rows:
            parts.append(_table(["Metric", "Estimate (95% CI)"], rows, numeric=[1]))
    return Markup("").join(parts)


def _ci(cell: Mapping[str, float] | None, digits: int = 3) -> str:
    """'0.785 (0.771 to 0.800)': an estimate with its 95% CI, never ambiguous with a minus."""
    if not cell or cell.get("estimate") is None or math.isnan(cell["estimate"]):
        return "—"

    def fixed(value: float) -> str:
        text = f"{value:.{digits}f}"
        return text[1:] if text.startswith("-") and float(text) == 0 else text

    text = fixed(cell["estimate"])
    low, high = cell.get("low"), cell.get("high")
    if low is None or high is None or math.isnan(low) or math.isnan(high):
        return text
    return f"{text} ({fixed(low)} to {fixed(high)})"


#: The key figures of the first screen: (metric, what it says, better when).
KEY_METRICS = (
    ("auroc", "Discrimination: AUROC (C statistic)", "higher"),
    ("calibration_slope", "Calibration slope", "near 1"),
    ("calibration_intercept", "Calibration intercept (calibration-in-the-large)", "near 0"),
    ("oe_ratio", "Observed:expected ratio", "near 1"),
    ("brier", "Brier score", "lower"),
)


def key_figures(metrics: Mapping[str, Mapping[str, Mapping[str, float]]]) -> list[dict[str, Any]]:
    """The first screen's rows: each key metric for XGBoost and the comparators, with CIs."""
    models = [m for m in ("xgboost", "logreg", "plt_baseline") if m in metrics]
    rows = []
    for key, label, better in KEY_METRICS:
        cells = []
        for model in models:
            cell = metrics[model].get(key) or {}
            cells.append(
                {
                    "model": model,
                    "text": _ci(cell),
                    "estimate": cell.get("estimate"),
                    "low": cell.get("low"),
                    "high": cell.get("high"),
                }
            )
        rows.append({"key": key, "label": label, "better": better, "cells": cells})
    return rows


def _flags(
    result: TrainResult, plausibility: pd.DataFrame, metrics: Mapping[str, Any]
) -> list[str]:
    """What a reviewer must look at first: weak calibration or discrimination, sample size,
    contradicted directions, small subgroups, a simulated cohort."""
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
    contradicting = plausibility.loc[plausibility["status"] == "contradicts", "feature"].tolist()
    if contradicting:
        flags.append(
            "Learned direction contradicts clinical expectation for "
            + ", ".join(feature_label(c) for c in contradicting)
            + "."
        )
    if result.subgroups is not None and not result.subgroups.empty and "n" in result.subgroups:
        small = result.subgroups[result.subgroups.get("model", "xgboost") == "xgboost"]
        n_small = int((small["n"] < 30).sum())
        if n_small:
            flags.append(f"{n_small} subgroup levels have fewer than 30 episodes.")
    summary = result.cohort_summary or {}
    if any("simulat" in str(v).lower() for v in _flatten_values(summary)) or _config(
        result, "cohort", "simulate"
    ):
        flags.append("The cohort is simulated: the figures test the software, not the clinic.")
    return flags


def _subgroups_html(subgroups: pd.DataFrame) -> Markup:
    if subgroups is None or subgroups.empty:
        return Markup('<p class="muted">No subgroup analysis in this run.</p>')
    model_order = {"xgboost": 0, "logreg": 1, "plt_baseline": 2}
    frame = subgroups.assign(_m=subgroups["model"].map(model_order).fillna(9))
    frame = frame.sort_values(["subgroup", "level", "_m"], kind="stable").drop(columns="_m")
    rows = []
    for record in frame.to_dict("records"):
        cell = _ci(
            {
                "estimate": record.get("auroc"),
                "low": record.get("auroc_low"),
                "high": record.get("auroc_high"),
            }
        )
        rows.append(
            [
                plots.MODEL_LABELS.get(record.get("model"), record.get("model")),
                _humanise(record.get("subgroup", "")),
                record.get("level"),
                record.get("n"),
                record.get("events"),
                cell,
                record.get("brier"),
                record.get("oe_ratio"),
                record.get("sensitivity"),
                record.get("specificity"),
            ]
        )
    small = [i for i, r in enumerate(rows) if isinstance(r[3], int | np.integer) and r[3] < 30]
    headers = [
        "Model",
        "Subgroup",
        "Level",
        "N",
        "Events",
        "AUROC (95% CI)",
        "Brier",
        "O:E",
        "Sensitivity",
        "Specificity",
    ]
    note = Markup(
        '<p class="note">Highlighted rows have fewer than 30 episodes: their estimates are '
        "imprecise.</p>"
    )
    return note + _table(headers, rows, numeric=range(3, 10), flagged=small)


def _stability_html(stability: pd.DataFrame, k: int) -> Markup:
    if stability.empty:
        return Markup('<p class="muted">No fold-model importance recorded in this run.</p>')
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
    headers = ["Feature", "Fold models", "Median rank", "Best", "Worst", f"In top {k}"]
    return _table(headers, rows, numeric=range(1, 6))


def _plausibility_html(table: pd.DataFrame) -> Markup:
    if table.empty:
        return Markup('<p class="muted">No feature of this model has an expected direction.</p>')
    badge_kind = {
        "agrees": "ok",
        "contradicts": "flag",
        "no clear direction": "warn",
        "not used by the model": "warn",
        "not assessable": "na",
    }
    rows = []
    for record in table.to_dict("records"):
        status = _badge(record["status"], badge_kind[record["status"]])
        if record["flag"] and record["status"] != "contradicts":
            status += " " + _badge("constraint opposes registry", "flag")
        rows.append(
            [
                record["feature"],
                DIRECTION_WORDS[record["expected"]],
                "—"
                if record["constraint"] is None or pd.isna(record["constraint"])
                else DIRECTION_WORDS[int(record["constraint"])],
                "—"
                if record["learned"] is None or pd.isna(record["learned"])
                else DIRECTION_WORDS[int(record["learned"])],
                record["rho"],
                record["n_observed"],
                status,
            ]
        )
    flagged = [i for i, flag in enumerate(table["flag"]) if flag]
    return _table(
        [
            "Feature",
            "Expected (registry)",
            "Constraint",
            "Learned (SHAP)",
            "Spearman ρ",
            "Observed rows",
            "Status",
        ],
        rows,
        numeric=[4, 5],
        flagged=flagged,
        html_columns=[6],
    )


def _gallery(
    result: TrainResult,
    explanation: shap.Explanation,
    settings: ReportSettings,
    labels: Mapping[str, str],
) -> list[dict[str, Any]]:
    to_probability = _to_probability(result)
    margin = explanation.base_values + explanation.values.sum(axis=1)
    index = pd.Index(result.X.index.astype(str))
    probability = pd.Series(to_probability(margin), index=index)
    oof = result.oof.assign(episode_id=result.oof["episode_id"].astype(str))
    oof_mean = oof.groupby("episode_id")["p_xgb"].mean()
    y = pd.Series(result.y.to_numpy(), index=index)
    titles = {
        "high": "High predicted response",
        "low": "Low predicted response",
        "borderline": f"Borderline (near the operating threshold {_fmt(_threshold(result))})",
    }
    cases = []
    for kind, episode in select_cases(probability, _threshold(result)).items():
        i = index.get_loc(episode)
        row = explanation[i]
        prob_row = probability_scale(row, to_probability)
        observed = "responded" if int(y[episode]) == 1 else "did not respond"
        title = (
            f"{titles[kind]}: episode {episode}, p = {probability[episode]:.2f} "
            f"(out-of-fold {oof_mean.get(episode, math.nan):.2f}); observed: {observed}"
        )
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
        order = np.argsort(-np.abs(row.values), kind="stable")[: settings.waterfall_features]
        table_rows = [("Base value (bias)", "", float(row.base_values), "")]
        for j in order:
            name = row.feature_names[j]
            value = float(row.data[j])
            table_rows.append(
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
            table_rows.append(
                (
                    f"{rest.size} other features",
                    "",
                    float(row.values[rest].sum()),
                    float(prob_row.values[rest].sum()),
                )
            )
        table_rows.append(("Margin (sum)", "", float(margin[i]), float(probability[episode])))
        cases.append(
            {
                "kind": kind,
                "episode": episode,
                "title": title,
                "src": src,
                "table_html": _table(
                    ["Feature", "Value", "Log-odds", "Probability step"],
                    table_rows,
                    numeric=[1, 2, 3],
                ),
            }
        )
    return cases


def _capital(text: str) -> str:
    return text[:1].upper() + text[1:]


def _value_cell(name: str, value: float) -> str:
    """A value for a table whose row already names the feature and its unit."""
    try:
        unit = spec_of(name).unit
    except KeyError:
        unit = ""
    if unit == "0/1" or "=" in name:
        return "yes" if value >= 0.5 else "no"
    return _fmt(value)


def _limitations(
    result: TrainResult,
    plausibility: pd.DataFrame,
    X: pd.DataFrame,
    n_explained: int,
) -> list[str]:
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
    summary = result.cohort_summary or {}
    items.append(_single_arm_limitation(summary))
    if any("simulat" in str(v).lower() for v in _flatten_values(summary)) or _config(
        result, "cohort", "simulate"
    ):
        items.append(
            "The cohort is simulated (no patient-level CTIT data is public): figures show that the "
            "software works, not how the model performs on real patients."
        )
    for message in (result.sample_size or {}).get("warnings") or []:
        items.append(f"Sample size: {message}.")
    contradicting = plausibility.loc[plausibility["status"] == "contradicts", "feature"].tolist()
    if contradicting:
        items.append(
            "Learned direction contradicts clinical expectation for: "
            + ", ".join(feature_label(c) for c in contradicting)
            + " (see plausibility)."
        )
    high_missing = [c for c in X.columns if X[c].isna().mean() > 0.5]
    if high_missing:
        items.append(
            "More than half missing (the model's behaviour for these rests on few values): "
            + ", ".join(feature_label(c) for c in high_missing)
            + "."
        )
    if result.subgroups is not None and not result.subgroups.empty and "n" in result.subgroups:
        small = int((result.subgroups["n"] < 30).sum())
        if small:
            items.append(f"{small} subgroup estimates rest on fewer than 30 episodes.")
    return items


def _flatten_values(mapping: Mapping[str, Any]) -> list[Any]:
    return [v for _, v in _flatten(mapping)]


def _tripod_html(present: set[str], absent: Iterable[str] = ()) -> tuple[Markup, Markup]:
    """The TRIPOD+AI items the report fills (linked) and those left to the authors; `absent`
    items are claimed only when this run recorded what they need."""
    filled, authors = [], []
    absent = set(absent)
    for item in TRIPOD_AI_ITEMS:
        coverage = REPORT_COVERAGE.get(item.item)
        if coverage is not None and coverage.anchor in present and item.item not in absent:
            link = Markup('<a href="#{0}">#{0}</a>').format(coverage.anchor)
            extent = _badge(coverage.extent, "ok" if coverage.extent == "full" else "warn")
            filled.append([item.item, item.topic, item.text, link, extent, coverage.note])
        else:
            why = "evaluation studies only" if item.applies == "E" else "authors"
            authors.append([item.item, item.section, item.topic, item.applies, item.text, why])
    filled_html = _table(
        ["Item", "Topic", "Requirement (paraphrased)", "Where", "Extent", "What the report shows"],
        filled,
        html_columns=[3, 4],
    )
    authors_html = _table(
        ["Item", "Section", "Topic", "Applies", "Requirement (paraphrased)", "Who"], authors
    )
    return filled_html, authors_html


# --------------------------------------------------------------------------------------------
# Entry points


def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.PackageLoader("training", "templates"),
        autoescape=jinja2.select_autoescape(["html"]),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def _package_version() -> str:
    try:
        return version("ctit")
    except PackageNotFoundError:
        return "unknown"


def render_report(result: TrainResult, settings: ReportSettings | None = None) -> str:
    """Render the self-contained reviewer HTML of one training run.

    Raises:
        ReportError: the result lacks what the report needs (the message names the field).
    """
    settings = settings or ReportSettings()
    _check_result(result)
    label_text = _label_text(result)
    booster = result.model.booster
    columns = list(booster.feature_names or result.X.columns)
    X_all = result.X[columns] if set(columns) <= set(result.X.columns) else result.X
    specs = _specs(X_all.columns)
    groups = _group_of(result, specs)
    monotone = {k: int(v) for k, v in (result.monotone_constraints or {}).items()}

    # Exact TreeSHAP on every labelled episode (cheap) for the case gallery; the global plots use
    # a seeded sample when the cohort is large.
    try:
        explanation_all, gap = tree_shap(booster, X_all)
    except ValueError as error:
        raise ReportError(f"TrainResult.X: {error}") from error
    limit = settings.max_explained or int(
        _config(result, "evaluation", "shap_sample", default=1000)
    )
    X_global = _sample(X_all, limit, settings.seed)
    positions = X_all.index.get_indexer(X_global.index)
    explanation = explanation_all[positions]

    labels = display_labels(X_all.columns)
    importance = feature_importance(explanation)
    # The plots show the features the final model uses, so their counts match the table's.
    used_names = importance.loc[importance["mean_abs_shap"] > 0, "feature"].tolist()
    used = explanation[:, [list(explanation.feature_names).index(n) for n in used_names]]
    shown = plots.relabel(used, labels)
    group_table = group_importance(explanation, groups)
    group_table["group"] = group_table["group"].map(lambda g: GROUP_LABELS.get(g, g))
    expected = {name: (spec.direction if spec else None) for name, spec in specs.items()}
    plausibility = plausibility_table(explanation, expected, monotone, settings.direction)
    stability_features = importance["feature"].head(settings.stability_features).tolist()
    fold_importance = result.fold_importance
    has_folds = fold_importance is not None and not fold_importance.empty

    figures = {
        "roc": plots.roc_figure(result.oof, result.metrics or {}),
        "calibration": plots.calibration_figure(result.oof, result.metrics or {}),
        "decision_curve": plots.decision_curve_figure(result.decision_curve),
        "importance": plots.importance_figure(shown, settings.top_features),
        "groups": plots.group_figure(group_table),
        "beeswarm": plots.beeswarm_figure(shown, settings.top_features),
        "forest": plots.forest_figure(
            result.subgroups, (result.metrics or {}).get("xgboost", {}).get("auroc")
        )
        if result.subgroups is not None and not result.subgroups.empty
        else plots.message_figure("No subgroup analysis in this run."),
        "stability": plots.stability_figure(fold_importance, stability_features)
        if has_folds
        else "",
    }
    dependence = []
    named = plots.relabel(explanation, labels)
    for name in importance["feature"].head(settings.n_dependence):
        spec = specs.get(name)
        caption = spec.description if spec else "not declared in the registry"
        src = plots.dependence_figure(named, labels[name], xlabel=labels[name])
        dependence.append({"feature": labels[name], "src": src, "caption": caption})

    importance_rows = [
        (
            r.rank,
            Markup("{} <code>{}</code>").format(labels[r.feature], r.feature),
            GROUP_LABELS.get(groups[r.feature], groups[r.feature]),
            r.mean_abs_shap,
            f"{100 * r.share:.1f}",
        )
        for r in importance.itertuples()
        if r.mean_abs_shap > 0
    ]
    n_unused = int((importance["mean_abs_shap"] == 0).sum())
    stability = rank_stability(fold_importance, stability_features) if has_folds else pd.DataFrame()
    n_models = (
        int(fold_importance[["repeat", "fold"]].drop_duplicates().shape[0]) if has_folds else 0
    )
    monotone_html = (
        _table(
            ["Feature", "Constraint", "Expected (registry)"],
            [
                (
                    name,
                    DIRECTION_WORDS[sign],
                    DIRECTION_WORDS.get(expected.get(name) or 0, "—")
                    if expected.get(name)
                    else "—",
                )
                for name, sign in sorted(monotone.items())
            ],
        )
        if monotone
        else Markup('<p class="muted">No monotone constraint was imposed.</p>')
    )
    tripod_filled, tripod_authors = _tripod_html(
        _present_anchors(), absent=() if _has_index_dates(result) else ("5b",)
    )
    metadata = getattr(result.model, "metadata", {}) or {}
    name = metadata.get("name", "ctit model")
    version_label = result.registered_version or metadata.get("version")
    registered = version_label not in (None, "", "unregistered")
    run_short = (result.run_id or "")[:12] or "—"
    if not registered:
        # The copy logged with the run is written before the version exists; say what it is.
        version_label = f"not registered when written (MLflow run {run_short})"
    n_repeats = _config(result, "validation", "n_repeats", default="?")
    n_splits = _config(result, "validation", "n_splits", default="?")
    n_boot = _config(result, "evaluation", "n_bootstrap", default="?")

    context = {
        "title": f"Reviewer report: {name}, "
        + (f"version {version_label}" if registered else f"MLflow run {run_short}"),
        "subtitle": (
            "Hetrombopag response in cancer-therapy-induced thrombocytopenia: SHAP explanations "
            f"and the evidence behind the model (TRIPOD+AI). Response: "
            f"{outcome_words(result.label_definition)} ({result.label_definition})."
        ),
        "key_figures": key_figures(result.metrics or {}),
        "key_models": [
            plots.MODEL_LABELS.get(m, m)
            for m in ("xgboost", "logreg", "plt_baseline")
            if m in (result.metrics or {})
        ],
        "flags": _flags(result, plausibility, result.metrics or {}),
        "n_episodes": len(result.y),
        "n_events": int(result.y.astype(int).sum()),
        "outcome_words": outcome_words(result.label_definition),
        "toc": SECTIONS,
        "intended_use": INTENDED_USE,
        "model_facts": [
            ("Model", f"{name}, version {version_label}"),
            ("Intended users", "oncologists and haematologists; reviewers of the model"),
            ("Prediction time", "the index date, before the first hetrombopag dose"),
            ("Output", "calibrated probability that this CTIT episode responds, with a band"),
        ],
        "label_text": label_text,
        "cohort_facts": _cohort_facts(result),
        "attrition_html": _mapping_table(result.attrition, "attrition"),
        "table1_html": _frame_table(result.table1),
        "sample_size_html": _sample_size_html(result.sample_size or {}),
        "predictors_html": _predictors_html(list(X_all.columns), specs, groups, X_all, monotone),
        "model_spec": _model_spec(result, version_label),
        "performance_note": (
            f"Out-of-fold predictions of patient-grouped, stratified {n_splits}-fold "
            f"cross-validation repeated {n_repeats} times; metrics averaged over repeats; 95% "
            f"confidence intervals from {n_boot} patient-level bootstrap resamples. XGBoost "
            "probabilities are calibrated out of fold."
        ),
        "metrics_html": _metrics_html(result.metrics or {}),
        "uncertainty_html": uncertainty_html(result),
        "figures": figures,
        "subgroups_html": _subgroups_html(result.subgroups),
        "shap_note": (
            f"Exact TreeSHAP from the final booster (Booster.predict with pred_contribs) on the "
            f"raw features with missing values kept as missing, {len(X_global):,} episodes. "
            "Values are log-odds of response; base values come from the bias column. "
            f"Contributions plus base value reproduce the booster's margin within {gap:.1e}."
        ),
        "dependence": dependence,
        "importance_html": _table(
            ["Rank", "Feature", "Group", "Mean |SHAP| (log-odds)", "Share (%)"],
            importance_rows,
            numeric=[0, 3, 4],
            html_columns=[1],
        )
        + (
            Markup(
                '<p class="note">{} features are never used by the final model (SHAP 0 for '
                "every episode).</p>"
            ).format(n_unused)
            if n_unused
            else Markup("")
        ),
        "plausibility_note": (
            "For each feature the registry gives an expected direction (from the literature), the "
            "learned direction is the sign of the Spearman correlation between the feature's value "
            "and its SHAP value on episodes where it is observed; |ρ| below "
            f"{settings.direction.tolerance} counts as no clear direction, and fewer than "
            f"{settings.direction.min_rows} observed rows as not assessable."
        ),
        "n_contradictions": int(plausibility["flag"].sum()),
        "plausibility_html": _plausibility_html(plausibility),
        "monotone_html": monotone_html,
        "stability_note": (
            f"Mean |SHAP| ranks of the final model's top {len(stability_features)} features in "
            f"each of the {n_models} cross-validation fold models. A feature that is important "
            "in the final model but ranks erratically across folds is a weaker finding."
            if has_folds
            else "No fold-model importance recorded in this run."
        ),
        "stability_html": _stability_html(stability, len(stability_features)),
        "gallery_note": (
            "Example episodes of the training cohort at the 95th and 5th centiles of predicted "
            "response and near the operating threshold. The waterfall is on the probability "
            "scale (calibrated), labelled as such; the exact log-odds contributions are beside it."
        ),
        "cases": _gallery(result, explanation_all, settings, labels),
        "limitations": _limitations(result, plausibility, X_all, len(X_global)),
        "tripod_filled_html": tripod_filled,
        "tripod_authors_html": tripod_authors,
        "footer": (
            f"Generated by ctit {_package_version()} on "
            f"{datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}; MLflow run "
            f"{result.run_id or '—'}; shap {shap.__version__}."
        ),
    }
    if not figures["stability"]:
        figures["stability"] = _placeholder_png()
    return _environment().get_template("report.html").render(**context)


def _present_anchors() -> set[str]:
    """Element ids the template renders unconditionally (TRIPOD links point only to these)."""
    source = _environment().loader.get_source(_environment(), "report.html")[0]
    return set(re.findall(r'id="([a-z0-9-]+)"', source))


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
        f"slope was {_fmt(raw.get('calibration_slope'), 3)} and calibration-in-the-large "
        f"{_fmt(raw.get('calibration_intercept'), 3)}. Every cross-validation fold fits its "
        "calibrator the same way on its own training part, so the performance section evaluates "
        "the procedure that built the deployed model."
    )


def _placeholder_png() -> str:
    return plots.message_figure("No fold-model importance recorded in this run.")


def write_report(
    result: TrainResult, path: str | Path, settings: ReportSettings | None = None
) -> Path:
    """Render the report and write it to `path` (UTF-8)."""
    return write_text(path, render_report(result, settings))
