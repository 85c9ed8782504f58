"""Scoring from patient records or cohorts: the Python API behind the CLI and the HTTP service.

    scorer = Scorer.load("models:/ctit-response@champion")   # or runs:/..., or a directory
    scorer.score(record)            # one patient record with one episode -> one answer
    scorer.score_batch(records)     # several records -> one answer per episode, in order
    scorer.score_cohort(cohort)     # a loaded cohort (data.cohort.Cohort) -> one answer per episode

A record goes through `data.cohort.cohort_from_tables`, the loader of training cohorts, then the
fitted feature pipeline: the same code path for training, batch scoring and one HTTP request.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from data.cohort import cohort_from_tables
from data.issues import CohortError
from features.registry import feature_words, spec_of
from serving.answers.warnings import is_unknown_drug
from serving.bundle.model import DeployableModel, episodes_without_platelets
from serving.bundle.uri import load_deployable_model
from serving.request.records import RecordBatch, RecordError, validate_record
from serving.request.schemas import ScoreRequest
from serving.settings import ScoringOptions

log = logging.getLogger(__name__)

Progress = Callable[[int], None]


NOT_ESTIMABLE = (
    "no platelet count (PLT) on or before the index date: the response cannot be estimated "
    "without one; not scored"
)


class NotEstimable(ValueError):
    """Episodes of a cohort without a platelet count on or before their index date."""

    def __init__(self, episode_ids: list[str]) -> None:
        self.episode_ids = episode_ids
        shown = ", ".join(episode_ids[:20]) + (" ..." if len(episode_ids) > 20 else "")
        super().__init__(f"{len(episode_ids)} episode(s) {NOT_ESTIMABLE}: {shown}")


def not_estimable(records: RecordBatch, internal_ids: list[str], batch: bool) -> RecordError:
    """A `RecordError` (422) naming, per record, the episode that has no platelet count."""
    lacking = set(internal_ids)
    errors = []
    for ref in records.episodes:
        if ref.internal_id not in lacking:
            continue
        loc: list[str | int] = [ref.record_index] if batch else []
        errors.append(
            {
                "loc": [*loc, "labs"],
                "msg": f"episode with index date {ref.index_date.isoformat()}: {NOT_ESTIMABLE}",
                "type": "not_estimable",
            }
        )
    return RecordError(errors)


class Scorer:
    """Scores patient records with one loaded `DeployableModel`."""

    def __init__(
        self,
        model: DeployableModel,
        uri: str | None = None,
        options: ScoringOptions | None = None,
    ) -> None:
        self.model = model
        self.uri = uri
        self.options = options or ScoringOptions()

    @classmethod
    def load(cls, uri: str, options: ScoringOptions | None = None) -> Scorer:
        """Load and check the model at `uri`; raises `ModelLoadError` naming the URI.

        The objects alive after loading are then exempt from garbage collection (`settle_heap`).
        """
        model = load_deployable_model(uri)
        log.info("loaded model %s version %s", model.info["name"], model.info["version"])
        model.warm()
        scorer = cls(model, uri=uri, options=options)
        settle_heap()
        return scorer

    # -- records --------------------------------------------------------------------------------

    def score(self, record: dict[str, Any] | ScoreRequest, explain: bool = True) -> dict[str, Any]:
        """The answer for a record with exactly one episode.

        Raises:
            RecordError: the record breaks the contract; each error names its path in the record.
        """
        request = validate_record(record)
        if len(request.all_episodes()) != 1:
            raise RecordError(
                [
                    {
                        "loc": ["episodes"],
                        "msg": "score() takes a record with one episode; use score_batch()",
                        "type": "value_error",
                    }
                ]
            )
        answer = self._score_requests([request], explain, batch=False)[0]
        answer.pop("record_index", None)
        return answer

    def score_batch(
        self,
        records: Sequence[dict[str, Any] | ScoreRequest],
        explain: bool = True,
    ) -> list[dict[str, Any]]:
        """One answer per episode of every record, in order; each carries `record_index`.

        Every record is validated before any is scored; a `RecordError` lists all problems with
        paths starting with the record's position.
        """
        requests: list[ScoreRequest] = []
        errors: list[dict[str, Any]] = []
        for i, record in enumerate(records):
            try:
                requests.append(validate_record(record, prefix=(i,)))
            except RecordError as exc:
                errors.extend(exc.errors)
        if errors:
            raise RecordError(errors)
        if not requests:
            return []
        return self._score_requests(requests, explain, batch=True)

    def _score_requests(
        self, requests: Sequence[ScoreRequest], explain: bool, batch: bool
    ) -> list[dict[str, Any]]:
        records = RecordBatch.from_requests(requests)
        try:
            cohort = cohort_from_tables(records.tables)
        except CohortError as exc:
            raise records.errors_of(exc, batch=batch) from None
        if explain:
            # Unknown drugs go to the answers, by episode (`serving.answers.warnings`); the
            # loader's other warnings are filed under the record whose row they name.
            records.issue_warnings(w for w in cohort.warnings if not is_unknown_drug(w))
        prepared = self.model.prepare(cohort)
        lacking = episodes_without_platelets(self.model, prepared)
        if lacking:
            raise not_estimable(records, [prepared.episode_ids[k] for k in lacking], batch)
        answers = self.model.answers(prepared, cohort, explain, self.options)
        by_id = {answer["episode_id"]: answer for answer in answers}
        out = []
        for ref in records.episodes:
            answer = by_id[ref.internal_id]
            answer["episode_id"] = ref.episode_id
            answer["record_index"] = ref.record_index
            if explain:
                answer["warnings"] = records.warnings.get(ref.record_index, []) + answer["warnings"]
            out.append(answer)
        return out

    # -- cohorts --------------------------------------------------------------------------------

    def score_cohort(
        self,
        cohort: Any,
        explain: bool = True,
        chunk_size: int = 5000,
        progress: Progress | None = None,
    ) -> list[dict[str, Any]]:
        """One answer per episode of a loaded cohort, in the cohort's episode order.

        `progress(n)` is called after each chunk of `n` episodes.
        """
        out: list[dict[str, Any]] = []
        parts = _chunks(cohort, chunk_size)
        for part in parts:
            prepared = self.model.prepare(part)
            lacking = episodes_without_platelets(self.model, prepared)
            if lacking:
                raise NotEstimable([prepared.episode_ids[k] for k in lacking])
            out.extend(self.model.answers(prepared, part, explain, self.options))
            if progress is not None:
                progress(len(part.episodes))
        if len(parts) > 1:  # back to the cohort's episode order
            position = {e: i for i, e in enumerate(cohort.episodes["episode_id"].astype(str))}
            out.sort(key=lambda answer: position[str(answer["episode_id"])])
        return out

    def predict_cohort(self, cohort: Any, interval: bool = True) -> pd.DataFrame:
        """Probabilities, intervals and bands of every episode, without explanations (fast).

        `interval=False` skips the fold models (NaN intervals): about (1 + folds) times faster.
        """
        return self.model.predict_proba(cohort, interval=interval)

    # -- description ----------------------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        """What GET /v1/model answers: identity, metrics, features, bands, training summary.

        `calibration_curve` ({"margin": [...], "probability": [...]}) is the calibrator sampled
        on margins (log-odds) so that linear interpolation, clamped at the ends, stays within
        `CURVE_TOLERANCE` of `calibrator.transform_margin`: the clinician page maps its SHAP
        waterfall through it to end at the calibrated probability.
        """
        meta = self.model.metadata
        features = []
        for name, group in zip(self.model.feature_names, self.model.groups, strict=True):
            words = feature_words(name)  # the registry's wording, its fallback included
            try:
                direction = spec_of(name).direction
            except KeyError:
                direction = None
            features.append(
                {
                    "name": name,
                    "group": group,
                    "unit": words["unit"],
                    "description": words["description"],
                    "direction": direction,
                }
            )
        return {
            **self.model.info,
            "uri": self.uri,
            "trained_at": meta.get("trained_at"),
            "experiment": meta.get("experiment"),
            "metrics": meta.get("metrics", {}),
            "bands": self.model.bands.to_dict(),
            **self.model.describe_uncertainty(),
            "calibration": self.model.calibrator.method,
            "calibration_curve": calibration_curve(
                self.model.calibrator, extra=(self._base_value(),)
            ),
            "features": features,
            "training_cohort": self.model.reference.get("cohort_summary", {}),
        }

    def _base_value(self) -> float:
        """The SHAP bias (expected margin): the same for every row, so read off one empty row."""
        empty = np.full((1, len(self.model.feature_names)), np.nan, dtype=np.float32)
        return float(self.model.contributions(empty)[0, -1])


CURVE_TOLERANCE = 0.002
CURVE_RANGE = 12.0  # margins sampled every 0.1 in [-12, 12], more where the curve bends
CURVE_TAILS = (16.0, 24.0, 36.0, 48.0)  # beyond 48 the page clamps to the end values


def calibration_curve(
    calibrator: Any, extra: Sequence[float] = (), tolerance: float = CURVE_TOLERANCE
) -> dict[str, list[float]]:
    """The calibrator's margin -> probability map as knots for linear interpolation.

    Starts from every 0.1 on [-12, 12], the tails, the `extra` margins and (isotonic) the
    calibrator's own knots, then halves every interval whose interpolation misses
    `transform_margin` by more than a quarter of `tolerance` at 1/4, 1/2 or 3/4 of its width.
    Margins are rounded to 6 decimals, probabilities to 7 (both well inside the tolerance).
    """
    grid = [np.linspace(-CURVE_RANGE, CURVE_RANGE, 241), np.array(CURVE_TAILS)]
    grid.append(-grid[1])
    grid.append(np.asarray([m for m in extra if np.isfinite(m)], dtype=np.float64))
    knots = getattr(calibrator, "x_", None)
    if knots is not None:
        x = np.asarray(knots, dtype=np.float64)
        x = x[(x > 0) & (x < 1)]
        grid.append(np.log(x) - np.log1p(-x))
    margins = np.concatenate(grid)
    limit = max(CURVE_TAILS)
    margins = np.unique(np.round(np.clip(margins, -limit, limit), 6))
    for _ in range(20):
        left, right = margins[:-1], margins[1:]
        f_left, f_right = calibrator.transform_margin(left), calibrator.transform_margin(right)
        worst = np.zeros(len(left))
        for t in (0.25, 0.5, 0.75):
            inside = left + t * (right - left)
            linear = f_left + t * (f_right - f_left)
            worst = np.maximum(worst, np.abs(calibrator.transform_margin(inside) - linear))
        split = worst > tolerance / 4
        if not split.any():
            break
        middle = np.round((left[split] + right[split]) / 2, 6)
        margins = np.unique(np.concatenate([margins, middle]))
    probability = np.round(calibrator.transform_margin(margins), 7)
    return {"margin": margins.tolist(), "probability": probability.tolist()}


def _csv_uncertainty_columns(answer: dict[str, Any]) -> dict[str, Any]:
    """The interval's level, the median day and P(response by day d) as `response_by_day_d`."""
    columns: dict[str, Any] = {
        "interval_level": answer.get("interval_level"),
        "median_days_to_response": answer.get("median_days_to_response"),
    }
    for day, value in enumerate(answer.get("response_by_day") or [], start=1):
        columns[f"response_by_day_{day}"] = value
    return columns


def answers_frame(answers: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per episode, as `ctit score --out FILE.csv` writes it: scores, factors and
    warnings as text, contributions as `shap:FEATURE` columns (`record_index` only for records).
    """
    rows = []
    for answer in answers:
        row: dict[str, Any] = {
            "record_index": answer.get("record_index"),
            "episode_id": answer["episode_id"],
            "probability": answer["probability"],
            "interval_low": answer["interval"][0],
            "interval_high": answer["interval"][1],
            **_csv_uncertainty_columns(answer),
            "band": answer["band"],
            "margin": answer["margin"],
            "base_value": answer.get("base_value"),
            "top_factors": " | ".join(f["text"] for f in answer.get("top_factors") or []),
            "warnings": " | ".join(w["message"] for w in answer.get("warnings") or []),
            "model_name": answer["model"]["name"],
            "model_version": answer["model"]["version"],
            "label_definition": answer["model"]["label_definition"],
        }
        for name, value in (answer.get("contributions") or {}).items():
            row[f"shap:{name}"] = value
        rows.append(row)
    frame = pd.DataFrame(rows)
    if frame["record_index"].isna().all():
        frame = frame.drop(columns="record_index")
    return frame


def settle_heap() -> None:
    """Collect garbage once, then exempt every object alive now from later collections.

    Once the libraries and a model are loaded the heap holds about 230,000 long-lived objects,
    and every full collection walks them all: about 2 ms per scored patient on average and 10 ms
    at the 99th percentile (reference model of benchmarks/bench_serving.py). `gc.freeze()` moves
    them to the permanent generation; objects created later are collected as before. Servers call
    this after loading their model (`Scorer.load` does); calling it again freezes what was
    created since.
    """
    gc.collect()
    gc.freeze()


def _chunks(cohort: Any, size: int) -> list[Any]:
    """The cohort split into sub-cohorts of about `size` episodes, whole patients together (a
    patient's earlier episodes feed the prior-episode features of the later ones), each keeping
    the cohort's episode order. A patient with more than `size` episodes is one part."""
    episodes = cohort.episodes
    if len(episodes) <= size:
        return [cohort]
    codes, _ = pd.factorize(episodes["patient_id"])  # patients in order of first appearance
    order = np.argsort(codes, kind="stable")
    grouped = codes[order]
    starts = np.flatnonzero(np.r_[True, grouped[1:] != grouped[:-1]])  # each patient's first
    bounds = [0]
    while bounds[-1] < len(order):
        end = bounds[-1] + size
        if end >= len(order):
            bounds.append(len(order))
            continue
        cut = starts[np.searchsorted(starts, end, side="right") - 1]
        if cut <= bounds[-1]:  # one patient fills the part: take that patient whole
            later = starts[starts > bounds[-1]]
            cut = later[0] if len(later) else len(order)
        bounds.append(int(cut))
    parts = []
    for begin, end in zip(bounds[:-1], bounds[1:], strict=True):
        part_episodes = episodes.iloc[np.sort(order[begin:end])]
        patients = set(part_episodes["patient_id"])
        parts.append(
            dataclasses.replace(
                cohort,
                episodes=part_episodes,
                patients=_rows_of(cohort.patients, patients),
                labs=_rows_of(cohort.labs, patients),
                regimens=_rows_of(cohort.regimens, patients),
            )
        )
    return parts


def _rows_of(frame: pd.DataFrame | None, patients: set[str]) -> pd.DataFrame | None:
    if frame is None:
        return None
    return frame[frame["patient_id"].isin(patients)]
