"""Every figure of ctit's training evidence, drawn once (matplotlib on Agg, and shap).

A figure function returns a PNG data URI for the reviewer report, or writes a PNG file and returns
its path when given `path` (the run's MLflow artifacts and the external-evaluation folder). The Agg
backend is selected when a figure is drawn, never at import.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import shap
from scipy.stats import beta
from sklearn.metrics import roc_curve

from training.crossval import prediction_matrix

MODEL_LABELS = {
    "xgboost": "XGBoost (calibrated)",
    "logreg": "Logistic regression",
    "plt_baseline": "Baseline-PLT rule",
}
OOF_COLUMNS = {"xgboost": "p_xgb", "logreg": "p_logreg", "plt_baseline": "p_plt"}
COLOURS = {"xgboost": "#1f5f8b", "logreg": "#c2571a", "plt_baseline": "#6a8f3a"}
#: What raises and what lowers the chance of response: the clinician page's colours
#: (serving/http/static/style.css --raise and --lower), so a colour means one thing everywhere.
RAISE_COLOUR = "#1f5fa8"
LOWER_COLOUR = "#b3541e"
DPI = 96


@contextmanager
def _pyplot() -> Iterator[Any]:
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


def _data_uri(fig: Any) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight", metadata={"Software": None})
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _emit(fig: Any, path: Path | None) -> Any:
    """The figure as a data URI, or written to `path` (a PNG file) and that path."""
    if path is None:
        return _data_uri(fig)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=DPI, bbox_inches="tight", metadata={"Software": None})
    return path


def _label(model: str) -> str:
    return MODEL_LABELS.get(model, model)


def _first_repeat(oof: pd.DataFrame) -> pd.DataFrame:
    """One prediction per episode: the first repeat of repeated cross-validation."""
    if "repeat" not in oof.columns:
        return oof
    return oof[oof["repeat"] == oof["repeat"].min()]


def roc_figure(
    oof: pd.DataFrame,
    metrics: Mapping[str, Mapping[str, Mapping[str, float]]],
    scope: str = "out-of-fold",
    path: Path | None = None,
) -> Any:
    """ROC curves (first repeat) of every model with a prediction column, AUROC with its CI."""
    first = _first_repeat(oof)
    with _pyplot() as plt:
        fig, ax = plt.subplots(figsize=(5.2, 4.6))
        for model, column in OOF_COLUMNS.items():
            if column not in first.columns:
                continue
            rows = first[["y", column]].dropna()
            if rows["y"].nunique() < 2:
                continue
            fpr, tpr, _ = roc_curve(rows["y"].astype(int), rows[column])
            auc = metrics.get(model, {}).get("auroc", {})
            label = _label(model)
            if auc.get("estimate") is not None:
                label += f" (AUROC {auc['estimate']:.2f}"
                if auc.get("low") is not None and auc.get("high") is not None:
                    label += f", {auc['low']:.2f}-{auc['high']:.2f}"
                label += ")"
            ax.plot(fpr, tpr, color=COLOURS.get(model), lw=1.8, label=label)
        ax.plot([0, 1], [0, 1], color="#999999", lw=1, ls="--", label="No discrimination")
        ax.set(xlabel="1 - specificity", ylabel="Sensitivity", xlim=(0, 1), ylim=(0, 1.01))
        ax.set_title(f"ROC ({scope})")
        ax.legend(loc="lower right", fontsize=8)
        return _emit(fig, path)


def calibration_bins(y: np.ndarray, p: np.ndarray, n_bins: int = 10) -> pd.DataFrame:
    """Observed response by quantile bin of predicted probability, with Clopper-Pearson 95% CIs."""
    edges = np.unique(np.quantile(p, np.linspace(0, 1, n_bins + 1)))
    if len(edges) < 2:
        edges = np.array([edges[0], edges[0]])
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


def calibration_figure(
    oof: pd.DataFrame,
    metrics: Mapping[str, Mapping[str, Mapping[str, float]]] | None = None,
    scope: str = "out-of-fold",
    n_bins: int = 10,
    path: Path | None = None,
) -> Any:
    """Observed vs predicted response by quantile bin with 95% CIs (each episode's prediction
    averaged over repeats), for XGBoost and logistic regression; XGBoost's predictions below."""
    metrics = metrics or {}
    with _pyplot() as plt:
        fig, (ax, hist_ax) = plt.subplots(
            2, 1, figsize=(5.2, 5.4), sharex=True, gridspec_kw={"height_ratios": [3, 1]}
        )
        ax.plot([0, 1], [0, 1], color="#999999", lw=1, ls="--", label="Perfect calibration")
        for model, marker in (("xgboost", "o"), ("logreg", "s")):
            column = OOF_COLUMNS[model]
            if column not in oof.columns:
                continue
            rows = oof.dropna(subset=[column])
            if rows.empty or rows["y"].nunique() < 2:
                continue
            if "repeat" in rows.columns:
                predictions, y, _ = prediction_matrix(rows, column)
                p = predictions.mean(axis=0)
            else:
                p, y = rows[column].to_numpy(), rows["y"].to_numpy(dtype=float)
            table = calibration_bins(y, p, min(n_bins, max(2, len(np.unique(p)))))
            slope = metrics.get(model, {}).get("calibration_slope", {}).get("estimate")
            label = _label(model) + (f", slope {slope:.2f}" if slope is not None else "")
            ax.errorbar(
                table["predicted"],
                table["observed"],
                yerr=[table["observed"] - table["low"], table["high"] - table["observed"]],
                fmt=marker + "-",
                ms=4,
                lw=1.5,
                capsize=3,
                color=COLOURS.get(model),
                label=label,
            )
            if model == "xgboost":
                hist_ax.hist(p, bins=30, range=(0, 1), color=COLOURS["xgboost"])
        ax.set(ylabel="Observed response rate", xlim=(0, 1), ylim=(0, 1.02))
        ax.set_title(f"Calibration ({scope}, 95% CI)")
        ax.legend(loc="upper left", fontsize=8)
        hist_ax.set(xlabel="Predicted probability of response", ylabel="Episodes")
        return _emit(fig, path)


def decision_curve_figure(
    curve: pd.DataFrame, scope: str = "out-of-fold", path: Path | None = None
) -> Any:
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
        ax.set_title(f"Decision curve ({scope})")
        ax.legend(fontsize=8)
        return _emit(fig, path)


def contributions_explanation(contribs: np.ndarray, X: pd.DataFrame) -> shap.Explanation:
    """A shap Explanation of exact contributions (n, p + 1; the last column the base value)."""
    return shap.Explanation(
        values=contribs[:, :-1],
        base_values=contribs[:, -1],
        data=X.to_numpy(dtype=float),
        feature_names=list(X.columns),
    )


def relabel(explanation: shap.Explanation, labels: Mapping[str, str]) -> shap.Explanation:
    """The same explanation with clinical names (and units) instead of code names."""
    return shap.Explanation(
        values=explanation.values,
        base_values=explanation.base_values,
        data=explanation.data,
        feature_names=[labels.get(n, n) for n in explanation.feature_names],
    )


def importance_figure(explanation: shap.Explanation, max_display: int) -> str:
    """Mean |SHAP| by feature, largest first; the rest pooled into one bar, counted."""
    with _pyplot() as plt:
        means = np.abs(np.asarray(explanation.values)).mean(axis=0)
        order = np.argsort(-means, kind="stable")
        shown = order[: max_display - 1] if len(order) > max_display else order
        names = [explanation.feature_names[j] for j in shown]
        values = [float(means[j]) for j in shown]
        rest = order[len(shown) :]
        if rest.size:
            names.append(f"Sum of {rest.size} other features")
            values.append(float(means[rest].sum()))
        fig, ax = plt.subplots(figsize=(7.0, 0.32 * len(names) + 1.2))
        ax.barh(range(len(names)), values, color=COLOURS["xgboost"])
        for y, value in enumerate(values):
            ax.text(value, y, f" {value:.3f}", va="center", fontsize=8)
        ax.set_yticks(range(len(names)), names, fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel("mean |SHAP value| (log-odds of response)")
        ax.spines[["top", "right"]].set_visible(False)
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


@contextmanager
def _seeded_numpy(seed: int = 0) -> Iterator[None]:
    """shap's plots jitter and sample with numpy's global generator: seed it for the plot (the
    same report twice gives the same images) and give the caller's state back afterwards."""
    state = np.random.get_state()
    np.random.seed(seed)  # noqa: NPY002 - shap draws from the global generator
    try:
        yield
    finally:
        np.random.set_state(state)


def beeswarm_figure(
    explanation: shap.Explanation, max_display: int, path: Path | None = None
) -> Any:
    """SHAP beeswarm of the most important features."""
    with _pyplot() as plt:
        plt.figure(figsize=(8.0, 0.42 * min(max_display, explanation.shape[1]) + 1.6))
        with _seeded_numpy():
            shap.plots.beeswarm(explanation, max_display=max_display, show=False, plot_size=None)
        fig = plt.gcf()
        fig.axes[0].set_xlabel("SHAP value (log-odds of response)")
        return _emit(fig, path)


def dependence_figure(explanation: shap.Explanation, feature: str, xlabel: str = "") -> str:
    """SHAP dependence of one feature, coloured by its strongest approximate interaction."""
    with _pyplot() as plt:
        fig, ax = plt.subplots(figsize=(5.4, 4.0))
        column = explanation[:, feature]
        colour = explanation if explanation.values.shape[1] > 1 else "#1f5f8b"
        with _seeded_numpy():
            shap.plots.scatter(column, color=colour, ax=ax, show=False, ylabel="SHAP (log-odds)")
        if xlabel:
            ax.set_xlabel(xlabel)
        from matplotlib.ticker import FormatStrFormatter, MaxNLocator

        for other in plt.gcf().axes:
            if other is not ax:  # the colour bar: a few round ticks, not 14.07
                other.yaxis.set_major_locator(MaxNLocator(5))
                other.yaxis.set_major_formatter(FormatStrFormatter("%.3g"))
        return _data_uri(plt.gcf())


def forest_figure(subgroups: pd.DataFrame, overall: Mapping[str, float] | None) -> str:
    """AUROC (95% CI) of the calibrated XGBoost model in every subgroup level, with N."""
    frame = subgroups[subgroups["model"] == "xgboost"] if "model" in subgroups else subgroups
    frame = frame.dropna(subset=["auroc"]).sort_values(["subgroup", "level"], kind="stable")
    with _pyplot() as plt:
        fig, ax = plt.subplots(figsize=(7.0, 0.34 * max(len(frame), 1) + 1.4))
        labels = []
        for y, record in enumerate(frame.to_dict("records")):
            estimate = float(record["auroc"])
            low, high = record.get("auroc_low"), record.get("auroc_high")
            if low is not None and high is not None and np.isfinite([low, high]).all():
                ax.plot([low, high], [y, y], color=COLOURS["xgboost"], lw=1.6)
            ax.plot([estimate], [y], marker="s", color=COLOURS["xgboost"], ms=5)
            subgroup = str(record.get("subgroup", "")).replace("_", " ")
            labels.append(f"{subgroup}: {record.get('level')} (n={record.get('n')})")
        if overall and overall.get("estimate") is not None:
            ax.axvline(float(overall["estimate"]), color="#555555", ls="--", lw=1,
                       label=f"all episodes {float(overall['estimate']):.3f}")  # fmt: skip
            ax.legend(fontsize=8, loc="lower left")
        ax.axvline(0.5, color="#b3261e", ls=":", lw=1)
        ax.set_yticks(range(len(labels)), labels, fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel("AUROC (95% CI), XGBoost out of fold")
        ax.set_xlim(0.3, 1.0)
        ax.grid(axis="x", color="#e5e5e5")
        return _data_uri(fig)


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


def waterfall_figure(
    explanation_row: shap.Explanation, max_display: int, title: str, labels: Mapping[str, str]
) -> str:
    """One episode's factors as steps on the row's scale (the probability scale in the report):
    blue raises and orange lowers the chance of response, as on the clinician page."""
    values = np.asarray(explanation_row.values, dtype=float)
    order = np.argsort(-np.abs(values), kind="stable")
    shown = order[: max_display - 1] if values.size > max_display else order
    rest = order[len(shown) :]
    rest = rest[values[rest] != 0]  # features this episode does not use are not counted
    steps = [(labels.get(explanation_row.feature_names[j], explanation_row.feature_names[j]),
              float(values[j])) for j in shown]  # fmt: skip
    if rest.size:
        steps.append((f"{rest.size} other features", float(values[rest].sum())))
    base = float(np.asarray(explanation_row.base_values).reshape(-1)[0])
    with _pyplot() as plt:
        fig, ax = plt.subplots(figsize=(7.6, 0.36 * (len(steps) + 2) + 1.0))
        names = ["Average patient (base value)"]
        ax.barh(0, base, color="#3d4349")
        position = base
        for y, (name, step) in enumerate(steps, start=1):
            colour = RAISE_COLOUR if step >= 0 else LOWER_COLOUR
            ax.barh(y, step, left=position, color=colour)
            ax.text(max(position, position + step), y, f" {step:+.3f}", va="center", fontsize=7)
            position += step
            names.append(name)
        ax.barh(len(steps) + 1, position, color="#3d4349")
        ax.text(position, len(steps) + 1, f" {position:.3f}", va="center", fontsize=8)
        names.append("This episode")
        ax.set_yticks(range(len(names)), names, fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel("Probability of response (calibrated)")
        ax.spines[["top", "right"]].set_visible(False)
        fig.suptitle(title, fontsize=10)
        return _data_uri(fig)


def message_figure(message: str) -> str:
    """A small figure that says why a plot is absent."""
    with _pyplot() as plt:
        fig, ax = plt.subplots(figsize=(5.0, 1.0))
        ax.axis("off")
        ax.text(0.5, 0.5, message, ha="center", va="center", color="#5b6670")
        return _data_uri(fig)
