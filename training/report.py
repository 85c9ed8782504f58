"""The reviewer report: SHAP explanations and the evidence behind a model (TRIPOD+AI).

`render_report(result)` returns one self-contained HTML page: CSS inline, every figure an inline
base64 PNG, no script and no font or other resource fetched from anywhere (a Content-Security-Policy
forbids it). Section ids are stable: summary, performance, global-explanations, plausibility,
stability, case-gallery, limitations, tripod.

Two steps: `training.report_context.build_context` computes everything the page shows as
plain data (`training.report_types.ReportContext`), and the Jinja templates
`training/templates/report.html` and `_macros.html` (tables, badges, facts, figures) turn it into
HTML, with autoescaping on. No HTML is built in Python.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from markupsafe import Markup

from data.outputs import write_text
from training.report_context import (
    SECTIONS,
    build_context,
    display_labels,
    key_figures,
    uncertainty,
)
from training.report_types import ReportContext, ReportError, ReportSettings
from training.templates import environment

if TYPE_CHECKING:
    from training.result import TrainResult

__all__ = [
    "SECTIONS",
    "ReportContext",
    "ReportError",
    "ReportSettings",
    "build_context",
    "display_labels",
    "key_figures",
    "render_context",
    "render_report",
    "uncertainty_html",
    "write_report",
]


def render_context(context: ReportContext) -> str:
    """The reviewer HTML of a computed context."""
    return environment().get_template("report.html").render(r=context)


def render_report(result: TrainResult, settings: ReportSettings | None = None) -> str:
    """Render the self-contained reviewer HTML of one training run.

    Raises:
        ReportError: the result lacks what the report needs (the message names the field).
    """
    return render_context(build_context(result, settings))


def uncertainty_html(result: TrainResult) -> Markup:
    """The report's paragraph on the probability interval and the time-to-response evidence."""
    macros = environment().get_template("_macros.html").module
    return macros.uncertainty(uncertainty(result))  # type: ignore[attr-defined]


def write_report(
    result: TrainResult, path: str | Path, settings: ReportSettings | None = None
) -> Path:
    """Render the report and write it to `path` (UTF-8)."""
    return write_text(path, render_report(result, settings))
