"""The outcome of the patient's previous episode, as far as it is known at this index date.

A patient treated again with hetrombopag is likely to respond as before. The previous episode's
platelet course is observable in the labs: its baseline (the last PLT in the 3 days up to its
index date), the highest PLT in days 1-14 after it, and the rise between them. Only PLT values
up to this episode's cut-off count (the leakage guard of `features.timeline`: a date-only index
includes the whole index day), so an earlier episode whose follow-up is still running gives what
was seen so far, and nothing of the current episode's future enters.

The features are label-agnostic (no response definition is applied): the booster learns what a
prior rise means. A scoring record that carries only the current episode gives NaN (missing),
as for a first episode.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from data.table import Table, as_table
from features.timeline import NS_PER_DAY, column_values

PRIOR_FEATURES = ("prior_plt_max_d14", "prior_plt_rise_d14", "days_since_prior_episode")
BASELINE_DAYS = 3
HORIZON_DAYS = 14


def prior_episode_features(
    episode_ids: np.ndarray,
    patient_ids: np.ndarray,
    index_ns: np.ndarray,
    labs: Table | pd.DataFrame | None,
) -> dict[str, np.ndarray]:
    """The three prior-episode features for each episode (NaN without a previous episode)."""
    n = len(episode_ids)
    out = {name: np.full(n, np.nan) for name in PRIOR_FEATURES}
    if n == 0:
        return out
    frame = pd.DataFrame(
        {"row": np.arange(n), "patient_id": patient_ids.astype(str), "index_ns": index_ns}
    ).sort_values(["patient_id", "index_ns", "row"], kind="stable")
    frame["prior_ns"] = frame.groupby("patient_id")["index_ns"].shift(1)
    frame = frame[frame["prior_ns"].notna() & (frame["prior_ns"] < frame["index_ns"])].copy()
    if frame.empty:
        return out
    frame["prior_ns"] = frame["prior_ns"].astype(np.int64)
    rows = frame["row"].to_numpy()
    out["days_since_prior_episode"][rows] = (
        frame["index_ns"].to_numpy() - frame["prior_ns"].to_numpy()
    ) / NS_PER_DAY
    labs = as_table(labs, "labs")
    if labs is None or len(labs) == 0 or "test" not in labs.names:
        return out
    is_plt = column_values(labs, "test", object) == "PLT"
    if not is_plt.any():
        return out
    plt = pd.DataFrame(
        {
            "patient_id": column_values(labs, "patient_id", object)[is_plt].astype(str),
            "time_ns": _nanoseconds(labs.series("time")[is_plt]),
            "value": column_values(labs, "value", float)[is_plt],
        }
    )
    # The current episode's cut-off, as features.timeline defines it.
    is_date = frame["index_ns"].to_numpy() % NS_PER_DAY == 0
    frame["cutoff_ns"] = np.where(is_date, frame["index_ns"] + (NS_PER_DAY - 1), frame["index_ns"])
    prior_day = frame["prior_ns"] // NS_PER_DAY * NS_PER_DAY
    frame["base_from"] = prior_day - BASELINE_DAYS * NS_PER_DAY
    frame["base_to"] = prior_day + (NS_PER_DAY - 1)
    frame["follow_from"] = prior_day + NS_PER_DAY
    frame["follow_to"] = np.minimum(
        prior_day + (HORIZON_DAYS + 1) * NS_PER_DAY - 1, frame["cutoff_ns"]
    )
    merged = frame.merge(plt, on="patient_id", how="inner")
    merged = merged[merged["time_ns"] <= merged["cutoff_ns"]]
    t = merged["time_ns"]
    base = merged[(t >= merged["base_from"]) & (t <= merged["base_to"])]
    baseline = base.sort_values("time_ns", kind="stable").groupby("row")["value"].last()
    follow = merged[
        (merged["time_ns"] >= merged["follow_from"]) & (merged["time_ns"] <= merged["follow_to"])
    ]
    peak = follow.groupby("row")["value"].max()
    out["prior_plt_max_d14"][peak.index.to_numpy()] = peak.to_numpy()
    rise = (peak - baseline).dropna()
    out["prior_plt_rise_d14"][rise.index.to_numpy()] = rise.to_numpy()
    return out


def _nanoseconds(times: pd.Series) -> np.ndarray:
    return pd.to_datetime(times).to_numpy().astype("datetime64[ns]").astype(np.int64)
