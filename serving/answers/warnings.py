"""The warnings of an answer: what the model could not see, or saw outside its training.

Codes (docs/ARCHITECTURE.md "serving"): `missing_lab`, `missing_baseline`, `stale_lab`,
`missing_field`, `out_of_range`, `unseen_category` (from the feature pipeline's notes) and
`unknown_drug` (from the loader's warnings, `Cohort.warnings`: the loader finds unknown drugs
once; the answers only say which episode could have seen them).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from data.issues import Issue
from features.registry import LAB_ANALYTES, field_of, field_words
from serving.answers.words import FeatureWords, number
from serving.settings import ScoringOptions

#: A feature missing in fewer training episodes than this is warned when missing.
RARELY_MISSING = 0.05

Warning = dict[str, Any]


def episode_warnings(
    words: FeatureWords,
    x: np.ndarray,
    options: ScoringOptions,
    notes: Sequence[str] = (),
    unknown_drugs: Sequence[Warning] = (),
) -> list[Warning]:
    """Every warning of one episode's row `x`, in the order the answer lists them."""
    out = [{"code": "unseen_category", "message": note, "feature": None} for note in notes]
    out += key_lab_warnings(words, x, options)
    out += out_of_range_warnings(words, x)
    out += unknown_drugs
    out += missing_input_warnings(words, x, out)
    return out


def key_lab_warnings(words: FeatureWords, x: np.ndarray, options: ScoringOptions) -> list[Warning]:
    """`missing_lab` for a key lab never measured, `missing_baseline` for a platelet count older
    than the baseline window, `stale_lab` for another key lab older than `stale_lab_days`."""
    out: list[Warning] = []
    for alias in options.key_labs:
        if alias not in LAB_ANALYTES:
            continue
        prefix, name, _unit = LAB_ANALYTES[alias]
        last = words.column.get(f"{prefix}_last")
        age = words.column.get(f"{prefix}_days_since")
        if last is None:
            continue
        if math.isnan(float(x[last])):
            out.append(
                {
                    "code": "missing_lab",
                    "message": f"no {name} on or before the index date",
                    "feature": f"{prefix}_last",
                }
            )
            continue
        days = float(x[age]) if age is not None else math.nan
        if alias == "PLT" and days > options.baseline_window_days:
            out.append(
                {
                    "code": "missing_baseline",
                    "message": f"no platelet count in the {options.baseline_window_days} days "
                    f"up to the index date (the last is {number(days)} days old): the "
                    "response label needs a baseline",
                    "feature": "plt_days_since",
                }
            )
        elif days > options.stale_lab_days:
            out.append(
                {
                    "code": "stale_lab",
                    "message": f"the last {name} is {number(days)} days old "
                    f"(more than {options.stale_lab_days})",
                    "feature": f"{prefix}_days_since",
                }
            )
    return out


def out_of_range_warnings(words: FeatureWords, x: np.ndarray) -> list[Warning]:
    """`out_of_range` for each feature outside the training minimum..maximum."""
    with np.errstate(invalid="ignore"):
        outside = np.flatnonzero((x < words.low) | (x > words.high))
    return [
        {
            "code": "out_of_range",
            "message": words.out_of_range_words(int(j), float(x[j])),
            "feature": words.names[j],
        }
        for j in outside
    ]


def missing_input_warnings(
    words: FeatureWords, x: np.ndarray, already: Sequence[Mapping[str, Any]]
) -> list[Warning]:
    """`missing_lab` / `missing_field` warnings for features missing in this row that were
    missing in under `RARELY_MISSING` of the training episodes.

    One `missing_lab` per analyte without any value (unless the key-lab check already warned),
    then one per other lab feature missing while its analyte is present (a trend needs two
    values); one `missing_field` per clinical field, listing it by name, so a clinician sees which
    inputs the model had to treat as unknown.
    """
    warned = {w.get("feature") for w in already if w.get("code") == "missing_lab"}
    out, absent_analytes = _missing_analytes(words, x, warned)
    fields: dict[str, float] = {}
    for j, feature in enumerate(words.names):
        share = words.missing_share.get(feature)
        if not math.isnan(float(x[j])) or share is None or share >= RARELY_MISSING:
            continue
        group = words.groups[j]
        if group in ("labs", "platelet_history"):
            if feature.split("_", 1)[0] in absent_analytes or feature in warned:
                continue
            out.append(
                {
                    "code": "missing_lab",
                    "message": f"{words.labels[j][0]} could not be computed from the labs "
                    f"given; available in {_percent(1 - share)} of the training episodes",
                    "feature": feature,
                }
            )
        elif group == "clinical":
            field_name = field_of(feature)
            fields[field_name] = min(share, fields.get(field_name, 1.0))
    out += [
        {
            "code": "missing_field",
            "message": f"{field_words(field_name)} not given; recorded for "
            f"{_percent(1 - share)} of the training episodes (the model treats it as unknown)",
            "feature": field_name,
        }
        for field_name, share in fields.items()
    ]
    return out


def _missing_analytes(
    words: FeatureWords, x: np.ndarray, warned: set[Any]
) -> tuple[list[Warning], set[str]]:
    """The `missing_lab` warnings of analytes without any value, and those analytes' prefixes."""
    out: list[Warning] = []
    absent: set[str] = set()
    for alias, (prefix, name, _unit) in LAB_ANALYTES.items():
        j = words.column.get(f"{prefix}_last")
        if j is None or not math.isnan(float(x[j])):
            continue
        absent.add(prefix)
        share = words.missing_share.get(f"{prefix}_last")
        if share is None or share >= RARELY_MISSING or f"{prefix}_last" in warned:
            continue
        out.append(
            {
                "code": "missing_lab",
                "message": f"no {name} ({alias}) on or before the index date; measured in "
                f"{_percent(1 - share)} of the training episodes",
                "feature": f"{prefix}_last",
            }
        )
    return out, absent


def _percent(share: float) -> str:
    value = 100 * share
    return f"{value:.0f}%" if value < 99.5 or value == 100 else ">99%"


def is_unknown_drug(issue: Issue) -> bool:
    """Whether a loader warning is about an unknown drug (the answers file these by episode)."""
    return issue.code == "unknown_drug"


def unknown_drug_warnings(cohort: Any) -> dict[str, list[Warning]]:
    """`unknown_drug` warnings by episode id, from the loader's warnings (`cohort.warnings`).

    The loader reports each unknown drug once for the whole cohort; an episode is warned about
    the drugs of its own patient's regimens started on or before its index date (only what the
    features could have seen: an unknown drug's class is not counted).
    """
    unknown = {issue.value for issue in cohort.warnings if is_unknown_drug(issue) and issue.value}
    if not unknown:
        return {}
    regimens = cohort.regimens
    if regimens is None or len(regimens) == 0:
        return {}
    given: dict[str, list[tuple[Any, str]]] = {}
    for patient_id, start, drugs in zip(
        regimens["patient_id"], regimens["start_date"], regimens["drugs"], strict=True
    ):
        if isinstance(drugs, str):
            for drug in _names_in(drugs, unknown):
                given.setdefault(str(patient_id), []).append((start, drug))
    if not given:
        return {}
    out: dict[str, list[Warning]] = {}
    episodes = cohort.episodes
    for episode_id, patient_id, index_date in zip(
        episodes["episode_id"], episodes["patient_id"], episodes["index_date"], strict=True
    ):
        seen = {drug for start, drug in given.get(str(patient_id), ()) if start <= index_date}
        for drug in sorted(seen):
            out.setdefault(str(episode_id), []).append(
                {
                    "code": "unknown_drug",
                    "message": f"unknown drug {drug!r}: no drug class, so its exposure is "
                    "not counted",
                    "feature": None,
                }
            )
    return out


def _names_in(drugs: str, names: Iterable[str | None]) -> list[str]:
    """The given `names` among a regimen's normalised drugs (`a;b;c`, as the loader stores them)."""
    parts = set(drugs.split(";"))
    return [name for name in names if name in parts]
