"""Experiment configuration: one typed, frozen model per concern, loaded from an experiment TOML."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from data.labels import get_definition

DEFAULT_LABEL = "plt100_or_rise50_d14"


class ExperimentError(ValueError):
    """An experiment file is unreadable or invalid; the message names every bad key path."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SimulateConfig(_Section):
    """Simulate the default cohort instead of reading one."""

    n_patients: int = Field(3000, ge=20, le=1_000_000)
    seed: int = 20240601


class CohortConfig(_Section):
    """Where the cohort comes from: a directory, or the simulator (the default)."""

    dir: str | None = None
    simulate: SimulateConfig | None = None

    @model_validator(mode="after")
    def _one_source(self) -> CohortConfig:
        if self.dir is not None and self.simulate is not None:
            raise ValueError("give either cohort.dir or [cohort.simulate], not both")
        return self


class LabelConfig(_Section):
    """A named response definition of data.labels, or `custom:threshold=T,rise=R,horizon=D`."""

    definition: str = DEFAULT_LABEL

    @field_validator("definition")
    @classmethod
    def _known(cls, name: str) -> str:
        get_definition(name)  # raises ValueError naming the known definitions
        return name


class FeaturesConfig(_Section):
    """Feature families (None: every family of features.pipeline), extra analytes and columns."""

    families: tuple[str, ...] | None = None
    extra_analytes: tuple[str, ...] = ()
    extra_static: tuple[str, ...] = ()


class SearchSpace(_Section):
    """Random-search ranges, each [low, high]; log-uniform for learning_rate and penalties."""

    # Defaults serve the usual CTIT cohort of 150-500 episodes: stumps up to shallow trees, and
    # strong penalties; a large cohort may widen them in its experiment file.
    max_depth: tuple[int, int] = (1, 4)
    learning_rate: tuple[float, float] = (0.02, 0.1)
    min_child_weight: tuple[float, float] = (2.0, 20.0)
    subsample: tuple[float, float] = (0.5, 0.9)
    colsample_bytree: tuple[float, float] = (0.5, 1.0)
    reg_lambda: tuple[float, float] = (1.0, 30.0)

    @model_validator(mode="after")
    def _ordered(self) -> SearchSpace:
        for name in type(self).model_fields:
            low, high = getattr(self, name)
            if low > high:
                raise ValueError(f"{name}: low {low} is above high {high}")
            if low <= 0:
                raise ValueError(f"{name}: bounds must be positive, got {low}")
        for name in ("subsample", "colsample_bytree"):
            if getattr(self, name)[1] > 1:
                raise ValueError(f"{name}: high must be at most 1")
        return self


class ModelConfig(_Section):
    """XGBoost: fixed parameters, the search space, early stopping and monotone constraints.

    `inner_folds` is the patient-grouped inner cross-validation of the one procedure
    (`training.procedure`): tuning, early stopping and the calibrator's predictions.
    `monotone` names features (globs) whose registry direction is imposed; `["*"]` (as the
    shipped experiments say) constrains every feature the registry gives a direction and leaves
    the others free; the empty default lets a study check the learned directions against it.
    """

    params: dict[str, float | int | str] = Field(default_factory=dict)
    search: SearchSpace = SearchSpace()
    n_trials: int = Field(6, ge=1, le=500)
    max_rounds: int = Field(600, ge=10, le=20_000)
    early_stopping_rounds: int = Field(30, ge=1)
    inner_folds: int = Field(3, ge=2, le=10)
    monotone: tuple[str, ...] = ()
    n_jobs: int = Field(1, ge=1, le=64)

    @field_validator("params")
    @classmethod
    def _no_reserved(cls, params: dict[str, Any]) -> dict[str, Any]:
        reserved = {"objective", "monotone_constraints", "nthread", "n_jobs", "seed", "eval_metric"}
        bad = sorted(set(params) & reserved)
        if bad:
            raise ValueError(f"set by ctit, not configurable: {', '.join(bad)}")
        return params


class ValidationConfig(_Section):
    scheme: Literal["cv", "site", "time"] = "cv"
    n_splits: int = Field(5, ge=2, le=20)
    n_repeats: int = Field(2, ge=1, le=50)
    seed: int = 7
    time_test_fraction: float = Field(0.3, gt=0.05, lt=0.8)


class CalibrationConfig(_Section):
    method: Literal["platt", "isotonic", "none"] = "platt"


class EvaluationConfig(_Section):
    operating_threshold: float = Field(0.5, gt=0, lt=1)
    risk_bands: tuple[float, float] = (0.5, 0.75)
    band_labels: tuple[str, str, str] = ("low", "intermediate", "high")
    n_bootstrap: int = Field(500, ge=50, le=10_000)
    n_bootstrap_subgroup: int = Field(200, ge=50, le=10_000)
    ece_bins: int = Field(10, ge=2, le=100)
    decision_thresholds: tuple[float, float, float] = (0.05, 0.95, 0.01)
    bootstrap_seed: int = 11
    anticipated_auroc: float = Field(0.75, gt=0.5, lt=1)
    shap_sample: int = Field(1000, ge=10)

    @model_validator(mode="after")
    def _bands(self) -> EvaluationConfig:
        low, high = self.risk_bands
        if not 0 < low < high < 1:
            raise ValueError(
                f"risk_bands must satisfy 0 < low < high < 1, got {list(self.risk_bands)}"
            )
        start, stop, step = self.decision_thresholds
        if not (0 < start < stop < 1 and 0 < step < stop - start):
            raise ValueError("decision_thresholds is [start, stop, step] with 0 < start < stop < 1")
        return self


class TrackingConfig(_Section):
    experiment_name: str = "ctit"
    registered_model: str = "ctit-response"
    run_name: str | None = None


class PromotionConfig(_Section):
    """Gates a candidate must pass before `ctit promote` gives it the champion alias."""

    min_auroc_low: float = Field(0.6, ge=0, le=1)
    slope_band: tuple[float, float] = (0.8, 1.2)
    # Not worse than the comparators: the paired-bootstrap lower 95% bound of the AUROC difference
    # (candidate minus comparator, same out-of-fold episodes) must be above -comparator_margin.
    # The baseline-PLT rule may be added; logistic regression is the one a booster must beat.
    comparators: tuple[Literal["logreg", "plt_baseline"], ...] = ("logreg",)
    comparator_margin: float = Field(0.01, ge=0, le=1)
    max_auroc_drop: float = Field(0.0, ge=0, le=1)
    max_brier_increase: float = Field(0.0, ge=0, le=1)


#: Fewest bootstrap refits an interval is built from.
MIN_REFITS = 10


class IntervalConfig(_Section):
    """The probability interval: nominal level and patient-bootstrap refits of the deployed model.

    `n_bootstrap = 0` skips the refits (the answer then falls back to the fold-model percentile
    interval, with no stated level).
    """

    level: float = Field(0.8, gt=0.5, lt=1)
    n_bootstrap: int = Field(20, ge=0, le=500)
    # parametric-bootstrap refits that calibrate the width (0: Student's t multiplier)
    n_calibration: int = Field(10, ge=0, le=200)
    seed: int = 18

    @field_validator("n_bootstrap")
    @classmethod
    def _enough(cls, n: int) -> int:
        # The width is k times the refits' standard deviation: from fewer than 10 refits that
        # deviation is itself noise (2 refits: one degree of freedom, widths from 0.005 to 0.99).
        if 0 < n < MIN_REFITS:
            raise ValueError(f"0 (no interval) or at least {MIN_REFITS} bootstrap refits, got {n}")
        return n


class SurvivalConfig(_Section):
    """The time-to-response model (interval-censored XGBoost AFT) behind `response_by_day`."""

    enabled: bool = True
    distribution: Literal["normal", "logistic"] = "normal"
    scales: tuple[float, ...] = (0.5, 0.8, 1.2)  # AFT sigma candidates, chosen on an inner split
    calibration_days: tuple[int, ...] = (7, 14)  # days whose P(response by day) is evaluated
    # No time model unless this many responders have a response interval narrower than the
    # whole horizon (a PLT drawn between the index date and the response day, or the response
    # seen before the horizon): given outcomes, or PLT drawn only at the horizon, say nothing
    # about when, and a curve from them would be the distribution's assumed shape alone.
    min_timed_responders: int = Field(20, ge=1)

    @field_validator("scales")
    @classmethod
    def _positive(cls, scales: tuple[float, ...]) -> tuple[float, ...]:
        if not scales or any(s <= 0 for s in scales):
            raise ValueError("scales must be one or more positive numbers")
        return scales


class ExperimentConfig(_Section):
    """One experiment: what to train on, how, and how to judge and track it."""

    name: str = "baseline"
    description: str = ""
    cohort: CohortConfig = CohortConfig()
    label: LabelConfig = LabelConfig()
    features: FeaturesConfig = FeaturesConfig()
    model: ModelConfig = ModelConfig()
    validation: ValidationConfig = ValidationConfig()
    calibration: CalibrationConfig = CalibrationConfig()
    evaluation: EvaluationConfig = EvaluationConfig()
    tracking: TrackingConfig = TrackingConfig()
    promotion: PromotionConfig = PromotionConfig()
    interval: IntervalConfig = IntervalConfig()
    survival: SurvivalConfig = SurvivalConfig()


def _describe(error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        path = ".".join(str(part) for part in item["loc"]) or "(top level)"
        if item["type"] == "extra_forbidden":
            lines.append(f"{path}: unknown key")
        else:
            lines.append(f"{path}: {item['msg']}")
    return "\n".join(lines)


def parse_experiment(data: dict[str, Any], source: str = "experiment") -> ExperimentConfig:
    """Validate a parsed TOML mapping; raise ExperimentError naming every bad key path."""
    try:
        return ExperimentConfig.model_validate(data)
    except ValidationError as error:
        raise ExperimentError(f"{source} is invalid:\n{_describe(error)}") from None


def load_experiment(path: str | Path) -> ExperimentConfig:
    """Read and validate an experiment TOML file."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ExperimentError(f"{path}: no such experiment file") from None
    except tomllib.TOMLDecodeError as error:
        raise ExperimentError(f"{path}: not valid TOML: {error}") from None
    return parse_experiment(data, source=str(path))


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Flatten a nested mapping to dotted keys with string values (MLflow params)."""
    out: dict[str, str] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, prefix=f"{name}."))
        else:
            out[name] = str(list(value) if isinstance(value, tuple) else value)
    return out
