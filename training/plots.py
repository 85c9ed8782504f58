"""Figures of a training run as PNG files (matplotlib, Agg backend, no display needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import beta
from sklearn.metrics import roc_curve

from training.crossval import prediction_matrix
from training.evaluation import MODELS

LABELS = {
    "xgboost": "XGBoost (calibrated)",
    "logreg": "Logistic regression",
    "plt_baseline": "Baseline PLT only",
}


def _pyplot():
    """pyplot on the file-only Agg backend, chosen when a figure is drawn (not at import)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _auc_label(metrics: dict, model: str) -> str:
    auc = metrics.get(model, {}).get("auroc")
    if not auc:
        return LABELS[model]
    return f"{LABELS[model]}: AUROC {auc['estimate']:.3f} ({auc['low']:.3f}-{auc['high']:.3f})"


def roc_plot(oof: pd.DataFrame, metrics: dict, path: Path, scope: str = "out-of-fold") -> Path:
    """ROC curves of the out-of-fold predictions (first repeat) for every model."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 6))
    first = oof[oof["repeat"] == oof["repeat"].min()]
    for model, column in MODELS.items():
        if column not in first:
            continue
        fpr, tpr, _ = roc_curve(first["y"], first[column])
        ax.plot(fpr, tpr, label=_auc_label(metrics, model))
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    ax.set(xlabel="1 - specificity", ylabel="Sensitivity", title=f"ROC ({scope})")
    ax.legend(loc="lower right", fontsize=8)
    return _save(fig, path)


def calibration_bins(y: np.ndarray, p: np.ndarray, n_bins: int = 10) -> pd.DataFrame:
    """Observed response by quantile bin of predicted probability, with Clopper-Pearson 95% CIs."""
    edges = np.unique(np.quantile(p, np.linspace(0, 1, n_bins + 1)))
    bins = np.clip(np.searchsorted(edges, p, side="right") - 1, 0, len(edges) - 2)
    rows = []
    for b in range(len(edges) - 1):
        mask = bins == b
        n, k = int(mask.sum()), int(y[mask].sum())
        if n == 0:
            continue
        low = beta.ppf(0.025, k, n - k + 1) if k > 0 else 0.0
        high = beta.ppf(0.975, k + 1, n - k) if k < n else 1.0
        rows.append(
            {"predicted": p[mask].mean(), "observed": k / n, "low": low, "high": high, "n": n}
        )
    return pd.DataFrame(rows)


def calibration_plot(
    oof: pd.DataFrame, metrics: dict, path: Path, scope: str = "out-of-fold"
) -> Path:
    """Observed vs predicted response by decile, 95% CIs, for XGBoost and logistic regression."""
    plt = _pyplot()
    fig, (ax, hist) = plt.subplots(2, 1, figsize=(6, 7), height_ratios=[4, 1], sharex=True)
    for model, marker in (("xgboost", "o"), ("logreg", "s")):
        if MODELS[model] not in oof:
            continue
        predictions, y, _ = prediction_matrix(oof, MODELS[model])
        table = calibration_bins(y, predictions.mean(axis=0))
        slope = metrics.get(model, {}).get("calibration_slope", {}).get("estimate", np.nan)
        ax.errorbar(
            table["predicted"],
            table["observed"],
            yerr=[table["observed"] - table["low"], table["high"] - table["observed"]],
            fmt=marker + "-",
            capsize=3,
            label=f"{LABELS[model]} (slope {slope:.2f})",
        )
        if model == "xgboost":
            hist.hist(predictions.mean(axis=0), bins=40, range=(0, 1), color="C0", alpha=0.7)
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    ax.set(
        ylabel="Observed response",
        title=f"Calibration ({scope}, 95% CI)",
        xlim=(0, 1),
        ylim=(0, 1),
    )
    ax.legend(loc="upper left", fontsize=8)
    hist.set(xlabel="Predicted probability of response", ylabel="Episodes")
    return _save(fig, path)


def decision_curve_plot(curve: pd.DataFrame, path: Path, scope: str = "out-of-fold") -> Path:
    """Net benefit against threshold probability, with treat-all and treat-none."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 5))
    for model, frame in curve.groupby("model", sort=False):
        style = {"treat_all": ":", "treat_none": "--"}.get(model, "-")
        ax.plot(
            frame["threshold"],
            frame["net_benefit"],
            style,
            label=LABELS.get(model, model.replace("_", " ")),
        )
    top = curve["net_benefit"].max()
    ax.set(
        xlabel="Threshold probability of response",
        ylabel="Net benefit",
        title=f"Decision curve ({scope})",
        ylim=(-0.05, max(0.05, top * 1.1)),
    )
    ax.legend(fontsize=8)
    return _save(fig, path)


def shap_beeswarm(contribs: np.ndarray, X: pd.DataFrame, path: Path, max_display: int = 15) -> Path:
    """SHAP beeswarm of the final booster's exact contributions (log-odds), via the shap library."""
    plt = _pyplot()
    import shap

    explanation = shap.Explanation(
        values=contribs[:, :-1],
        base_values=contribs[:, -1],
        data=X.to_numpy(dtype=float),
        feature_names=list(X.columns),
    )
    plt.figure()
    shap.plots.beeswarm(explanation, max_display=max_display, show=False)
    fig = plt.gcf()
    fig.suptitle("SHAP contributions (log-odds), final model")
    return _save(fig, path)


def _save(fig, path: Path) -> Path:
    plt = _pyplot()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
