"""The oracle given observable data, estimated on a large simulated reference cohort.

The simulator's `oracle.csv` gives each episode's response probability given its latent
pre-index state (marrow compartments, reserve, rate constants): an upper bound that no model of
the tables can reach. DESIGN.md's yardstick is the probability given the *observable* data,
E[y | observations]. Because the latent oracle `p` satisfies E[y | latent] = p and the
observations are a function of the pre-index history, E[y | observations] = E[p | observations];
so a flexible regression of `p` on a rich summary of the observations, fitted on a reference
cohort far larger than a hospital's, estimates it. The estimate is a lower bound of the true
observable oracle (a summary can only lose information, a finite reference only adds noise);
the two bounds bracket what a model of the tables can reach.

The summary is the model's own features plus the raw histories they condense: the log platelet
count on each of the 28 days up to the index date, the last ANC and haemoglobin of each of the 8
weeks before it, and the start (days before the index date) and regimen of the last 6 cycles.
Nothing recorded after the index time (the whole index day for an index date without a time, as
the features cut) enters it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import xgboost as xgb

log = logging.getLogger(__name__)

PLT_DAYS = 28
WEEKLY_ANALYTES = ("ANC", "HGB")
WEEKS = 8
CYCLES = 6


@dataclass(frozen=True)
class OracleFit:
    """Boosting settings of the reference regression (held-out share for early stopping)."""

    max_depth: int = 4
    eta: float = 0.1
    min_child_weight: float = 20.0
    max_rounds: int = 4000
    early_stopping_rounds: int = 100
    holdout: float = 0.15
    seed: int = 0
    n_jobs: int = 2


def observation_summary(
    cohort: Any, episode_ids: pd.Index, features: pd.DataFrame, regimen_codes: dict[str, int]
) -> pd.DataFrame:
    """The observations of each episode up to its index date, one float32 row per episode.

    Args:
        cohort: a loaded `data.cohort.Cohort`.
        episode_ids: the episodes to summarise, in this order.
        features: the model features of those episodes (index `episode_id`).
        regimen_codes: regimen name -> code, shared by the reference and the scored cohort.
    """
    episodes = cohort.episodes.set_index("episode_id").loc[
        episode_ids, ["patient_id", "index_date"]
    ]
    episodes = episodes.reset_index()
    index_time = pd.to_datetime(episodes["index_date"])
    index_day = index_time.dt.normalize()
    # as the features cut: at the index time; an index date without a time keeps its whole day
    whole_day = index_day + pd.Timedelta(days=1) - pd.Timedelta(1, "ns")
    cutoff = index_time.where(index_time != index_day, whole_day)
    episodes = episodes.assign(index_day=index_day, cutoff=cutoff)
    parts = [features.loc[episode_ids].astype("float32")]

    labs = cohort.labs[cohort.labs["test"].isin(("PLT", *WEEKLY_ANALYTES))]
    dates = episodes[["episode_id", "patient_id", "index_day", "cutoff"]]
    labs = labs.merge(dates, on="patient_id")
    time = pd.to_datetime(labs["time"])
    labs = labs.assign(day=(time.dt.normalize() - labs["index_day"]).dt.days)
    # up to the index time only: what is known when hetrombopag starts
    known = (time <= labs["cutoff"]) & (labs["day"] > -WEEKS * 7)
    labs = labs[known].sort_values("time")
    platelets = labs[(labs["test"] == "PLT") & (labs["day"] > -PLT_DAYS)]
    daily = platelets.groupby(["episode_id", "day"])["value"].last().unstack()
    daily = np.log(daily.clip(lower=1.0))
    parts.append(_columns(daily, range(-PLT_DAYS + 1, 1), "plt_log_day"))
    for analyte in WEEKLY_ANALYTES:
        rows = labs[labs["test"] == analyte]
        weekly = rows.assign(week=rows["day"] // 7).groupby(["episode_id", "week"])["value"]
        parts.append(_columns(weekly.last().unstack(), range(-WEEKS, 0), f"{analyte.lower()}_week"))

    regimens = cohort.regimens.merge(episodes, on="patient_id")
    started = pd.to_datetime(regimens["start_date"]).dt.normalize()
    regimens = regimens.assign(days_before=(regimens["index_day"] - started).dt.days)
    regimens = regimens[regimens["days_before"] >= 0].sort_values("days_before", kind="stable")
    regimens = regimens.assign(k=regimens.groupby("episode_id").cumcount())
    regimens = regimens[regimens["k"] < CYCLES]
    codes = regimens["regimen"].map(regimen_codes).astype("float64")
    starts = regimens.pivot(index="episode_id", columns="k", values="days_before")
    kinds = regimens.assign(code=codes).pivot(index="episode_id", columns="k", values="code")
    parts.append(_columns(starts, range(CYCLES), "cycle_days_before"))
    parts.append(_columns(kinds, range(CYCLES), "cycle_regimen"))
    return pd.concat([p.reindex(episode_ids) for p in parts], axis=1).astype("float32")


def _columns(frame: pd.DataFrame, keys: range, prefix: str) -> pd.DataFrame:
    frame = frame.reindex(columns=list(keys))
    frame.columns = [f"{prefix}_{k}" for k in keys]
    return frame


def regimen_codes(cohort: Any) -> dict[str, int]:
    """A stable code per regimen name (sorted), unknown names later map to missing."""
    names = sorted(str(n) for n in cohort.regimens["regimen"].dropna().unique())
    return {name: i for i, name in enumerate(names)}


def fit_observable_oracle(
    summary: pd.DataFrame, latent_p: np.ndarray, fit: OracleFit | None = None
) -> xgb.Booster:
    """Regress the latent oracle on the observation summary (cross-entropy on soft targets)."""
    fit = fit or OracleFit()
    latent_p = np.asarray(latent_p, dtype=float)
    if summary.shape[0] != latent_p.shape[0]:
        raise ValueError(f"{summary.shape[0]} summary rows but {latent_p.shape[0]} probabilities")
    if not np.all((latent_p >= 0) & (latent_p <= 1)):
        raise ValueError("latent oracle probabilities must lie in [0, 1]")
    held = np.random.default_rng(fit.seed).random(len(latent_p)) < fit.holdout
    params = {
        "objective": "binary:logistic",
        "eval_metric": "logloss",
        "max_depth": fit.max_depth,
        "eta": fit.eta,
        "min_child_weight": fit.min_child_weight,
        "subsample": 0.8,
        "colsample_bytree": 0.8,
        "nthread": fit.n_jobs,
        "seed": fit.seed,
    }
    train = xgb.DMatrix(summary[~held], latent_p[~held], missing=np.nan)
    valid = xgb.DMatrix(summary[held], latent_p[held], missing=np.nan)
    booster = xgb.train(
        params,
        train,
        fit.max_rounds,
        evals=[(valid, "held_out")],
        early_stopping_rounds=fit.early_stopping_rounds,
        verbose_eval=False,
    )
    log.info(
        "observable oracle: %d trees on %d reference episodes",
        booster.best_iteration + 1,
        int((~held).sum()),
    )
    return booster


def predict_observable_oracle(booster: xgb.Booster, summary: pd.DataFrame) -> np.ndarray:
    """E[y | observations] of each summarised episode."""
    matrix = xgb.DMatrix(summary, missing=np.nan)
    return booster.predict(matrix, iteration_range=(0, booster.best_iteration + 1))
