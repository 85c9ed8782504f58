"""HTML templates (package data) of the reviewer report, the monitoring page and the
external-validation page, and the one Jinja environment that renders them all."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jinja2


def environment(filters: Mapping[str, Callable[..., Any]] | None = None) -> jinja2.Environment:
    """A fresh environment over these templates: autoescaped HTML, undefined names an error."""
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("training", "templates"),
        autoescape=jinja2.select_autoescape(["html"]),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(filters or {})
    return env
