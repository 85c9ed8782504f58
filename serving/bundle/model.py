"""The deployable model: fitted feature pipeline, booster, calibrator and training reference as one.

Training builds a `DeployableModel` from its fitted parts; serving loads it and scores raw cohort
records with it. Everything a score needs travels in this object, so serving never re-implements a
feature. Explanations are the booster's own TreeSHAP (`pred_contribs`) in log-odds: with the bias
column (`base_value`) they add up to the booster's margin. The probability interval, with its stated
level, comes from bootstrap refits of the deployed procedure (`serving.predict.interval`); the
chance of response by each day from an interval-censored AFT model reconciled with the probability
(`serving.predict.survival`). A model saved without bootstrap refits falls back to the 10th-90th
percentile of the fold models' calibrated probabilities (no stated level: `interval_level` is None).
The answers in words are `serving.answers`'; the saved form is `serving.bundle.store`'s.
"""

from __future__ import annotations

import io
import json
import logging
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xgboost as xgb

from serving.answers.answer import Answer, Scores, write_answers
from serving.answers.bands import RiskBands
from serving.answers.warnings import unknown_drug_warnings
from serving.answers.words import FeatureWords
from serving.bundle.calibrator import Calibrator
from serving.bundle.reference import reference_features
from serving.bundle.store import ModelLoadError, dumps, read_bundle, write_bundle
from serving.predict.forest import FOREST_MAX_ROWS, _Forest, percentiles
from serving.predict.interval import BootstrapInterval, SupportEnvelope
from serving.predict.survival import TimeToResponse
from serving.predict.treeshap import ShapTable
from serving.settings import ScoringOptions

log = logging.getLogger(__name__)

INTERVAL_PERCENTILES = (10.0, 90.0)
REQUIRED_METADATA = ("name", "version", "label_definition")


@dataclass
class Prepared:
    """Model features of some episodes as one float32 matrix."""

    episode_ids: list[str]
    X: np.ndarray
    notes: dict[str, list[str]] = field(default_factory=dict)


@dataclass
class DeployableModel:
    """Everything a score needs: pipeline, booster, calibrator, fold models, bands and reference."""

    pipeline: Any
    booster: xgb.Booster
    calibrator: Calibrator
    fold_boosters: list[xgb.Booster] = field(default_factory=list)
    bands: RiskBands = field(default_factory=RiskBands)
    reference: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    interval_model: BootstrapInterval | None = None
    time_model: TimeToResponse | None = None

    def __post_init__(self) -> None:
        missing = [key for key in REQUIRED_METADATA if key not in self.metadata]
        if missing:
            raise ValueError(f"DeployableModel metadata lacks {', '.join(missing)}")
        self.feature_names: list[str] = [str(n) for n in self.pipeline.feature_names_]
        self._check_boosters()
        self.groups: list[str] = [str(self.pipeline.group_of(n)) for n in self.feature_names]
        self._column = {name: j for j, name in enumerate(self.feature_names)}
        #: The features in the registry's words, with their training range (for the answers).
        self.words = FeatureWords(self.feature_names, self.groups, self.reference)
        # A single patient: every booster in one numpy pass instead of one xgboost call each.
        # The interval needs the bootstrap refits (or, without them, the fold models).
        self._interval_boosters = (
            self.interval_model.boosters if self.interval_model is not None else self.fold_boosters
        )
        self._forest = _Forest.build([self.booster, *self._interval_boosters])
        self._aft_forest = (
            None if self.time_model is None else _Forest.build([self.time_model.booster], aft=True)
        )
        self._support = SupportEnvelope(
            self.feature_names, reference_features(self.reference), self.words.binary
        )
        self._shap: ShapTable | None = None
        self._shap_built = False

    def _check_boosters(self) -> None:
        """Every booster reads the pipeline's features; each is set to one thread."""
        extra = [] if self.interval_model is None else self.interval_model.boosters
        if self.time_model is not None:
            extra = [*extra, self.time_model.booster]
        for booster in (self.booster, *self.fold_boosters, *extra):
            if booster.num_features() != len(self.feature_names):
                raise ValueError(
                    f"a booster expects {booster.num_features()} features but the pipeline "
                    f"gives {len(self.feature_names)}"
                )
            names = booster.feature_names
            if names is not None and list(names) != self.feature_names:
                raise ValueError("booster feature names differ from the pipeline's feature_names_")
            # One thread per call: a second core only spins for single rows (PERFORMANCE.md).
            booster.set_param({"nthread": 1})

    # -- identity -------------------------------------------------------------------------------

    @property
    def info(self) -> dict[str, str]:
        """`name`, `version` and `label_definition`, as every answer carries them."""
        return {key: str(self.metadata[key]) for key in REQUIRED_METADATA}

    # -- features -------------------------------------------------------------------------------

    def prepare(self, cohort: Any) -> Prepared:
        """The model features of every episode of the cohort, in the cohort's episode order."""
        matrix = self.pipeline.transform_matrix(cohort)  # columns: self.feature_names
        messages = matrix.warnings
        episode_ids = [str(e) for e in matrix.episode_ids.tolist()]
        X = np.ascontiguousarray(matrix.X, dtype=np.float32)
        notes: dict[str, list[str]] = {}
        if messages:
            known = set(episode_ids)
            for message in messages:  # FeatureWarning: the episode it is about, and its text
                episode_id = getattr(message, "episode_id", None)
                if episode_id in known:
                    notes.setdefault(episode_id, []).append(message.text)
        return Prepared(episode_ids, X, notes)

    # -- predictions ----------------------------------------------------------------------------

    def predict_matrix(self, X: np.ndarray, interval: bool = True) -> dict[str, np.ndarray]:
        """Margin, calibrated probability, interval and band of each row of a float32 matrix.

        The interval costs one prediction per fold model; without it (`interval=False`) the
        interval columns are NaN.
        """
        X = np.ascontiguousarray(X, dtype=np.float32)
        if X.shape[0] == 0:
            empty = np.empty(0)
            return {
                "margin": empty,
                "probability": empty,
                "interval_low": empty,
                "interval_high": empty,
                "band": np.empty(0, dtype=object),
            }
        small = self._forest is not None and X.shape[0] <= FOREST_MAX_ROWS
        margins = self._forest.margins(X) if small else None
        if margins is not None:
            margin = margins[0].astype(np.float64)
        else:
            margin = self.booster.inplace_predict(X, predict_type="margin").astype(np.float64)
        probability = self.calibrator.transform_margin(margin)
        if not interval:
            low = high = np.full_like(probability, np.nan)
        elif self.interval_model is not None:
            boot = margins[1:] if margins is not None else self.interval_model.margins(X)
            low, high = self.interval_model.bounds(probability, boot)
            rows, alternatives = self._support.alternatives(X)
            if rows.size:
                low, high = SupportEnvelope.widen(low, high, rows, *self._bootstrap(alternatives))
        elif len(self.fold_boosters) >= 2:
            if margins is not None:
                fold_margins = margins[1:]
            else:
                fold_margins = np.vstack(
                    [b.inplace_predict(X, predict_type="margin") for b in self.fold_boosters]
                )
            folds = self.calibrator.transform_margin(fold_margins)
            low, high = percentiles(folds, INTERVAL_PERCENTILES)
            low = np.minimum(low, probability)
            high = np.maximum(high, probability)
        else:
            low = high = probability
        return {
            "margin": margin,
            "probability": probability,
            "interval_low": low,
            "interval_high": high,
            "band": self.bands.bands(probability),
        }

    def _bootstrap(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The bootstrap interval alone (no support envelope) of each row."""
        assert self.interval_model is not None
        if self._forest is not None and X.shape[0] <= 4 * FOREST_MAX_ROWS:
            chunks = range(0, X.shape[0], FOREST_MAX_ROWS)
            margins = np.hstack([self._forest.margins(X[k : k + FOREST_MAX_ROWS]) for k in chunks])
            margin, boot = margins[0].astype(np.float64), margins[1:]
        else:
            margin = self.booster.inplace_predict(X, predict_type="margin").astype(np.float64)
            boot = self.interval_model.margins(X)
        return self.interval_model.bounds(self.calibrator.transform_margin(margin), boot)

    @property
    def interval_level(self) -> float | None:
        """The interval's nominal coverage (None: a fold-percentile interval, no stated level)."""
        return None if self.interval_model is None else self.interval_model.level

    def response_curves(self, X: np.ndarray, probability: np.ndarray) -> np.ndarray | None:
        """P(response by day d), d = 1..horizon, per row (None without a time model)."""
        if self.time_model is None or X.shape[0] == 0:
            return None
        if self._aft_forest is not None and X.shape[0] <= FOREST_MAX_ROWS:
            mu = self._aft_forest.margins(X)[0].astype(np.float64)
        else:
            mu = self.time_model.location(X)
        return self.time_model.curves(probability, mu)

    def describe_uncertainty(self) -> dict[str, Any]:
        """What /v1/model says about `interval` and `response_by_day` (meaning, level, evidence)."""
        if self.interval_model is not None:
            interval = self.interval_model.meaning()
        else:
            interval = (
                "10th-90th percentile of the CV fold models' calibrated probabilities "
                f"({len(self.fold_boosters)} fold models), widened to contain the probability; "
                "no stated coverage"
            )
        out: dict[str, Any] = {"interval": interval, "interval_level": self.interval_level}
        time = self.metadata.get("time_to_response") or {}
        out["time_to_response"] = (
            None
            if self.time_model is None
            else {
                "meaning": self.time_model.meaning(),
                "horizon_days": self.time_model.horizon_days,
                "distribution": self.time_model.distribution,
                "scale": self.time_model.scale,
                "metrics": time.get("metrics", {}),
            }
        )
        return out

    def predict_proba(self, cohort: Any, interval: bool = True) -> pd.DataFrame:
        """Fast scores without explanations, one row per episode (index `episode_id`)."""
        prepared = self.prepare(cohort)
        out = pd.DataFrame(self.predict_matrix(prepared.X, interval), index=prepared.episode_ids)
        out.index.name = "episode_id"
        return out[["probability", "interval_low", "interval_high", "band", "margin"]]

    def warm(self) -> None:
        """Build the precomputed TreeSHAP table now (the first explanation would otherwise)."""
        if not self._shap_built:
            try:
                self._shap = ShapTable.build(self.booster)
            except Exception as exc:  # noqa: BLE001 - xgboost explains instead; never fail a load
                log.warning("no precomputed TreeSHAP (%s); xgboost explains", type(exc).__name__)
                self._shap = None
            self._shap_built = True

    def contributions(self, X: np.ndarray) -> np.ndarray:
        """Exact TreeSHAP in log-odds, one column per feature plus the bias column last.

        From the precomputed table (`serving.predict.treeshap`, proven against xgboost's
        `pred_contribs` when built), else from `pred_contribs` itself.
        """
        self.warm()
        if self._shap is not None:
            return self._shap.contributions(X)
        matrix = xgb.DMatrix(np.ascontiguousarray(X, dtype=np.float32), missing=np.nan, nthread=1)
        return self.booster.predict(matrix, pred_contribs=True, validate_features=False)

    def score(
        self,
        cohort: Any,
        explain: bool = True,
        options: ScoringOptions | None = None,
    ) -> list[Answer]:
        """The answer of DESIGN.md "One patient over HTTP" for every episode of the cohort."""
        prepared = self.prepare(cohort)
        return self.answers(prepared, cohort, explain, options or ScoringOptions())

    def answers(
        self, prepared: Prepared, cohort: Any, explain: bool, options: ScoringOptions
    ) -> list[Answer]:
        """Answers for already prepared features; `cohort` is the loaded cohort they come from
        (its warnings name the unknown drugs, filed under the episodes that could see them)."""
        X = prepared.X
        pred = self.predict_matrix(X)
        scores = Scores(
            episode_ids=prepared.episode_ids,
            X=X,
            prediction=pred,
            curves=self.response_curves(X, pred["probability"]),
            contributions=self.contributions(X) if explain and X.shape[0] else None,
            interval_level=self.interval_level,
            model=self.info,
            notes=prepared.notes,
        )
        unknown = unknown_drug_warnings(cohort) if explain else {}
        return write_answers(scores, self.words, options, unknown)

    # -- persistence ----------------------------------------------------------------------------

    def save(self, directory: str | Path) -> Path:
        """Write the model to a directory with a manifest of SHA-256 digests; returns the path."""
        blobs: dict[str, bytes] = {
            "booster.ubj": bytes(self.booster.save_raw("ubj")),
            "pipeline.pkl": pickle.dumps(self.pipeline, protocol=pickle.HIGHEST_PROTOCOL),
            "calibrator.json": dumps(self.calibrator.to_dict()),
            "bands.json": dumps(self.bands.to_dict()),
            "reference.json": dumps(self.reference),
            "metadata.json": dumps(self.metadata),
        }
        for k, booster in enumerate(self.fold_boosters):
            blobs[f"fold_{k:02d}.ubj"] = bytes(booster.save_raw("ubj"))
        if self.interval_model is not None:
            blobs.update(self.interval_model.to_blobs(dumps))
        if self.time_model is not None:
            blobs.update(self.time_model.to_blobs(dumps))
        return write_bundle(directory, blobs, n_folds=len(self.fold_boosters))

    @classmethod
    def load(cls, directory: str | Path, uri: str | None = None) -> DeployableModel:
        """Read a saved model, checking every file against the manifest.

        Raises:
            ModelLoadError: naming `uri` (or the directory) and what is wrong.
        """
        where = uri or str(directory)
        blobs = read_bundle(directory, where)
        try:
            return cls._from_blobs(blobs)
        except ModelLoadError:
            raise
        except Exception as exc:  # any failure to rebuild is a broken artifact, named as such
            raise ModelLoadError(
                f"model {where}: cannot be rebuilt ({type(exc).__name__}: {exc})"
            ) from exc

    @classmethod
    def _from_blobs(cls, blobs: dict[str, bytes]) -> DeployableModel:
        boosters = {}
        for name, blob in blobs.items():
            if name == "booster.ubj" or (name.startswith("fold_") and name.endswith(".ubj")):
                booster = xgb.Booster()
                booster.load_model(bytearray(blob))
                boosters[name] = booster
        # The pipeline pickle is trusted once its digest matches the manifest written with it.
        pipeline = pickle.load(io.BytesIO(blobs["pipeline.pkl"]))
        bands = json.loads(blobs["bands.json"])
        return cls(
            pipeline=pipeline,
            booster=boosters["booster.ubj"],
            calibrator=Calibrator.from_dict(json.loads(blobs["calibrator.json"])),
            fold_boosters=[boosters[n] for n in sorted(boosters) if n.startswith("fold_")],
            bands=RiskBands(
                thresholds=tuple(bands["thresholds"]),
                labels=tuple(bands["labels"]),
                operating_threshold=float(bands["operating_threshold"]),
            ),
            reference=json.loads(blobs["reference.json"]),
            metadata=json.loads(blobs["metadata.json"]),
            interval_model=BootstrapInterval.from_blobs(blobs, Calibrator.from_dict),
            time_model=TimeToResponse.from_blobs(blobs),
        )


def episodes_without_platelets(model: DeployableModel, prepared: Prepared) -> list[int]:
    """Rows (positions) of episodes with no platelet count on or before the index date.

    Such an episode is not estimable: the response label is defined from the platelet count at
    the index date, and a score without one would be a guess (a record with no labs at all scored
    0.71). Uses the model's `plt_last` feature, the same cut-off as every other feature.
    """
    j = model._column.get("plt_last")
    if j is None or prepared.X.shape[0] == 0:
        return []
    return np.flatnonzero(np.isnan(prepared.X[:, j])).tolist()
