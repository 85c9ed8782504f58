"""Time to response: interval-censored targets, the XGBoost AFT fit, and its out-of-fold evidence.

Targets (one row per episode with a baseline PLT and at least one PLT on days 1..horizon):
- a responder (first response day R from `data.labels`) responded in (L, R], L the day of the
  last PLT draw before R (0 when R is the first draw: left-censored);
- a labelled non-responder is right-censored at its last PLT draw in days 1..horizon (L, inf);
- an episode excluded for follow-up that stopped (not evaluable: no response and no PLT late
  enough) is right-censored at its last draw too: it did not respond while followed, which is
  information the binary label has to drop but a survival model can use;
- an episode excluded because a responding count could not be confirmed (`confirm_days`: no PLT
  late enough after it) is right-censored at its last draw at least `confirm_days` before its
  last draw: every count up to there was confirmed or refuted, a later one may be a response;
- a given outcome without PLT draws: a responder in (0, horizon], a non-responder (horizon, inf).
Episodes without a baseline cannot be judged and are left out.

Evaluation is out of fold on the experiment's outer folds (first repeat, each episode once): the
AFT procedure is refitted on each training fold and its curve is reconciled with that fold's
calibrated out-of-fold probability (`p_xgb`), exactly as served (`serving.survival`). Reported with
patient-bootstrap 95% CIs: Harrell's and Uno's concordance of the time model, calibration of
P(response by day 7) and by day 14 (O/E, intercept, slope, Brier) against the response observed
by that day (a response between two draws around the day counts by the share of the days between
them up to it: `responded_by`), and the days from the predicted median day to the interval the
observed response lies in.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd
import xgboost as xgb

from data.labels import NO_BASELINE, LabelDefinition, unconfirmed_reason
from serving.predict.survival import TimeToResponse, median_day
from training.config import ExperimentConfig, SurvivalConfig
from training.metrics import (
    bootstrap_weights,
    brier,
    calibration_intercept,
    calibration_slope,
    oe_ratio,
)
from training.validation import Fold, inner_split

log = logging.getLogger(__name__)

Observer = Callable[[str, np.ndarray], None]
TREE_KEYS = ("max_depth", "learning_rate", "min_child_weight", "subsample", "colsample_bytree")


def survival_targets(
    cohort: Any, labels: pd.DataFrame, definition: LabelDefinition
) -> pd.DataFrame:
    """Interval-censored time to response per episode (see the module docstring).

    Returns a frame indexed by `episode_id` with `patient_id`, `lower`, `upper` (inf when
    right-censored), `event` (bool) and `status` (`response`, `no_response`, `lost`).
    """
    horizon = definition.horizon_days
    episodes = cohort.episodes[["episode_id", "patient_id", "index_date"]].copy()
    episodes["episode_id"] = episodes["episode_id"].astype(str)
    index_day = episodes["index_date"].dt.normalize()
    labs = cohort.labs
    plt = labs.loc[
        (labs["test"] == "PLT") & labs["value"].notna() & labs["time"].notna(),
        ["patient_id", "time"],
    ]
    draws = episodes.assign(index_day=index_day).merge(plt, on="patient_id", how="inner")
    draws["day"] = (draws["time"].dt.normalize() - draws["index_day"]).dt.days
    draws = draws[(draws["day"] >= 1) & (draws["day"] <= horizon)]
    days_by_episode = draws.groupby("episode_id")["day"].apply(lambda d: np.unique(d.to_numpy()))

    lab = labels.assign(episode_id=labels["episode_id"].astype(str)).set_index("episode_id")
    unconfirmed = (
        unconfirmed_reason(definition.confirm_days) if definition.confirm_days is not None else None
    )
    rows = []
    for episode_id, patient_id in zip(episodes["episode_id"], episodes["patient_id"], strict=True):
        label = lab.at[episode_id, "label"]
        exclusion = lab.at[episode_id, "exclusion"]
        response_day = lab.at[episode_id, "days_to_response"]
        days = days_by_episode.get(episode_id, np.zeros(0, dtype=np.int64))
        if pd.isna(label):
            if exclusion == NO_BASELINE or days.size == 0 or not pd.isna(response_day):
                continue
            if exclusion == unconfirmed:
                # A responding count in the last `confirm_days` of follow-up had no later PLT
                # to confirm it: free of response is known only up to the last draw that a
                # later one could have confirmed.
                days = days[days <= days.max() - int(definition.confirm_days or 0)]
                if days.size == 0:
                    continue
            rows.append((episode_id, patient_id, float(days.max()), np.inf, False, "lost"))
        elif int(label) == 1:
            if pd.isna(response_day):  # a given response without a dated PLT
                rows.append((episode_id, patient_id, 0.0, float(horizon), True, "response"))
                continue
            before = days[days < response_day]
            lower = float(before.max()) if before.size else 0.0
            rows.append((episode_id, patient_id, lower, float(response_day), True, "response"))
        else:
            lower = float(days.max()) if days.size else float(horizon)
            rows.append((episode_id, patient_id, lower, np.inf, False, "no_response"))
    frame = pd.DataFrame(
        rows, columns=["episode_id", "patient_id", "lower", "upper", "event", "status"]
    ).set_index("episode_id")
    frame["patient_id"] = frame["patient_id"].astype(str)
    return frame


def timed_responders(targets: pd.DataFrame, horizon_days: int) -> int:
    """Responders whose interval says something about when: not the whole (0, horizon]."""
    event = targets["event"].to_numpy(bool)
    informative = (targets["lower"].to_numpy(float) > 0) | (
        targets["upper"].to_numpy(float) < horizon_days
    )
    return int((event & informative).sum())


def _aft_params(tree_params: dict[str, Any], config: SurvivalConfig, scale: float) -> dict:
    params = {k: tree_params[k] for k in TREE_KEYS if k in tree_params}
    params.update(
        objective="survival:aft",
        eval_metric="aft-nloglik",
        aft_loss_distribution=config.distribution,
        aft_loss_distribution_scale=float(scale),
        tree_method="hist",
        nthread=int(tree_params.get("nthread", 1)),
        seed=int(tree_params.get("seed", 0)),
    )
    return params


def _aft_matrix(X: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> xgb.DMatrix:
    matrix = xgb.DMatrix(np.asarray(X, dtype=np.float32), missing=np.nan, nthread=1)
    matrix.set_float_info("label_lower_bound", np.asarray(lower, dtype=np.float32))
    matrix.set_float_info("label_upper_bound", np.asarray(upper, dtype=np.float32))
    return matrix


def fit_time_model(
    X: np.ndarray,
    targets: pd.DataFrame,
    horizon_days: int,
    config: SurvivalConfig,
    tree_params: dict[str, Any],
    max_rounds: int,
    early_stopping_rounds: int,
    valid_fraction: float,
    seed: int,
) -> TimeToResponse:
    """The AFT procedure: scale and rounds chosen on a patient-grouped inner split, refit on all."""
    lower = targets["lower"].to_numpy(dtype=float)
    upper = targets["upper"].to_numpy(dtype=float)
    event = targets["event"].to_numpy().astype(int)
    groups = targets["patient_id"].to_numpy()
    X = np.asarray(X, dtype=np.float32)
    if len(np.unique(groups)) >= 4 and event.min() != event.max():
        train, valid = inner_split(event, groups, valid_fraction, seed)
    else:  # too small to hold patients out: fixed rounds, first scale
        train, valid = np.arange(len(event)), np.zeros(0, dtype=int)
    best: tuple[float, float, int] | None = None
    if len(valid):
        dtrain = _aft_matrix(X[train], lower[train], upper[train])
        dvalid = _aft_matrix(X[valid], lower[valid], upper[valid])
        for scale in config.scales:
            booster = xgb.train(
                _aft_params(tree_params, config, scale),
                dtrain,
                num_boost_round=max_rounds,
                evals=[(dvalid, "valid")],
                early_stopping_rounds=early_stopping_rounds,
                verbose_eval=False,
            )
            score = float(booster.best_score)
            if best is None or score < best[0]:
                best = (score, scale, booster.best_iteration + 1)
    scale, n_rounds = (best[1], best[2]) if best else (config.scales[0], min(max_rounds, 50))
    booster = xgb.train(
        _aft_params(tree_params, config, scale),
        _aft_matrix(X, lower, upper),
        num_boost_round=n_rounds,
    )
    return TimeToResponse(
        booster=booster,
        distribution=config.distribution,
        scale=float(scale),
        horizon_days=horizon_days,
        meta={"n_rounds": int(n_rounds), "n_episodes": int(len(event))},
    )


# -- concordance --------------------------------------------------------------------------------


def _censoring_survival(time: np.ndarray, event: np.ndarray) -> Callable[[float], float]:
    """Kaplan-Meier of the censoring distribution, G(t-) = P(C >= t), for Uno's weights."""
    times = np.unique(time[~event])
    at_risk = np.array([(time >= t).sum() for t in times], dtype=float)
    censored = np.array([((time == t) & ~event).sum() for t in times], dtype=float)
    surv = np.cumprod(1 - censored / np.maximum(at_risk, 1))

    def before(t: float) -> float:
        k = np.searchsorted(times, t, side="left") - 1
        return 1.0 if k < 0 else float(surv[k])

    return before


def concordance(
    time: np.ndarray,
    event: np.ndarray,
    risk: np.ndarray,
    w: np.ndarray | None = None,
    uno: bool = False,
    tau: float | None = None,
) -> np.ndarray:
    """Harrell's (or, with `uno`, Uno's IPCW) concordance, one value per weight row.

    A pair (i, j) is comparable when i has the event and j is known to be still without it at
    i's time (later time, or censored at the same time); concordant when i's risk is higher, half
    when tied. Uno's weights each comparable pair by 1 / G(t_i-)^2, G the censoring survival, and
    counts only events up to `tau`.
    """
    time = np.asarray(time, dtype=float)
    event = np.asarray(event, dtype=bool)
    risk = np.asarray(risk, dtype=float)
    w = np.ones((1, len(time))) if w is None else np.atleast_2d(np.asarray(w, dtype=float))
    g = _censoring_survival(time, event) if uno else None
    numerator = np.zeros(w.shape[0])
    denominator = np.zeros(w.shape[0])
    for t in np.unique(time[event]):
        if tau is not None and t > tau:
            continue
        cases = np.flatnonzero(event & (time == t))
        controls = np.flatnonzero((time > t) | ((time == t) & ~event))
        if controls.size == 0:
            continue
        order = controls[np.argsort(risk[controls], kind="stable")]
        sorted_risk = risk[order]
        cumulative = np.concatenate(
            [np.zeros((w.shape[0], 1)), np.cumsum(w[:, order], axis=1)], axis=1
        )
        below = np.searchsorted(sorted_risk, risk[cases], side="left")
        upto = np.searchsorted(sorted_risk, risk[cases], side="right")
        lower_w = cumulative[:, below]
        tied_w = cumulative[:, upto] - lower_w
        total = cumulative[:, -1:]
        weight = w[:, cases]
        if g is not None:
            weight = weight / max(g(t), 1e-3) ** 2
        numerator += (weight * (lower_w + 0.5 * tied_w)).sum(axis=1)
        denominator += (weight * total).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return numerator / denominator


# -- out-of-fold evaluation ---------------------------------------------------------------------


def responded_by(day: int, event: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> np.ndarray:
    """How much of each episode's response is known to fall on or before `day`.

    1 when its interval (lower, upper] ends by `day`, 0 when it starts at or after `day` or the
    episode did not respond; for a response between two draws around `day`, the share of the
    interval's days up to `day`, (day - lower) / (upper - lower): any day between the draws
    equally likely. Counting such a response as "not yet" (as `upper <= day` would) makes
    P(response by day d) look over-predicted as soon as PLT is not drawn daily.
    """
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.clip((day - lower) / (upper - lower), 0.0, 1.0)
    return np.where(event, np.nan_to_num(share, nan=1.0), 0.0)


def split_between_draws(
    share: np.ndarray, predicted: np.ndarray
) -> tuple[np.ndarray, np.ndarray, Callable[[np.ndarray], np.ndarray]]:
    """Outcomes, predictions and a weight map for metrics of binary outcomes: an episode with a
    share s strictly between 0 and 1 counts as a responder with weight s and as a non-responder
    with weight 1 - s (so O/E, Brier and the logistic calibration fits use expected counts)."""
    between = np.flatnonzero((share > 0) & (share < 1))
    y = np.concatenate([np.round(share), np.ones(between.size), np.zeros(between.size)])
    y[between] = 0.0  # these columns get weight 0: their two halves follow
    q = np.concatenate([predicted, predicted[between], predicted[between]])
    s = share[between]

    def expand(w: np.ndarray) -> np.ndarray:
        w = np.atleast_2d(w).astype(float)
        kept = w.copy()
        kept[:, between] = 0.0
        return np.concatenate([kept, w[:, between] * s, w[:, between] * (1 - s)], axis=1)

    return y, q, expand


def _estimate(fn: Callable[[np.ndarray], np.ndarray], weights: np.ndarray) -> dict[str, float]:
    point = float(fn(np.ones((1, weights.shape[1])))[0])
    boot = fn(weights)
    boot = boot[np.isfinite(boot)]
    low, high = np.percentile(boot, [2.5, 97.5]) if boot.size else (np.nan, np.nan)
    return {"estimate": point, "low": float(low), "high": float(high)}


def evaluate_out_of_fold(
    X_all: pd.DataFrame,
    targets: pd.DataFrame,
    folds: Sequence[Fold],
    labelled_ids: pd.Index,
    oof: pd.DataFrame,
    config: ExperimentConfig,
    tree_params: dict[str, Any],
    horizon_days: int,
    observer: Observer | None = None,
) -> dict[str, Any]:
    """Refit the AFT procedure on each outer training fold (first repeat); score its test fold."""
    first = [f for f in folds if f.repeat == 0]
    patient_of = targets["patient_id"]
    labelled_patients = (
        pd.Series(targets["patient_id"].reindex(labelled_ids).to_numpy(), index=labelled_ids)
        if len(labelled_ids)
        else pd.Series(dtype=str)
    )
    n = len(targets)
    mu = np.full(n, np.nan)
    timing = np.full((n, horizon_days), np.nan)  # F(d) / F(H): the timing given response
    own = np.full((n, horizon_days), np.nan)  # F(d): the AFT model's own curve
    for fold in first:
        test_patients = set(labelled_patients.iloc[fold.test].dropna())
        in_test = patient_of.isin(test_patients).to_numpy()
        train_idx = np.flatnonzero(~in_test)
        test_idx = np.flatnonzero(in_test)
        if test_idx.size == 0 or train_idx.size == 0:
            continue
        if observer is not None:  # positions in the labelled episodes, as every observer call
            seen = labelled_ids.get_indexer(targets.index[train_idx])
            observer("survival_oof", seen[seen >= 0])
        model = fit_time_model(
            X_all.loc[targets.index[train_idx]].to_numpy(dtype=np.float32),
            targets.iloc[train_idx],
            horizon_days,
            config.survival,
            tree_params,
            config.model.max_rounds,
            config.model.early_stopping_rounds,
            1.0 / config.model.inner_folds,  # one inner fold held out, as the procedure does
            config.validation.seed + fold.fold,
        )
        location = model.location(X_all.loc[targets.index[test_idx]].to_numpy(dtype=np.float32))
        mu[test_idx] = location
        timing[test_idx] = model.timing(location)
        own[test_idx] = model.unreconciled(location)
    keep = ~np.isnan(mu)
    scored = targets.loc[keep]
    ev = config.evaluation
    out: dict[str, Any] = {
        "n_episodes": int(len(targets)),
        "n_events": int(targets["event"].sum()),
        "n_no_response": int((targets["status"] == "no_response").sum()),
        "n_lost": int((targets["status"] == "lost").sum()),
        "n_scored_out_of_fold": int(keep.sum()),
        "metrics": {},
    }
    if keep.sum() < 10 or scored["event"].nunique() < 2:
        return out
    event = scored["event"].to_numpy().astype(bool)
    time = np.where(event, scored["upper"], scored["lower"]).astype(float)
    weights = bootstrap_weights(scored["patient_id"].to_numpy(), ev.n_bootstrap, ev.bootstrap_seed)
    metrics = out["metrics"]
    risk = -mu[keep]
    metrics["harrell_c"] = _estimate(lambda w: concordance(time, event, risk, w), weights)
    metrics["uno_c"] = _estimate(
        lambda w: concordance(time, event, risk, w, uno=True, tau=horizon_days), weights
    )

    # The curve as served: each fold's timing times that fold's calibrated probability.
    first_oof = oof[oof["repeat"] == 0].drop_duplicates("episode_id").set_index("episode_id")
    position = pd.Series(np.arange(n), index=targets.index)
    ids = scored.index.intersection(first_oof.index)
    if len(ids) < 10:
        return out
    rows = position.loc[ids].to_numpy()
    p = first_oof.loc[ids, "p_xgb"].to_numpy(dtype=float)
    curve = p[:, None] * timing[rows]
    sub = targets.loc[ids]
    sub_event = sub["event"].to_numpy().astype(bool)
    sub_time = np.where(sub_event, sub["upper"], sub["lower"]).astype(float)
    sub_weights = bootstrap_weights(sub["patient_id"].to_numpy(), ev.n_bootstrap, ev.bootstrap_seed)
    metrics["curve_harrell_c"] = _estimate(
        lambda w: concordance(sub_time, sub_event, curve[:, min(7, horizon_days) - 1], w),
        sub_weights,
    )
    sub_lower, sub_upper = sub["lower"].to_numpy(float), sub["upper"].to_numpy(float)
    for day in sorted({min(int(d), horizon_days) for d in config.survival.calibration_days}):
        share = responded_by(day, sub_event, sub_lower, sub_upper)
        between = (share > 0) & (share < 1)
        for name, predicted in (("day", curve[:, day - 1]), ("aft_day", own[rows, day - 1])):
            prefix = f"{name}{day}"
            metrics[f"{prefix}.observed"] = {"estimate": float(share.mean())}
            metrics[f"{prefix}.predicted"] = {"estimate": float(predicted.mean())}
            metrics[f"{prefix}.n_between_draws"] = {"estimate": float(between.sum())}
            y, q, expand = split_between_draws(share, predicted)
            for metric, fn in (
                ("oe_ratio", oe_ratio),
                ("calibration_intercept", calibration_intercept),
                ("calibration_slope", calibration_slope),
                ("brier", brier),
            ):
                metrics[f"{prefix}.{metric}"] = _estimate(
                    lambda w, fn=fn, y=y, q=q, expand=expand: fn(y, q, expand(w)), sub_weights
                )
    # Agreement of the predicted median day (given response) with the observed response day.
    responders = np.flatnonzero(sub_event)
    if responders.size:
        median = np.array([median_day(row) or horizon_days for row in timing[rows][responders]])
        upper = sub["upper"].to_numpy()[responders]
        lower = sub["lower"].to_numpy()[responders]
        inside = ((median > lower) & (median <= upper)).astype(float)
        # days from the predicted median to the interval the response is known to lie in
        error = np.maximum(lower + 1 - median, 0) + np.maximum(median - upper, 0)
        w_r = sub_weights[:, responders]

        def weighted_mean(values: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
            return lambda w: (w * values).sum(axis=1) / w.sum(axis=1)

        metrics["responders.median_abs_error_days"] = _estimate(weighted_mean(error), w_r)
        metrics["responders.median_in_observed_interval"] = _estimate(weighted_mean(inside), w_r)
    return out


def fit_time_to_response(
    config: ExperimentConfig,
    cohort: Any,
    labels: pd.DataFrame,
    X_all: pd.DataFrame,
    definition: LabelDefinition,
    folds: Sequence[Fold],
    labelled_ids: pd.Index,
    oof: pd.DataFrame,
    tree_params: dict[str, Any],
    observer: Observer | None = None,
) -> tuple[TimeToResponse | None, dict[str, Any]]:
    """The deployed time model on every episode with a target, and its out-of-fold evidence."""
    if not config.survival.enabled:
        return None, {"enabled": False}
    targets = survival_targets(cohort, labels, definition)
    if len(targets) < 10 or not targets["event"].any():
        log.warning("time to response: %d episodes with a target; no model", len(targets))
        return None, {"enabled": True, "n_episodes": int(len(targets)), "metrics": {}}
    timed = timed_responders(targets, definition.horizon_days)
    if timed < config.survival.min_timed_responders:
        reason = (
            f"timing not estimable: {timed} of {int(targets['event'].sum())} responders have a "
            f"response interval narrower than days 0-{definition.horizon_days} (at least "
            f"{config.survival.min_timed_responders} needed); no response_by_day is served"
        )
        log.warning("time to response: %s", reason)
        return None, {
            "enabled": True,
            "n_episodes": int(len(targets)),
            "n_timed_responders": timed,
            "not_estimable": reason,
            "metrics": {},
        }
    X = X_all.loc[targets.index]
    evidence = evaluate_out_of_fold(
        X,
        targets,
        folds,
        labelled_ids,
        oof,
        config,
        tree_params,
        definition.horizon_days,
        observer,
    )
    if observer is not None:
        seen = labelled_ids.get_indexer(targets.index)
        observer("survival_final", seen[seen >= 0])
    model = fit_time_model(
        X.to_numpy(dtype=np.float32),
        targets,
        definition.horizon_days,
        config.survival,
        tree_params,
        config.model.max_rounds,
        config.model.early_stopping_rounds,
        1.0 / config.model.inner_folds,
        config.validation.seed,
    )
    evidence.update(
        enabled=True,
        distribution=model.distribution,
        scale=model.scale,
        n_rounds=model.meta["n_rounds"],
        meaning=model.meaning(),
    )
    model.meta["evidence"] = {k: v for k, v in evidence.items() if k != "metrics"}
    return model, evidence


def log_time_to_response_metrics(evidence: dict[str, Any] | None) -> None:
    """`time_to_response.{metric}` and `.low`/`.high` in the active MLflow run."""
    import mlflow

    values: dict[str, float] = {}
    for name, estimate in ((evidence or {}).get("metrics") or {}).items():
        for key, suffix in (("estimate", ""), ("low", ".low"), ("high", ".high")):
            value = estimate.get(key)
            if value is not None and np.isfinite(value):
                values[f"time_to_response.{name}{suffix}"] = float(value)
    if values:
        mlflow.log_metrics(values)
