"""The reviewer report's context types: plain data the templates render (no HTML).

`ReportContext` holds every section of the page as frozen dataclasses of strings, numbers, tuples,
`Table`s (headers and rows of display text or `Cell`s) and figures as base64 PNG data URIs;
`training.report_context` computes it and `training.report` renders it with the Jinja templates of
`training/templates`. `fmt`, `ci` and `table` turn numbers into the text the tables show.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from training.explain import DirectionRule


class ReportError(ValueError):
    """The training result cannot be rendered; the message names the field and the problem."""


@dataclass(frozen=True)
class ReportSettings:
    """What the report shows.

    Attributes:
        top_features: features in the importance bar chart and beeswarm.
        n_dependence: dependence plots (the most important features).
        stability_features: top features whose fold ranks are shown.
        waterfall_features: features shown per waterfall (the rest are summed).
        max_explained: episodes explained for the global plots (a seeded sample when there are
            more); None takes the experiment's `evaluation.shap_sample`.
        direction: how learned directions are read from the SHAP dependence.
        seed: sampling seed.
    """

    top_features: int = 15
    n_dependence: int = 4
    stability_features: int = 10
    waterfall_features: int = 10
    max_explained: int | None = None
    direction: DirectionRule = field(default_factory=DirectionRule)
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("top_features", "n_dependence", "stability_features", "waterfall_features"):
            if getattr(self, name) < 1:
                raise ValueError(f"ReportSettings.{name} must be at least 1")
        if self.max_explained is not None and self.max_explained < 10:
            raise ValueError("ReportSettings.max_explained must be at least 10")


@dataclass(frozen=True)
class Badge:
    """A short status word; `kind` is ok, warn, flag or na."""

    text: str
    kind: str


@dataclass(frozen=True)
class Cell:
    """A table cell beyond plain text: a name with its feature code, a link to an element of the
    page (`href`, an id), and badges after the text."""

    text: str = ""
    code: str = ""
    href: str = ""
    badges: tuple[Badge, ...] = ()


@dataclass(frozen=True)
class Table:
    """Headers and rows of display text; `numeric` columns align right, `flagged` rows stand out."""

    headers: tuple[str, ...]
    rows: tuple[tuple[str | Cell, ...], ...]
    numeric: frozenset[int] = frozenset()
    flagged: frozenset[int] = frozenset()


@dataclass(frozen=True)
class Figure:
    """One image: a base64 PNG data URI, what it shows (alt) and its caption."""

    src: str
    alt: str
    caption: str


@dataclass(frozen=True)
class KeyCell:
    """One model's value of a key metric: the text shown and the logged numbers behind it."""

    model: str
    text: str
    estimate: float | None
    low: float | None
    high: float | None


@dataclass(frozen=True)
class KeyFigure:
    key: str
    label: str
    better: str
    cells: tuple[KeyCell, ...]


@dataclass(frozen=True)
class KeyFigures:
    outcome_words: str
    n_episodes: int
    n_events: int
    models: tuple[str, ...]
    rows: tuple[KeyFigure, ...]
    flags: tuple[str, ...]


@dataclass(frozen=True)
class RileyVerdict:
    n_episodes: str
    minimum_n: str
    limited_by: str
    enough: bool
    criteria: Table


@dataclass(frozen=True)
class SampleSize:
    riley: RileyVerdict | None
    warnings: tuple[str, ...]
    figures: Table | None


@dataclass(frozen=True)
class Summary:
    intended_use: str
    model_facts: tuple[tuple[str, str], ...]
    label_text: str
    cohort_facts: tuple[tuple[str, str], ...]
    attrition: Table | None
    table1: Table | None
    sample_size: SampleSize | None
    predictors: Table
    model_spec: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Uncertainty:
    """What the probability interval means and, when the model has one, the time-to-response
    model's meaning, evidence and out-of-fold metrics."""

    interval: str
    time_meaning: str = ""
    time_evidence: str = ""
    time_metrics: Table | None = None


@dataclass(frozen=True)
class Performance:
    note: str
    metrics: Table
    roc: str
    calibration: str
    decision_curve: str
    forest: str
    subgroups: Table | None
    uncertainty: Uncertainty | None


@dataclass(frozen=True)
class Explanations:
    note: str
    importance_figure: str
    groups_figure: str
    beeswarm: str
    dependence: tuple[Figure, ...]
    importance: Table
    n_unused: int


@dataclass(frozen=True)
class Plausibility:
    note: str
    n_contradictions: int
    table: Table | None
    monotone: Table | None


@dataclass(frozen=True)
class Stability:
    note: str
    figure: str
    table: Table | None


@dataclass(frozen=True)
class Case:
    kind: str
    episode: str
    title: str
    src: str
    table: Table


@dataclass(frozen=True)
class Gallery:
    note: str
    cases: tuple[Case, ...]


@dataclass(frozen=True)
class Tripod:
    filled: Table
    authors: Table


@dataclass(frozen=True)
class ReportContext:
    """Everything the reviewer report shows, section by section (ids: `SECTIONS`)."""

    title: str
    subtitle: str
    toc: tuple[tuple[str, str], ...]
    key: KeyFigures
    summary: Summary
    performance: Performance
    explanations: Explanations
    plausibility: Plausibility
    stability: Stability
    gallery: Gallery
    limitations: tuple[str, ...]
    tripod: Tripod
    footer: str


def fmt(value: Any, digits: int = 3) -> str:
    """A value as the report shows it: '—' for missing, thousands separators, 3 decimals."""
    if value is None:
        return "—"
    if isinstance(value, bool | np.bool_):
        return "yes" if value else "no"
    if isinstance(value, int | np.integer):
        return f"{int(value):,}"
    if isinstance(value, float | np.floating):
        if math.isnan(value):
            return "—"
        if value != 0 and (abs(value) >= 1e5 or abs(value) < 1e-3):
            return f"{value:.{digits}g}"
        if float(value).is_integer() and abs(value) >= 10:
            return f"{int(value):,}"
        return f"{value:.{digits}f}"
    if isinstance(value, list | tuple):
        return "; ".join(fmt(v, digits) for v in value) or "—"
    return str(value)


def humanise(key: str) -> str:
    """A column or key name as a heading: 'n_episodes' -> 'N episodes'."""
    text = str(key).replace("_", " ").strip()
    return text[:1].upper() + text[1:]


def ci(cell: Mapping[str, float] | None, digits: int = 3) -> str:
    """'0.785 (0.771 to 0.800)': an estimate with its 95% CI, never ambiguous with a minus."""
    if not cell or cell.get("estimate") is None or math.isnan(cell["estimate"]):
        return "—"

    def fixed(value: float) -> str:
        text = f"{value:.{digits}f}"
        return text[1:] if text.startswith("-") and float(text) == 0 else text

    text = fixed(cell["estimate"])
    low, high = cell.get("low"), cell.get("high")
    if low is None or high is None or math.isnan(low) or math.isnan(high):
        return text
    return f"{text} ({fixed(low)} to {fixed(high)})"


def table(
    headers: Sequence[str],
    rows: Iterable[Sequence[Any]],
    numeric: Iterable[int] = (),
    flagged: Iterable[int] = (),
) -> Table:
    """A `Table` with every value but a `Cell` formatted as text ('—' for missing)."""
    return Table(
        headers=tuple(str(h) for h in headers),
        rows=tuple(tuple(c if isinstance(c, Cell) else fmt(c) for c in row) for row in rows),
        numeric=frozenset(numeric),
        flagged=frozenset(flagged),
    )
