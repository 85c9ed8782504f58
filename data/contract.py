"""The cohort contract, declared once: tables, columns, each column's kind, bounds and unit.

Everything that knows the contract reads it from here (DESIGN.md "Cohort contract"):
- the loader (`data.cohort`): required tables and columns, the columns read as text from CSV, the
  date columns, the booleans;
- the feature pipeline (`features.clinical`): the boolean clinical columns;
- the HTTP request models (`serving.schemas`): fields, types, bounds and descriptions of one
  patient's rows;
- the web page (`serving/static/app.js`, through `GET /v1/contract`): its list of patient fields
  and of three-state (yes/no/unknown) answers.

A column's `kind` says how its values are read:
- `id`: an identifier, read as text (so "007" stays "007");
- `text`: free text, kept as given;
- `category`: text from a closed list (`choices`); another value is kept and warned;
- `date` / `datetime`: ISO 8601, local time, within `DATE_RANGE`;
- `number` / `integer`: numeric, within `minimum`..`maximum` where given;
- `boolean`: true/false, yes/no, 1/0 (unknown when empty), held as 1.0/0.0/NaN;
- `drugs`: generic drug names separated by `;` (a list in a request).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal

Kind = Literal[
    "id", "text", "category", "date", "datetime", "number", "integer", "boolean", "drugs"
]

#: Every date column must lie within this range: outside are typing errors (0001-01-01,
#: 9999-12-31), and numpy's nanosecond dates would wrap past 1677-2262.
DATE_RANGE: tuple[str, str] = ("1900-01-01", "2200-12-31")
SUBTYPES: tuple[str, ...] = ("HR+/HER2-", "HER2+", "TNBC")
TRANSFUSION_PRODUCTS: tuple[str, ...] = ("platelets", "red_cells")
#: The longest identifier a request may carry.
MAX_ID_LENGTH = 128

_TEXT_KINDS = frozenset({"id", "text", "category", "date", "datetime", "boolean", "drugs"})


@dataclass(frozen=True)
class Column:
    """One column of a contract table."""

    name: str
    kind: Kind
    required: bool = False
    description: str = ""
    unit: str | None = None
    minimum: float | None = None
    maximum: float | None = None
    #: The bound `minimum` itself is refused (a dose must be above 0).
    exclusive_minimum: bool = False
    choices: tuple[str, ...] = ()

    @property
    def read_as_text(self) -> bool:
        """Whether a CSV reader must keep this column as text (ids, dates, booleans, ...)."""
        return self.kind in _TEXT_KINDS

    @property
    def is_date(self) -> bool:
        return self.kind in ("date", "datetime")


@dataclass(frozen=True)
class Table:
    """One table of the contract: its columns in order and whether a cohort must have it."""

    name: str
    required: bool
    columns: tuple[Column, ...]
    description: str = ""

    def column(self, name: str) -> Column:
        for column in self.columns:
            if column.name == name:
                return column
        raise KeyError(f"{self.name} has no contract column {name!r}")

    def names(self, *kinds: Kind) -> tuple[str, ...]:
        """The names of this table's columns, of the given kinds only when kinds are given."""
        return tuple(c.name for c in self.columns if not kinds or c.kind in kinds)

    @property
    def required_columns(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns if c.required)


def _boolean(name: str, description: str) -> Column:
    return Column(name, "boolean", description=f"{description} (true/false; empty when unknown).")


_PATIENT_ID = Column("patient_id", "id", required=True, description="The patient's identifier.")

PATIENTS = Table(
    "patients",
    required=True,
    description="One row per patient.",
    columns=(
        _PATIENT_ID,
        Column("sex", "text", description="Sex as recorded (F, M, ...)."),
        Column("birth_date", "date", description="Date of birth (ISO 8601)."),
        Column("race", "text", description="Race or ancestry as recorded."),
        Column("site", "text", description="Hospital or site (for site-wise validation)."),
        Column(
            "ecog",
            "integer",
            minimum=0,
            maximum=4,
            description="ECOG performance status 0-4.",
        ),
        Column(
            "subtype",
            "category",
            choices=SUBTYPES,
            description="HR+/HER2-, HER2+ or TNBC (another value is kept and warned).",
        ),
        _boolean("bone_mets", "Bone metastases"),
        _boolean("liver_mets", "Liver metastases"),
        _boolean("marrow_involvement", "Bone-marrow involvement"),
        _boolean("splenomegaly", "Splenomegaly"),
        _boolean("prior_radiotherapy", "Radiotherapy before the index date"),
    ),
)

EPISODES = Table(
    "episodes",
    required=True,
    description="One row per CTIT episode; the index date is the first hetrombopag dose.",
    columns=(
        Column("episode_id", "id", required=True, description="The episode's identifier."),
        _PATIENT_ID,
        Column(
            "index_date",
            "date",
            required=True,
            description="First hetrombopag dose (ISO 8601 date).",
        ),
        Column(
            "age_years",
            "number",
            minimum=0,
            maximum=120,
            unit="years",
            description="Age at the index date; else from birth_date.",
        ),
        Column(
            "dose_mg",
            "number",
            minimum=0,
            exclusive_minimum=True,
            maximum=100,
            unit="mg",
            description="Daily hetrombopag dose.",
        ),
    ),
)

LABS = Table(
    "labs",
    required=True,
    description="Lab results; `test` is a LOINC code or a canonical alias (PLT, HGB, ...).",
    columns=(
        _PATIENT_ID,
        Column(
            "time",
            "datetime",
            required=True,
            description="ISO 8601 date or datetime, local time.",
        ),
        Column("test", "text", required=True, description="LOINC code or alias (PLT, HGB, ...)."),
        Column("value", "number", required=True, description="The result, in `unit`."),
        Column("unit", "text", required=True, description="UCUM unit as reported."),
    ),
)

REGIMENS = Table(
    "regimens",
    required=True,
    description="Anticancer regimens: generic drug names separated by `;`.",
    columns=(
        _PATIENT_ID,
        Column("start_date", "date", required=True, description="First day of the regimen."),
        Column("end_date", "date", description="Last day of the regimen (empty when ongoing)."),
        Column("drugs", "drugs", required=True, description="Generic drug names."),
        Column("regimen", "text", description="The regimen's name as recorded."),
        Column("line", "integer", minimum=1, maximum=30, description="Line of therapy."),
        Column("cycle", "integer", minimum=1, maximum=200, description="Cycle number."),
    ),
)

OUTCOMES = Table(
    "outcomes",
    required=False,
    description="Given response labels (0/1); they win over derived ones.",
    columns=(
        Column("episode_id", "id", required=True, description="The episode's identifier."),
        Column(
            "response",
            "integer",
            required=True,
            minimum=0,
            maximum=1,
            description="1 when the platelets responded.",
        ),
    ),
)

TRANSFUSIONS = Table(
    "transfusions",
    required=False,
    description="Transfusions (a platelet count soon after a platelet transfusion never counts).",
    columns=(
        _PATIENT_ID,
        Column("time", "datetime", required=True, description="When it was given."),
        Column(
            "product",
            "category",
            required=True,
            choices=TRANSFUSION_PRODUCTS,
            description="platelets or red_cells.",
        ),
        Column("units", "number", minimum=0, description="Units given."),
    ),
)

#: The contract's tables by name, in the order DESIGN.md lists them.
CONTRACT: Mapping[str, Table] = MappingProxyType(
    {t.name: t for t in (PATIENTS, EPISODES, LABS, REGIMENS, OUTCOMES, TRANSFUSIONS)}
)
TABLES: tuple[str, ...] = tuple(CONTRACT)
REQUIRED_TABLES: tuple[str, ...] = tuple(t.name for t in CONTRACT.values() if t.required)
REQUIRED_COLUMNS: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {t.name: t.required_columns for t in CONTRACT.values()}
)
#: The clinical yes/no columns of `patients`.
BOOLEAN_COLUMNS: tuple[str, ...] = PATIENTS.names("boolean")
#: Columns a CSV reader keeps as text (ids such as "007" must not become numbers).
TEXT_COLUMNS: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {t.name: tuple(c.name for c in t.columns if c.read_as_text) for t in CONTRACT.values()}
)
DATE_COLUMNS: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {t.name: tuple(c.name for c in t.columns if c.is_date) for t in CONTRACT.values()}
)


def contract_as_dict() -> dict[str, object]:
    """The contract as plain JSON-ready data (served at `GET /v1/contract` for the page)."""
    return {
        "date_range": list(DATE_RANGE),
        "tables": [
            {
                "name": t.name,
                "required": t.required,
                "description": t.description,
                "columns": [
                    {
                        key: value
                        for key, value in (
                            ("name", c.name),
                            ("kind", c.kind),
                            ("required", c.required),
                            ("description", c.description),
                            ("unit", c.unit),
                            ("minimum", c.minimum),
                            ("maximum", c.maximum),
                            ("exclusive_minimum", c.exclusive_minimum or None),
                            ("choices", list(c.choices) or None),
                        )
                        if value is not None
                    }
                    for c in t.columns
                ],
            }
            for t in CONTRACT.values()
        ],
    }
