"""Figures of the reviewer report, drawn with matplotlib (Agg) and shap, returned as data URIs.

The Agg backend is selected when a figure is drawn, never at import.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import numpy as np
import pandas as pd
import shap
from sklearn.calibration import calibration_curve
from sklearn.metrics import roc_curve

MODEL_LABELS = {
    "xgboost": "XGBoost (calibrated)",
    "logreg": "Logistic regression",
    "plt_baseline": "Baseline-PLT rule",
}
OOF_COLUMNS = {"xgboost": "p_xgb", "logreg": "p_logreg", "plt_baseline": "p_plt"}
COLOURS = {"xgboost": "#1f5f8b", "logreg": "#c2571a", "plt_baseline": "#6a8f3a"}
DPI = 96


@contextmanager
def _pyplot() -> Iterator[object]:
    """Yield pyplot on the Agg backend and close every figure opened meanwhile."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    before = set(plt.get_fignums())
    try:
        with plt.rc_context({"font.size": 10, "axes.titlesize": 11, "figure.dpi": DPI}):
            yield plt
    finally:
        for num in set(plt.get_fignums()) - before:
            plt.close(num)


def _data_uri(fig: object) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight", metadata={"Software": None})
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _label(model: str) -> str:
    return MODEL_LABELS.get(model, model)


def roc_figure(oof: pd.DataFrame, metrics: Mapping[str, Mapping[str, Mapping[str, float]]]) -> str:
    """ROC curves of every model with an out-of-fold prediction column."""
    with _pyplot() as plt:
        fig, ax = plt.subplots(figsize=(5.2, 4.6))
        for model, column in OOF_COLUMNS.items():
            if column not in oof.columns:
                continue
            rows = oof[["y", column]].dropna()
            if rows["y"].nunique() < 2:
                continue
            fpr, tpr, _ = roc_curve(rows["y"].astype(int), rows[column])
            auc = metrics.get(model, {}).get("auroc", {})
            label = _label(model)
            if "estimate" in auc:
                label += f" (AUROC {auc['estimate']:.2f})"
            ax.plot(fpr, tpr, color=COLOURS.get(model), lw=1.8, label=label)
        ax.plot([0, 1], [0, 1], color="#999999", lw=1, ls="--", label="No discrimination")
        ax.set(xlabel="1 - specificity", ylabel="Sensitivity", xlim=(0, 1), ylim=(0, 1.01))
        ax.set_title("ROC (out-of-fold)")
        ax.legend(loc="lower right", fontsize=8)
        return _data_uri(fig)


def calibration_figure(oof: pd.DataFrame, n_bins: int = 10) -> str:
    """Calibration curves (quantile bins) with the distribution of XGBoost predictions below."""
    with _pyplot() as plt:
        fig, (ax, hist_ax) = plt.subplots(
            2, 1, figsize=(5.2, 5.2), sharex=True, gridspec_kw={"height_ratios": [3, 1]}
        )
        ax.plot([0, 1], [0, 1], color="#999999", lw=1, ls="--", label="Perfect calibration")
        for model, column in OOF_COLUMNS.items():
            if column not in oof.columns:
                continue
            rows = oof[["y", column]].dropna()
            if rows.empty or rows["y"].nunique() < 2:
                continue
            bins = min(n_bins, max(2, rows[column].nunique()))
            observed, predicted = calibration_curve(
                rows["y"].astype(int), rows[column], n_bins=bins, strategy="quantile"
            )
            ax.plot(
                predicted,
                observed,
                marker="o",
                ms=4,
                lw=1.5,
                color=COLOURS.get(model),
                label=_label(model),
            )
        ax.set(ylabel="Observed response rate", xlim=(0, 1), ylim=(0, 1.02))
        ax.set_title("Calibration (out-of-fold)")
        ax.legend(loc="upper left", fontsize=8)
        if "p_xgb" in oof.columns:
            hist_ax.hist(oof["p_xgb"].dropna(), bins=30, range=(0, 1), color=COLOURS["xgboost"])
        hist_ax.set(xlabel="Predicted probability of response", ylabel="Episodes")
        return _data_uri(fig)


def decision_curve_figure(curve: pd.DataFrame) -> str:
    """Net benefit against threshold probability for every model and the two defaults."""
    styles = {
        "treat_all": {"color": "#555555", "ls": ":", "label": "Treat all"},
        "treat_none": {"color": "#999999", "ls": "--", "label": "Treat none"},
    }
    with _pyplot() as plt:
        fig, ax = plt.subplots(figsize=(5.2, 4.6))
        for model, rows in curve.sort_values("threshold").groupby("model", sort=False):
            style = styles.get(model, {"color": COLOURS.get(model), "label": _label(model)})
            ax.plot(rows["threshold"], rows["net_benefit"], lw=1.6, **style)
        finite = curve["net_benefit"].replace([np.inf, -np.inf], np.nan).dropna()
        top = float(finite.max()) if not finite.empty else 1.0
        ax.set_ylim(bottom=-0.05, top=max(0.05, top * 1.1))
        ax.set(xlabel="Threshold probability", ylabel="Net benefit")
        ax.set_title("Decision curve (out-of-fold)")
        ax.legend(fontsize=8)
        return _data_uri(fig)


def importance_figure(explanation: shap.Explanation, max_display: int) -> str:
    """Mean |SHAP| bar chart by feature (shap.plots.bar)."""
    with _pyplot() as plt:
        fig, ax = plt.subplots(figsize=(6.0, 0.32 * max_display + 1.2))
        shap.plots.bar(explanation, max_display=max_display, ax=ax, show=False)
        ax.set_xlabel("mean |SHAP value| (log-odds of response)")
        return _data_uri(fig)


def group_figure(groups: pd.DataFrame) -> str:
    """Mean |SHAP| by clinical group, horizontal bars."""
    with _pyplot() as plt:
        ordered = groups.sort_values("mean_abs_shap")
        fig, ax = plt.subplots(figsize=(6.0, 0.38 * len(ordered) + 1.2))
        ax.barh(ordered["group"], ordered["mean_abs_shap"], color=COLOURS["xgboost"])
        for y, value in enumerate(ordered["mean_abs_shap"]):
            ax.text(value, y, f" {value:.3f}", va="center", fontsize=8)
        ax.set_xlabel("mean |sum of the group's SHAP values| (log-odds)")
        ax.spines[["top", "right"]].set_visible(False)
        return _data_uri(fig)


def beeswarm_figure(explanation: shap.Explanation, max_display: int) -> str:
    """SHAP beeswarm of the most important features."""
    with _pyplot() as plt:
        plt.figure(figsize=(8.0, 0.42 * min(max_display, explanation.shape[1]) + 1.6))
        shap.plots.beeswarm(explanation, max_display=max_display, show=False, plot_size=None)
        fig = plt.gcf()
        fig.axes[0].set_xlabel("SHAP value (log-odds of response)")
        return _data_uri(fig)


def dependence_figure(explanation: shap.Explanation, feature: str) -> str:
    """SHAP dependence of one feature, coloured by its strongest approximate interaction."""
    with _pyplot() as plt:
        fig, ax = plt.subplots(figsize=(5.4, 4.0))
        column = explanation[:, feature]
        colour = explanation if explanation.values.shape[1] > 1 else "#1f5f8b"
        shap.plots.scatter(column, color=colour, ax=ax, show=False, ylabel="SHAP (log-odds)")
        return _data_uri(plt.gcf())


def stability_figure(fold_importance: pd.DataFrame, features: list[str]) -> str:
    """Rank of each top feature in every fold model (dots) and its median (cross)."""
    with _pyplot() as plt:
        fig, ax = plt.subplots(figsize=(7.0, 0.36 * len(features) + 1.4))
        rng = np.random.default_rng(0)
        for y, name in enumerate(features):
            ranks = fold_importance.loc[fold_importance["feature"] == name, "rank"].astype(float)
            jitter = rng.uniform(-0.15, 0.15, size=ranks.size)
            ax.scatter(ranks, y + jitter, s=14, alpha=0.6, color=COLOURS["xgboost"])
            if ranks.size:
                ax.scatter([ranks.median()], [y], marker="x", s=60, color="#b3261e", zorder=3)
        ax.set_yticks(range(len(features)), features)
        ax.invert_yaxis()
        ax.set_xlabel("Rank in fold model (1 = most important)")
        ax.set_xlim(left=0.5)
        ax.grid(axis="x", color="#e5e5e5")
        return _data_uri(fig)


def waterfall_figure(explanation_row: shap.Explanation, max_display: int, title: str) -> str:
    """shap waterfall of one episode (the values are on whatever scale the row carries)."""
    with _pyplot() as plt:
        plt.figure()
        shap.plots.waterfall(explanation_row, max_display=max_display, show=False)
        fig = plt.gcf()
        fig.suptitle(title, fontsize=10, y=1.0)
        return _data_uri(fig)


def message_figure(message: str) -> str:
    """A small figure that says why a plot is absent."""
    with _pyplot() as plt:
        fig, ax = plt.subplots(figsize=(5.0, 1.0))
        ax.axis("off")
        ax.text(0.5, 0.5, message, ha="center", va="center", color="#5b6670")
        return _data_uri(fig)
