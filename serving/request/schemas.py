"""Request and answer bodies of the scoring API: the cohort contract of one patient, as pydantic.

A request carries one patient's rows of the cohort contract (DESIGN.md "One patient over HTTP").
The row models (`PatientIn`, `EpisodeIn`, `LabIn`, `RegimenIn`) are built from `data.contract`:
field names, types, bounds, units and descriptions are the contract's. Kept here by hand are only
the request's own rules: identifiers' and texts' lengths, drugs as a list or a `;` string, a
regimen's end on or after its start, and extra keys never under a contract column's name.
Checks made here are about the shape of one record (types, required fields, dates in order,
impossible static values); units, analytes, drugs and lab values are checked by
`data.cohort.cohort_from_tables`, the same code that loads a training cohort.

Decisions (documented in docs/ARCHITECTURE.md, "serving"):
- Labs dated after the index date are accepted and never used (the leakage guard of the feature
  pipeline); the answer warns how many were ignored.
- A regimen starting after the index date is accepted and warned (it cannot have caused this CTIT).
- A datetime with a UTC offset keeps its wall-clock reading: the offset is dropped, since the
  contract's times are local.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    create_model,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from data.contract import (
    CONTRACT,
    DATE_RANGE,
    EPISODES,
    LABS,
    MAX_ID_LENGTH,
    PATIENTS,
    REGIMENS,
    Column,
    Table,
)

#: Dates outside these are refused: they are typing errors (0001-01-01, 9999-12-31) and lie
#: outside the nanosecond range of the feature code (1677-2262), where they would wrap.
EARLIEST = dt.date.fromisoformat(DATE_RANGE[0])
LATEST = dt.date.fromisoformat(DATE_RANGE[1])


def _bounded(value: dt.date) -> dt.date:
    day = value.date() if isinstance(value, dt.datetime) else value
    if not EARLIEST <= day <= LATEST:
        raise PydanticCustomError(
            "date_range",
            "{given} is outside {earliest} to {latest}",
            {
                "given": value.isoformat(),
                "earliest": EARLIEST.isoformat(),
                "latest": LATEST.isoformat(),
            },
        )
    return value


def _naive(value: Any) -> Any:
    if isinstance(value, dt.datetime) and value.tzinfo is not None:
        return value.replace(tzinfo=None)
    return value


def _drug_list(value: Any) -> Any:
    if isinstance(value, str):
        return [part.strip() for part in value.split(";") if part.strip()]
    return value


_RANGE_NOTE = f"Between {EARLIEST.isoformat()} and {LATEST.isoformat()}."
FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]
Identifier = Annotated[str, Field(min_length=1, max_length=MAX_ID_LENGTH)]
Date = Annotated[dt.date, AfterValidator(_bounded)]
#: A datetime with a UTC offset keeps its wall-clock reading (the contract's times are local).
DateTime = Annotated[dt.datetime, AfterValidator(_bounded), AfterValidator(_naive)]
#: Generic drug names: a list, or one `;`-separated string.
Drugs = Annotated[
    list[Annotated[str, Field(min_length=1)]], BeforeValidator(_drug_list), Field(min_length=1)
]

#: Request-only limits on text columns (the contract bounds numbers, not text lengths).
_TEXT_LIMITS: dict[str, dict[str, int]] = {
    "sex": {"max_length": 32},
    "subtype": {"max_length": 32},
    "test": {"max_length": 64},
    "unit": {"max_length": 32},
}


def _annotation(column: Column) -> Any:
    """The request type of a contract column, with its bounds."""
    kind = column.kind
    if kind == "id":
        return Identifier
    if kind in ("text", "category"):
        limits = {
            **({"min_length": 1} if column.required else {}),
            **_TEXT_LIMITS.get(column.name, {}),
        }
        return Annotated[str, Field(**limits)] if limits else str
    simple = {"date": Date, "datetime": DateTime, "boolean": bool, "drugs": Drugs}
    if kind in simple:
        return simple[kind]
    bounds: dict[str, float] = {}
    if column.minimum is not None:
        bounds["gt" if column.exclusive_minimum else "ge"] = column.minimum
    if column.maximum is not None:
        bounds["le"] = column.maximum
    number = FiniteFloat if kind == "number" else int
    return Annotated[number, Field(**bounds)] if bounds else number


def _description(column: Column) -> str:
    words = [column.description]
    if column.unit:
        words.append(f"Unit: {column.unit}.")
    if column.is_date:
        words.append(_RANGE_NOTE)
    return " ".join(w for w in words if w)


def _fields(table: Table, leave_out: tuple[str, ...] = ()) -> dict[str, Any]:
    """Pydantic fields of a contract table's columns: name, type, bounds, description; optional
    columns default to None."""
    fields: dict[str, Any] = {}
    for column in table.columns:
        if column.name in leave_out:
            continue
        annotation = _annotation(column)
        description = _description(column) or None
        if column.required:
            fields[column.name] = (annotation, Field(description=description))
        else:
            fields[column.name] = (annotation | None, Field(None, description=description))
    return fields


def _contract_columns() -> frozenset[str]:
    """Every column name of the cohort contract (all tables), plus the request's own parts."""
    names = {column.name for table in CONTRACT.values() for column in table.columns}
    return frozenset(names | {"episode", "episodes", "labs", "regimens"})


#: Names an extra key may not take (see `_Row`).
CONTRACT_COLUMNS = _contract_columns()


class _Row(BaseModel):
    """A contract row: unknown extra keys are kept, but never under a contract column's name
    (an extra `patient_id` on a lab would move the lab to another patient)."""

    model_config = ConfigDict(extra="allow")

    @model_validator(mode="wrap")
    @classmethod
    def _no_clash(cls, data: Any, handler: Any) -> Any:
        if isinstance(data, dict):
            own = set(cls.model_fields)
            clashes = [k for k in data if k not in own and k in CONTRACT_COLUMNS]
            if clashes:
                raise ValidationError.from_exception_data(
                    cls.__name__,
                    [
                        InitErrorDetails(
                            type=PydanticCustomError(
                                "extra_clash",
                                "extra key '{key}' is a column of the cohort contract and not a "
                                "field of this row; refused (it would change another row's data)",
                                {"key": key},
                            ),
                            loc=(key,),
                            input=None,
                        )
                        for key in clashes
                    ],
                )
        return handler(data)


class _Regimen(_Row):
    """The request-only rule of a regimen row: it cannot end before it starts."""

    @model_validator(mode="after")
    def _ordered(self) -> Any:
        end, start = getattr(self, "end_date", None), getattr(self, "start_date", None)
        if end is not None and start is not None and end < start:
            raise ValueError("end_date is before start_date")
        return self


def _row_model(name: str, doc: str, table: Table, base: type[_Row] = _Row) -> type[_Row]:
    """The request model of one row of `table`: its contract columns (a patient's own rows leave
    out `patient_id`: the record's patient is theirs), extra keys kept."""
    leave_out = () if table is PATIENTS else ("patient_id",)
    model = create_model(name, __base__=base, __module__=__name__, **_fields(table, leave_out))
    model.__doc__ = doc
    return model


PatientIn = _row_model(
    "PatientIn",
    "The patient's row of the `patients` table; unknown extra columns are kept.",
    PATIENTS,
)
EpisodeIn = _row_model(
    "EpisodeIn", "One CTIT episode; `index_date` is the first hetrombopag dose.", EPISODES
)
LabIn = _row_model(
    "LabIn", "One lab result: `test` is a LOINC code or canonical alias (PLT, HGB, ...).", LABS
)
RegimenIn = _row_model(
    "RegimenIn",
    "One anticancer regimen: generic drug names as a list (or one `;`-separated string).",
    REGIMENS,
    base=_Regimen,
)


EXAMPLE_RECORD: dict[str, Any] = {
    "patient": {
        "patient_id": "P1",
        "sex": "F",
        "birth_date": "1973-05-02",
        "ecog": 1,
        "subtype": "HER2+",
        "bone_mets": True,
        "liver_mets": False,
        "marrow_involvement": False,
        "splenomegaly": False,
        "prior_radiotherapy": False,
    },
    "episode": {"episode_id": "E1", "index_date": "2025-03-10", "dose_mg": 7.5},
    "labs": [
        {"time": "2025-02-24T08:00:00", "test": "PLT", "value": 96, "unit": "10*9/L"},
        {"time": "2025-03-03T08:00:00", "test": "PLT", "value": 61, "unit": "10*9/L"},
        {"time": "2025-03-09T08:00:00", "test": "777-3", "value": 42, "unit": "10*3/uL"},
        {"time": "2025-03-09T08:00:00", "test": "718-7", "value": 10.4, "unit": "g/dL"},
        {"time": "2025-03-09T08:00:00", "test": "ANC", "value": 2.1, "unit": "10*9/L"},
        {"time": "2025-03-09T08:00:00", "test": "WBC", "value": 3.8, "unit": "10*9/L"},
        {"time": "2025-03-09T08:00:00", "test": "ALT", "value": 31, "unit": "U/L"},
        {"time": "2025-03-09T08:00:00", "test": "ALB", "value": 37, "unit": "g/L"},
        {"time": "2025-03-09T08:00:00", "test": "CREA", "value": 64, "unit": "umol/L"},
    ],
    "regimens": [
        {
            "start_date": "2024-10-01",
            "end_date": "2025-01-20",
            "drugs": ["docetaxel", "trastuzumab", "pertuzumab"],
            "line": 2,
            "cycle": 6,
        },
        {
            "start_date": "2025-03-01",
            "drugs": ["gemcitabine", "carboplatin"],
            "line": 3,
            "cycle": 2,
        },
    ],
}


def _one_of_episodes(schema: dict[str, Any]) -> None:
    """State the rule of `_one_episode_field` in the JSON schema: exactly one of `episode` and
    `episodes` is given (present and not null)."""
    schema["examples"] = [EXAMPLE_RECORD]
    schema["oneOf"] = [
        {
            "required": ["episode"],
            "properties": {"episode": {"type": "object"}, "episodes": {"type": "null"}},
        },
        {
            "required": ["episodes"],
            "properties": {"episodes": {"type": "array"}, "episode": {"type": "null"}},
        },
    ]
    schema["description"] = (
        "One patient: the patient row, one episode (or several), the labs and the regimens. "
        "Give exactly one of `episode` (an object) and `episodes` (a list)."
    )


class ScoreRequest(BaseModel):
    """One patient: the patient row, one episode (or several), the labs and the regimens."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=_one_of_episodes)

    patient: PatientIn
    episode: EpisodeIn | None = None
    episodes: list[EpisodeIn] | None = Field(None, min_length=1, max_length=100)
    labs: list[LabIn] = Field(default_factory=list, max_length=20000)
    regimens: list[RegimenIn] = Field(default_factory=list, max_length=1000)

    @model_validator(mode="after")
    def _one_episode_field(self) -> ScoreRequest:
        if (self.episode is None) == (self.episodes is None):
            raise ValueError("give exactly one of `episode` (one) or `episodes` (a list)")
        birth = self.patient.birth_date
        if birth is not None:
            for episode in self.all_episodes():
                if episode.index_date <= birth:
                    raise ValueError(
                        f"episode {episode.episode_id!r}: index_date is not after birth_date"
                    )
        ids = [episode.episode_id for episode in self.all_episodes()]
        if len(set(ids)) != len(ids):
            raise ValueError("episode_id repeats within the record")
        return self

    def all_episodes(self) -> list[EpisodeIn]:
        return [self.episode] if self.episode is not None else list(self.episodes or [])


class BatchRequest(BaseModel):
    """Several patients; each record is scored as if sent alone."""

    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"records": [EXAMPLE_RECORD]}]}
    )

    records: list[ScoreRequest] = Field(min_length=1)
    explain: bool = Field(True, description="Add SHAP contributions, factors and warnings.")


class Warning_(BaseModel):
    code: str = Field(description="missing_lab, stale_lab, out_of_range, unknown_drug, ...")
    message: str
    feature: str | None = None


class Factor(BaseModel):
    feature: str
    group: str
    value: float | None
    contribution: float = Field(description="Log-odds contribution (SHAP).")
    text: str = Field(description="Plain words, e.g. 'platelets 32 x10^9/L ...: lowers ...'.")


class ModelRef(BaseModel):
    name: str
    version: str
    label_definition: str


class ScoreOut(BaseModel):
    """The answer for one episode (DESIGN.md "One patient over HTTP")."""

    episode_id: str
    probability: float = Field(description="Calibrated probability of response.")
    interval: tuple[float, float] = Field(
        description="Interval for the probability at level `interval_level`: the range the same "
        "training procedure would plausibly give with unlimited data (patient bootstrap of the "
        "deployed procedure); not a range for the outcome. Wider where training data are sparse."
    )
    interval_level: float | None = Field(
        None,
        description="Nominal coverage of `interval` (e.g. 0.8); null for a model without "
        "bootstrap refits (its interval is the fold models' 10th-90th percentile).",
    )
    response_by_day: list[float] | None = Field(
        None,
        description="P(response by day d) for d = 1..horizon (item 0 is day 1); the last item "
        "equals `probability`. Null for a model without a time-to-response model.",
    )
    median_days_to_response: int | None = Field(
        None, description="First day `response_by_day` reaches 0.5; null if it never does."
    )
    band: str
    margin: float = Field(description="The booster's log-odds (before calibration).")
    base_value: float | None = Field(description="TreeSHAP bias term in log-odds.")
    contributions: dict[str, float] | None = Field(
        description="Feature -> log-odds; with base_value they add up to margin."
    )
    group_contributions: dict[str, float] | None
    top_factors: list[Factor] | None
    warnings: list[Warning_]
    model: ModelRef


class BatchOut(BaseModel):
    results: list[ScoreOut]


class ErrorItem(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class ErrorOut(BaseModel):
    detail: list[ErrorItem] | str
