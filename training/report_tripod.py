"""The TRIPOD+AI checklist (Collins et al., BMJ 2024;385:e078378) and where the report fills it.

27 main items with 52 sub-items, in eight sections, read from the data file shipped with the
package (`training/templates/tripod_items.toml`): item texts are short paraphrases; the published
statement and its explanation-and-elaboration paper are the reference.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

#: The checklist's data file, inside the `training` package.
ITEMS_FILE = "templates/tripod_items.toml"
_APPLIES = {"D;E", "D", "E"}
_EXTENTS = {"full", "partial"}
_FIELDS = ("item", "section", "topic", "applies", "text")


@dataclass(frozen=True)
class TripodItem:
    """One TRIPOD+AI sub-item.

    Attributes:
        item: identifier as published ("3b", "12e").
        section: checklist section (Title, Abstract, Introduction, Methods, Open science, ...).
        topic: the item's topic.
        applies: "D;E", "D" (development only) or "E" (evaluation only).
        text: short paraphrase of what must be reported.
    """

    item: str
    section: str
    topic: str
    applies: str
    text: str

    @property
    def main_item(self) -> int:
        """The main item number (1..27)."""
        return int("".join(ch for ch in self.item if ch.isdigit()))


@dataclass(frozen=True)
class ReportCoverage:
    """Where this report documents an item, and how completely.

    Attributes:
        anchor: id of the report element holding the evidence.
        extent: "full" or "partial" (the authors must add to it).
        note: what the report shows, and what the authors must add if partial.
    """

    anchor: str
    extent: str
    note: str


def parse_checklist(
    data: Mapping[str, Any],
) -> tuple[tuple[TripodItem, ...], dict[str, ReportCoverage]]:
    """The items and the report's coverage from the parsed TOML (`[[item]]` tables, in order).

    Raises:
        ValueError: a missing field, an unknown `applies` or `extent`, or an item given twice.
    """
    items, coverage = [], {}
    for n, row in enumerate(data.get("item", []), start=1):
        try:
            item = TripodItem(*(str(row[k]) for k in _FIELDS))
            report = row.get("report")
            covered = None if report is None else ReportCoverage(**report)
        except (KeyError, TypeError) as error:
            raise ValueError(f"{ITEMS_FILE}: item {n}: missing or unknown field {error}") from None
        if item.applies not in _APPLIES:
            raise ValueError(f"{ITEMS_FILE}: item {item.item}: applies {item.applies!r}")
        if any(earlier.item == item.item for earlier in items):
            raise ValueError(f"{ITEMS_FILE}: item {item.item} is given twice")
        if covered is not None:
            if covered.extent not in _EXTENTS:
                raise ValueError(f"{ITEMS_FILE}: item {item.item}: extent {covered.extent!r}")
            coverage[item.item] = covered
        items.append(item)
    return tuple(items), coverage


@cache
def load_checklist() -> tuple[tuple[TripodItem, ...], dict[str, ReportCoverage]]:
    """The checklist shipped with the package (read once, on first use)."""
    text = resources.files("training").joinpath(ITEMS_FILE).read_text(encoding="utf-8")
    return parse_checklist(tomllib.loads(text))


def __getattr__(name: str) -> Any:
    # TRIPOD_AI_ITEMS (every sub-item, in order) and REPORT_COVERAGE (item -> where the report
    # documents it; absent items are for the authors), read on first use, not at import.
    if name == "TRIPOD_AI_ITEMS":
        return load_checklist()[0]
    if name == "REPORT_COVERAGE":
        return load_checklist()[1]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
