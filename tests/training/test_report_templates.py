"""The report's Jinja macros and its TRIPOD+AI data file, without training a model."""

import tomllib
from pathlib import Path

import pytest

from training.report_tripod import ITEMS_FILE, REPORT_COVERAGE, TRIPOD_AI_ITEMS, parse_checklist
from training.report_types import Badge, Cell, SampleSize, Table, Uncertainty, ci, fmt, table
from training.templates import environment

ROOT = Path(__file__).resolve().parents[2]


def _macros():
    return environment().get_template("_macros.html").module


def test_table_formats_values_and_keeps_cells() -> None:
    t = table(["A", "B", "C"], [(1234, 0.5, None), (float("nan"), True, Cell("x"))], numeric=[0])
    assert t.rows == (("1,234", "0.500", "—"), ("—", "yes", Cell("x")))
    assert t.numeric == frozenset({0}) and t.flagged == frozenset()
    assert ci({"estimate": -0.0001, "low": -0.2, "high": 0.1}) == "0.000 (-0.200 to 0.100)"
    assert fmt([1, 2.5]) == "1; 2.500"


def test_table_macro_escapes_every_value() -> None:
    hostile = '<script>alert("x")</script>'
    t = table(
        [hostile, "N"],
        [
            (hostile, 3),
            (Cell(text=hostile, code="a<b", badges=(Badge("ok", "ok"), Badge("<i>", "flag"))), 4),
            (Cell(href="cohort"), 5),
        ],
        numeric=[1],
        flagged=[1],
    )
    html = str(_macros().table(t))
    assert "<script>" not in html and "<i>" not in html and "<b" not in html
    assert html.count("&lt;script&gt;") == 3
    assert "<th class=num>N</th>" in html and "<td class=num>3</td>" in html
    flagged = '<tr class="flagged"><td>&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt; <code>'
    assert flagged + "a&lt;b</code>" in html
    assert '<span class="badge ok">ok</span> <span class="badge flag">&lt;i&gt;</span>' in html
    assert '<td><a href="#cohort">#cohort</a></td>' in html


def test_table_or_says_why_there_is_no_table() -> None:
    macros = _macros()
    assert str(macros.table_or(None, "No <x>.")) == '<p class="muted">No &lt;x&gt;.</p>'
    assert str(macros.table_or(Table(("A",), (("1",),)), "none")).startswith("<table>")


def test_sample_size_and_uncertainty_macros() -> None:
    macros = _macros()
    assert "No sample-size assessment" in str(macros.sample_size(None))
    shown = str(macros.sample_size(SampleSize(None, ("few events",), None)))
    assert '<div class="callout flag">few events</div>' in shown
    assert "No sample-size figures recorded in this run." in shown
    assert str(macros.uncertainty(None)) == ""
    text = str(macros.uncertainty(Uncertainty(interval="80% <interval>")))
    assert text == "<p><strong>Interval.</strong> 80% &lt;interval&gt;</p>"


def test_tripod_items_come_from_the_shipped_data_file() -> None:
    path = ROOT / "training" / ITEMS_FILE
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    assert len(data["item"]) == len(TRIPOD_AI_ITEMS) == 52
    assert TRIPOD_AI_ITEMS[0].item == "1" and TRIPOD_AI_ITEMS[-1].item == "27c"
    assert REPORT_COVERAGE["10"].anchor == "sample-size"
    assert REPORT_COVERAGE["5b"].extent == "partial"
    # Installed with the package: templates is a package and *.toml is package data.
    assert (ROOT / "training" / "templates" / "__init__.py").exists()
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert "*.toml" in pyproject["tool"]["setuptools"]["package-data"]["*"]


def _item(**fields: str) -> dict:
    row = {"item": "1", "section": "Title", "topic": "Title", "applies": "D;E", "text": "t"}
    return {**row, **fields}


def test_the_tripod_loader_names_what_is_wrong_in_the_data_file() -> None:
    items, coverage = parse_checklist(
        {"item": [_item(report={"anchor": "a", "extent": "full", "note": "n"})]}
    )
    assert items[0].main_item == 1 and coverage["1"].anchor == "a"
    with pytest.raises(ValueError, match="item 1: missing or unknown field 'text'"):
        parse_checklist({"item": [{k: v for k, v in _item().items() if k != "text"}]})
    with pytest.raises(ValueError, match="applies 'X'"):
        parse_checklist({"item": [_item(applies="X")]})
    with pytest.raises(ValueError, match="item 1 is given twice"):
        parse_checklist({"item": [_item(), _item()]})
    with pytest.raises(ValueError, match="extent 'most'"):
        parse_checklist({"item": [_item(report={"anchor": "a", "extent": "most", "note": "n"})]})
    with pytest.raises(ValueError, match="missing or unknown field"):
        parse_checklist({"item": [_item(report={"anchor": "a", "where": "b"})]})
