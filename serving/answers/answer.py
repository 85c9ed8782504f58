"""One answer per episode (DESIGN.md "One patient over HTTP"), from what the model computed."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from features.registry import GROUPS
from serving.answers.factors import top_factors
from serving.answers.warnings import Warning, episode_warnings
from serving.answers.words import FeatureWords
from serving.predict.survival import median_day
from serving.settings import ScoringOptions


class Answer(dict):
    """One episode's answer (a plain dict to JSON) that also carries the model's input row.

    `model_input` is `(feature_names, float32 row)`: exactly what the booster saw, for the audit
    log's monitoring table (`serving.http.audit`); it never appears in the JSON. A copy of the
    dict (`dict(answer)`, `{**answer}`) does not keep it.
    """

    __slots__ = ("model_input",)


@dataclass(frozen=True)
class Scores:
    """What the model computed for some episodes, row `i` for `episode_ids[i]`.

    `prediction` holds the arrays of `DeployableModel.predict_matrix`; `curves` P(response by
    day) or None; `contributions` TreeSHAP with the bias last, None without explanations;
    `notes` the feature pipeline's notes by episode id.
    """

    episode_ids: Sequence[str]
    X: np.ndarray
    prediction: Mapping[str, np.ndarray]
    curves: np.ndarray | None
    contributions: np.ndarray | None
    interval_level: float | None
    model: Mapping[str, str]
    notes: Mapping[str, list[str]] = field(default_factory=dict)


def write_answers(
    scores: Scores,
    words: FeatureWords,
    options: ScoringOptions,
    unknown_drugs: Mapping[str, list[Warning]],
) -> list[Answer]:
    """The answers of every episode of `scores`, in order; explained when `contributions` is
    given (without it the five explanation fields are None and `warnings` is empty)."""
    pred = scores.prediction
    # Python floats and strings once for all episodes (indexing numpy per value is slower).
    probability = pred["probability"].tolist()
    low, high = pred["interval_low"].tolist(), pred["interval_high"].tolist()
    band, margin = pred["band"].tolist(), pred["margin"].tolist()
    model = dict(scores.model)
    names = tuple(words.names)
    out = []
    for i, episode_id in enumerate(scores.episode_ids):
        answer = Answer(
            {
                "episode_id": episode_id,
                "probability": probability[i],
                "interval": [low[i], high[i]],
                "interval_level": scores.interval_level,
                "response_by_day": None,
                "median_days_to_response": None,
                "band": str(band[i]),
                "margin": margin[i],
                "base_value": None,
                "contributions": None,
                "group_contributions": None,
                "top_factors": None,
                "warnings": [],
                "model": model,
            }
        )
        answer.model_input = (names, scores.X[i])
        if scores.curves is not None:
            answer["response_by_day"] = scores.curves[i].tolist()
            answer["median_days_to_response"] = median_day(scores.curves[i])
        if scores.contributions is not None:
            _explain(answer, words, scores.X[i], scores.contributions[i], options)
            answer["warnings"] = episode_warnings(
                words,
                scores.X[i],
                options,
                notes=scores.notes.get(episode_id, ()),
                unknown_drugs=unknown_drugs.get(episode_id, ()),
            )
        out.append(answer)
    return out


def _explain(
    answer: Answer, words: FeatureWords, x: np.ndarray, row: np.ndarray, options: ScoringOptions
) -> None:
    """The explanation fields: base value, contributions by feature and group, top factors."""
    answer["base_value"] = float(row[-1])
    values = row[:-1].astype(np.float64)
    answer["contributions"] = dict(zip(words.names, values.tolist(), strict=True))
    groups = dict.fromkeys(GROUPS, 0.0)
    for group, value in zip(words.groups, values.tolist(), strict=True):
        groups[group] = groups.get(group, 0.0) + value
    answer["group_contributions"] = groups
    answer["top_factors"] = top_factors(words, x, values, options.top_factors)
