"""Hostile input: `ctit validate` on mutated cohorts never crashes and always says where and what.

Each example starts from the shared valid cohort and applies a few random mutations a hospital
export can suffer: a cell replaced by junk, a column dropped or renamed, a row duplicated, a file
truncated, bytes that are not UTF-8, an empty file. Whatever happens, the command exits 0 or 1
(never a crash), prints no traceback, every error names its table and a plain reason (with a line
and a column whenever the problem sits in one cell), and the input files are left unchanged.
"""

import json
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from ctit.cli import app

runner = CliRunner()
TABLES = ["patients", "episodes", "labs", "regimens"]
JUNK = st.sampled_from(
    [
        "",
        " ",
        "abc",
        "-1",
        "1e309",
        "NaN",
        "2024-13-45",
        "0x10",
        "🩸",
        "\u0000",
        "'; DROP TABLE",
        "1,5",
    ]
)


@st.composite
def mutation(draw: st.DrawFn) -> tuple:
    kind = draw(
        st.sampled_from(["cell", "drop", "rename", "duplicate", "truncate", "bytes", "empty"])
    )
    table = draw(st.sampled_from(TABLES))
    return (kind, table, draw(st.integers(0, 10_000)), draw(JUNK))


def _write(path: Path, lines: list[str]) -> None:
    path.write_bytes(("\n".join(lines) + "\n").encode("utf-8", "surrogateescape"))


def _mutate(directory: Path, kind: str, table: str, pick: int, junk: str) -> None:
    path = directory / f"{table}.csv"
    raw = path.read_bytes()
    lines = raw.decode("utf-8", "surrogateescape").splitlines()
    if not lines:
        return
    header, rows = lines[0].split(","), lines[1:]
    if kind == "cell" and rows:
        r = pick % len(rows)
        cells = rows[r].split(",")
        c = pick % len(cells)
        cells[c] = '"' + junk.replace('"', "") + '"'
        rows[r] = ",".join(cells)
        _write(path, [",".join(header), *rows])
    elif kind in ("drop", "rename"):
        c = pick % len(header)
        if kind == "drop":
            keep = [i for i in range(len(header)) if i != c]
            text = [",".join(header[i] for i in keep)]
            text += [
                ",".join(row.split(",")[i] for i in keep if i < len(row.split(","))) for row in rows
            ]
        else:
            header[c] = header[c] + "_x"
            text = [",".join(header), *rows]
        _write(path, text)
    elif kind == "duplicate" and rows:
        rows.append(rows[pick % len(rows)])
        _write(path, [",".join(header), *rows])
    elif kind == "truncate":
        path.write_bytes(raw[: max(1, pick % len(raw))])
    elif kind == "bytes":
        cut = pick % len(raw)
        path.write_bytes(raw[:cut] + b"\xff\xfe\x80" + raw[cut:])
    elif kind == "empty":
        path.write_bytes(b"")


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(mutations=st.lists(mutation(), min_size=1, max_size=3))
def test_validate_survives_mutated_cohorts(
    tmp_path_factory, cohort_tables, mutations: list[tuple]
) -> None:
    directory = tmp_path_factory.mktemp("fuzz")
    for name, frame in cohort_tables.items():
        frame.to_csv(directory / f"{name}.csv", index=False)
    for kind, table, pick, junk in mutations:
        _mutate(directory, kind, table, pick, junk)
    before = {p.name: p.read_bytes() for p in directory.iterdir()}

    result = runner.invoke(app, ["validate", str(directory), "--json"])

    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    assert result.exit_code in (0, 1), result.output
    assert "Traceback" not in result.output
    report = json.loads(result.stdout)
    assert report["valid"] is (result.exit_code == 0)
    for error in report["errors"]:
        assert error["table"] in TABLES + ["outcomes", "cohort"], error
        assert isinstance(error["message"], str) and error["message"].strip(), error
        assert error["line"] is None or (isinstance(error["line"], int) and error["line"] >= 1)
        if error["line"] is not None:
            assert error["line"] <= 200, error
    assert {p.name: p.read_bytes() for p in directory.iterdir()} == before, "input was modified"
