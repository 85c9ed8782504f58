"""Response labels from PLT after the index date (DESIGN.md "Response labels").

Baseline PLT is the last PLT in the 3 calendar days up to and including the index date (from
midnight of index_date - 3, at or before the index time; a date-only index covers the whole index
day). Response is judged on PLT measured on calendar days 1..horizon after the index date, so a
PLT on the index date is baseline, never response. Given outcomes win over derived labels.

Rescue and follow-up (as TPO-RA trials require response "without rescue"): a PLT within
`rescue_window_days` after a platelet transfusion never counts toward response; an episode that has
not responded and has no PLT on or after day `horizon - 4` is not evaluable (excluded, with the day
its follow-up ended); with `confirm_days`, a response counts only if the criterion still holds at
the next PLT at least that many days later (an unconfirmable response is not evaluable).

Everything is vectorised over episodes: per-patient PLT series are searched with one
`np.searchsorted` on a (patient, time) key and the follow-up windows expanded with `np.repeat`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from collections.abc import Mapping

    from data.cohort import Cohort

LABEL_COLUMNS: tuple[str, ...] = (
    "episode_id",
    "label",
    "baseline_plt",
    "days_to_response",
    "exclusion",
)
BASELINE_DAYS = 3
NO_BASELINE = "no baseline PLT in the 3 days up to the index date"
NO_OUTCOME = "no given outcome"
_DAY_NS = 86_400 * 10**9
# Times are compared at one-second resolution on a single int64 key (patient rank, seconds).
_PATIENT_STRIDE = 2**34  # seconds; > 500 years of follow-up per patient key


def no_followup_reason(horizon_days: int) -> str:
    """Exclusion reason for an episode without PLT on days 1..horizon."""
    return f"no PLT on days 1-{horizon_days} after the index date"


def follow_up_ended_reason(day: int) -> str:
    """Exclusion reason for an episode without response whose last PLT came before horizon - 4."""
    return f"not evaluable: follow-up ended day {day}"


def unconfirmed_reason(confirm_days: int) -> str:
    """Exclusion reason for a response with no later PLT to confirm it."""
    return f"not evaluable: response not confirmed (no PLT {confirm_days} or more days later)"


@dataclass(frozen=True)
class LabelDefinition:
    """A response criterion: PLT >= threshold, or PLT - baseline >= rise, on a day 1..horizon.

    `threshold` or `rise` may be None (criterion not used); `given_only` labels come from the
    outcomes table only. `rescue_window_days`: a PLT within this many days after a platelet
    transfusion never counts; `confirm_days` (None: off): the criterion must still hold at the
    next PLT at least this many days after the responding one.
    """

    name: str
    threshold: float | None
    rise: float | None
    horizon_days: int = 14
    given_only: bool = False
    rescue_window_days: int = 3
    confirm_days: int | None = None

    def __post_init__(self) -> None:
        if self.given_only:
            return
        if self.threshold is None and self.rise is None:
            raise ValueError(f"label definition {self.name!r} needs a threshold or a rise")
        if self.threshold is not None and not self.threshold > 0:
            raise ValueError(f"label definition {self.name!r}: threshold must be > 0")
        if self.rise is not None and not self.rise > 0:
            raise ValueError(f"label definition {self.name!r}: rise must be > 0")
        if not (isinstance(self.horizon_days, int) and 1 <= self.horizon_days <= 365):
            raise ValueError(f"label definition {self.name!r}: horizon must be 1-365 days")
        if not (isinstance(self.rescue_window_days, int) and 0 <= self.rescue_window_days <= 60):
            raise ValueError(f"label definition {self.name!r}: rescue window must be 0-60 days")
        if self.confirm_days is not None and not (
            isinstance(self.confirm_days, int) and 1 <= self.confirm_days <= 365
        ):
            raise ValueError(f"label definition {self.name!r}: confirm_days must be 1-365")

    def describe(self) -> str:
        """Plain-words criterion, e.g. for reports."""
        if self.given_only:
            return "response as given in the outcomes table"
        parts = []
        if self.threshold is not None:
            parts.append(f"PLT >= {self.threshold:g}")
        if self.rise is not None:
            parts.append(f"PLT - baseline >= {self.rise:g}")
        text = f"{' or '.join(parts)} x10^9/L on any day 1-{self.horizon_days} after the index date"
        if self.rescue_window_days:
            text += f", not within {self.rescue_window_days} days after a platelet transfusion"
        if self.confirm_days is not None:
            text += f", still met at the next PLT {self.confirm_days} or more days later"
        return text


DEFAULT_DEFINITION = "plt100_or_rise50_d14"
NAMED_DEFINITIONS: Mapping[str, LabelDefinition] = MappingProxyType(
    {
        "plt100_or_rise50_d14": LabelDefinition("plt100_or_rise50_d14", 100.0, 50.0, 14),
        "plt75_d14": LabelDefinition("plt75_d14", 75.0, None, 14),
        "plt100_d14": LabelDefinition("plt100_d14", 100.0, None, 14),
        "given": LabelDefinition("given", None, None, 14, given_only=True),
    }
)
_CUSTOM = re.compile(r"^custom:(.*)$")
_CUSTOM_KEYS = ("threshold", "rise", "horizon", "confirm_days", "rescue_window_days")


def custom_definition(
    threshold: float | None,
    rise: float | None,
    horizon_days: int = 14,
    confirm_days: int | None = None,
    rescue_window_days: int = 3,
) -> LabelDefinition:
    """A custom definition named so that `get_definition(definition.name)` gives it back."""
    parts = [
        f"threshold={_fmt(threshold)}",
        f"rise={_fmt(rise)}",
        f"horizon={horizon_days}",
    ]
    if confirm_days is not None:
        parts.append(f"confirm_days={confirm_days}")
    if rescue_window_days != 3:
        parts.append(f"rescue_window_days={rescue_window_days}")
    return LabelDefinition(
        "custom:" + ",".join(parts),
        threshold,
        rise,
        horizon_days,
        rescue_window_days=rescue_window_days,
        confirm_days=confirm_days,
    )


def _fmt(value: float | None) -> str:
    return "none" if value is None else f"{value:g}"


def get_definition(name: str) -> LabelDefinition:
    """A named definition, `given`, or `custom:threshold=100,rise=50,horizon=14`.

    In a custom name each key is optional (threshold and rise default to none, horizon to 14,
    confirm_days to none, rescue_window_days to 3) but at least one of threshold or rise is
    needed; `none` switches a criterion off.

    Raises:
        ValueError: unknown name or malformed custom definition (the message says which).
    """
    text = name.strip()
    if text in NAMED_DEFINITIONS:
        return NAMED_DEFINITIONS[text]
    match = _CUSTOM.match(text)
    if not match:
        raise ValueError(
            f"unknown label definition {name!r}; use one of {', '.join(NAMED_DEFINITIONS)} "
            "or custom:threshold=T,rise=R,horizon=D[,confirm_days=N][,rescue_window_days=W]"
        )
    values: dict[str, str] = {}
    for item in filter(None, (p.strip() for p in match.group(1).split(","))):
        key, sep, value = item.partition("=")
        key = key.strip().lower()
        if not sep or key not in _CUSTOM_KEYS:
            raise ValueError(
                f"bad item {item!r} in label definition {name!r}; "
                f"expected key=value with keys {', '.join(_CUSTOM_KEYS)}"
            )
        if key in values:
            raise ValueError(f"{key!r} given twice in label definition {name!r}")
        values[key] = value.strip().lower()
    try:
        threshold = _parse_optional(values.get("threshold", "none"))
        rise = _parse_optional(values.get("rise", "none"))
        horizon = int(values.get("horizon", "14"))
        confirm_text = values.get("confirm_days", "none")
        confirm = None if confirm_text in ("", "none") else int(confirm_text)
        rescue = int(values.get("rescue_window_days", "3"))
    except ValueError as exc:
        raise ValueError(f"bad number in label definition {name!r}: {exc}") from None
    return custom_definition(threshold, rise, horizon, confirm, rescue)


def _parse_optional(text: str) -> float | None:
    if text in ("", "none"):
        return None
    value = float(text)
    if not np.isfinite(value):
        raise ValueError(f"{text!r} is not a finite number")
    return value


def derive_labels(cohort: Cohort, definition: LabelDefinition | str) -> pd.DataFrame:
    """One row per episode: episode_id, label (Int64; <NA> when excluded), baseline_plt
    (x10^9/L), days_to_response (first day 1..horizon the criterion holds), exclusion (reason
    or empty). Given outcomes win over derived labels.

    Raises:
        ValueError: `given` definition without an outcomes table.
    """
    if isinstance(definition, str):
        definition = get_definition(definition)
    episodes = cohort.episodes
    n = len(episodes)
    baseline, first_day, has_followup, last_day, unconfirmed = _derive(cohort, definition)

    label = np.full(n, -1, dtype=np.int64)  # -1: no label
    exclusion = np.full(n, "", dtype=object)
    has_baseline = ~np.isnan(baseline)
    days = first_day.astype(float)
    days[first_day < 0] = np.nan
    if definition.given_only:
        if cohort.outcomes is None:
            raise ValueError("label definition 'given' needs an outcomes table")
        days[:] = np.nan
        exclusion[:] = NO_OUTCOME
    else:
        derived = has_baseline & has_followup
        label[derived] = (first_day[derived] >= 0).astype(np.int64)
        days[~derived] = np.nan
        exclusion[~has_baseline] = NO_BASELINE
        exclusion[has_baseline & ~has_followup] = no_followup_reason(definition.horizon_days)
        no_response = derived & (first_day < 0)
        pending = no_response & unconfirmed
        if pending.any():
            exclusion[pending] = unconfirmed_reason(int(definition.confirm_days or 0))
        ended = no_response & ~pending & (last_day < definition.horizon_days - 4)
        for day in np.unique(last_day[ended]):
            exclusion[ended & (last_day == day)] = follow_up_ended_reason(int(day))
        label[pending | ended] = -1

    if cohort.outcomes is not None and len(cohort.outcomes):
        given = (
            cohort.outcomes.drop_duplicates("episode_id")
            .set_index("episode_id")["response"]
            .reindex(episodes["episode_id"].to_numpy())
        )
        has_given = given.notna().to_numpy()
        given_values = given.to_numpy(dtype=float, na_value=np.nan)
        label[has_given] = given_values[has_given].astype(np.int64)
        exclusion[has_given] = ""
        # A time to response contradicting a given non-response is not reported.
        days[has_given & (given_values == 0)] = np.nan

    out = pd.DataFrame(
        {
            "episode_id": episodes["episode_id"].to_numpy(),
            "label": pd.arrays.IntegerArray(np.where(label >= 0, label, 0), label < 0),
            "baseline_plt": baseline,
            "days_to_response": days,
            "exclusion": exclusion,
        }
    )
    out.attrs["definition"] = definition.name
    return out


def _derive(
    cohort: Cohort, definition: LabelDefinition
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per episode: baseline PLT or NaN; first (confirmed, rescue-free) response day or -1; any
    PLT on days 1..horizon; the day of the last PLT in 1..horizon (-1 if none); whether a
    responding count could not be confirmed for lack of a later PLT."""
    episodes = cohort.episodes
    n = len(episodes)
    labs = cohort.labs
    plt = labs.loc[labs["test"].to_numpy() == "PLT", ["patient_id", "time", "value"]]
    plt = plt[plt["value"].notna() & plt["time"].notna()]
    baseline = np.full(n, np.nan)
    first_day = np.full(n, -1, dtype=np.int64)
    has_followup = np.zeros(n, dtype=bool)
    last_day = np.full(n, -1, dtype=np.int64)
    unconfirmed = np.zeros(n, dtype=bool)
    if n == 0 or plt.empty:
        return baseline, first_day, has_followup, last_day, unconfirmed

    # One code per patient shared by labs and episodes; episodes of patients without PLT get -1.
    lab_codes, uniques = pd.factorize(plt["patient_id"])
    ep_codes = pd.Index(uniques).get_indexer(episodes["patient_id"].to_numpy())
    lab_sec = plt["time"].to_numpy().astype("datetime64[s]").astype(np.int64)
    lab_day = np.floor_divide(lab_sec, 86_400)
    origin = int(lab_sec.min()) - 400 * 86_400 if len(lab_sec) else 0
    lab_key = lab_codes.astype(np.int64) * _PATIENT_STRIDE + (lab_sec - origin)
    order = np.argsort(lab_key, kind="stable")
    lab_key = lab_key[order]
    lab_day = lab_day[order]
    lab_value = plt["value"].to_numpy(dtype=float)[order]
    rescued = _after_transfusion(cohort, uniques, lab_key, origin, definition.rescue_window_days)

    index = episodes["index_date"].to_numpy().astype("datetime64[s]").astype(np.int64)
    index_day = np.floor_divide(index, 86_400)
    date_only = index == index_day * 86_400
    # A date-only index date covers the whole day: labs that day are baseline.
    cutoff = np.where(date_only, index_day * 86_400 + 86_399, index)
    valid = ep_codes >= 0
    base_key = ep_codes.astype(np.int64) * _PATIENT_STRIDE

    def key(seconds: np.ndarray) -> np.ndarray:
        # Clipping keeps every search inside the episode's own patient block.
        return base_key + np.clip(seconds - origin, 0, _PATIENT_STRIDE - 1)

    last = np.searchsorted(lab_key, key(cutoff), side="right") - 1
    last_ok = valid & (last >= 0)
    last_c = np.clip(last, 0, None)
    same_patient = lab_key[last_c] // _PATIENT_STRIDE == ep_codes
    in_window = lab_day[last_c] >= index_day - BASELINE_DAYS
    has_base = last_ok & same_patient & in_window
    baseline[has_base] = lab_value[last_c[has_base]]

    lo = np.searchsorted(lab_key, key((index_day + 1) * 86_400), side="left")
    hi = np.searchsorted(
        lab_key, key((index_day + definition.horizon_days + 1) * 86_400), side="left"
    )
    counts = np.where(valid, hi - lo, 0)
    has_followup[:] = counts > 0
    last_day[has_followup] = lab_day[hi[has_followup] - 1] - index_day[has_followup]
    total = int(counts.sum())
    if total == 0:
        return baseline, first_day, has_followup, last_day, unconfirmed
    episode_of_row = np.repeat(np.arange(n), counts)
    starts = np.cumsum(counts) - counts
    rows = np.repeat(lo, counts) + (np.arange(total) - np.repeat(starts, counts))

    def meets(lab_rows: np.ndarray, episode: np.ndarray) -> np.ndarray:
        values = lab_value[lab_rows]
        hit = np.zeros(lab_rows.shape[0], dtype=bool)
        if definition.threshold is not None:
            hit |= values >= definition.threshold
        if definition.rise is not None:
            with np.errstate(invalid="ignore"):
                hit |= values - baseline[episode] >= definition.rise
        return hit & ~rescued[lab_rows]

    hit = meets(rows, episode_of_row)
    if definition.confirm_days is not None and hit.any():
        cand = np.flatnonzero(hit)
        ep_c = episode_of_row[cand]
        later_day = lab_day[rows[cand]] + definition.confirm_days
        nxt = np.searchsorted(lab_key, base_key[ep_c] + (later_day * 86_400 - origin), "left")
        nxt_c = np.minimum(nxt, lab_key.shape[0] - 1)
        # the confirming count belongs to this episode: no later than horizon + confirm_days
        limit = index_day[ep_c] + definition.horizon_days + definition.confirm_days
        exists = (
            (nxt < lab_key.shape[0])
            & (lab_key[nxt_c] // _PATIENT_STRIDE == ep_codes[ep_c])
            & (lab_day[nxt_c] <= limit)
        )
        held = exists & meets(nxt_c, ep_c)
        hit[cand] = held
        unconfirmed[ep_c[~exists]] = True
    hit_episodes, first_hit = np.unique(episode_of_row[hit], return_index=True)
    first_day[hit_episodes] = (
        lab_day[rows[np.flatnonzero(hit)[first_hit]]] - index_day[hit_episodes]
    )
    unconfirmed[hit_episodes] = False
    return baseline, first_day, has_followup, last_day, unconfirmed


def _after_transfusion(
    cohort: Cohort, patients: pd.Index, lab_key: np.ndarray, origin: int, window_days: int
) -> np.ndarray:
    """Per sorted PLT row: drawn within `window_days` after a platelet transfusion (strictly
    after it: a count drawn with the transfusion is the count that prompted it)."""
    rescued = np.zeros(lab_key.shape[0], dtype=bool)
    tx = getattr(cohort, "transfusions", None)
    if tx is None or not len(tx) or window_days <= 0:
        return rescued
    tx = tx[(tx["product"].to_numpy() == "platelets") & tx["time"].notna().to_numpy()]
    codes = pd.Index(patients).get_indexer(tx["patient_id"].to_numpy())
    keep = codes >= 0
    if not keep.any():
        return rescued
    tx_sec = tx["time"].to_numpy().astype("datetime64[s]").astype(np.int64)[keep]
    tx_key = np.sort(
        codes[keep].astype(np.int64) * _PATIENT_STRIDE + np.clip(tx_sec - origin, 0, None)
    )
    prev = np.searchsorted(tx_key, lab_key, side="left") - 1
    prev_c = np.clip(prev, 0, None)
    same = (prev >= 0) & (tx_key[prev_c] // _PATIENT_STRIDE == lab_key // _PATIENT_STRIDE)
    rescued[:] = same & (lab_key - tx_key[prev_c] <= window_days * 86_400)
    return rescued


def attrition(labels: pd.DataFrame) -> dict[str, object]:
    """Counts from episodes in to labelled episodes: {episodes_in, excluded_by_reason,
    labelled, responders, response_rate (None when nothing is labelled)}."""
    excluded = labels.loc[labels["label"].isna(), "exclusion"].value_counts()
    labelled = int(labels["label"].notna().sum())
    responders = int((labels["label"] == 1).sum())
    return {
        "episodes_in": len(labels),
        "excluded_by_reason": {str(k): int(v) for k, v in excluded.items()},
        "labelled": labelled,
        "responders": responders,
        "response_rate": responders / labelled if labelled else None,
    }
