"""Request and answer bodies of the scoring API: the cohort contract of one patient, as pydantic.

A request carries one patient's rows of the cohort contract (DESIGN.md "One patient over HTTP").
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
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]
Identifier = Annotated[str, Field(min_length=1, max_length=128)]

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


def _naive(value: Any) -> Any:
    if isinstance(value, dt.datetime) and value.tzinfo is not None:
        return value.replace(tzinfo=None)
    return value


class PatientIn(BaseModel):
    """The patient's row of the `patients` table; unknown extra columns are kept."""

    model_config = ConfigDict(extra="allow")

    patient_id: Identifier
    sex: Annotated[str, Field(max_length=32)] | None = None
    birth_date: dt.date | None = None
    race: str | None = None
    site: str | None = None
    ecog: int | None = Field(None, ge=0, le=4, description="ECOG performance status 0-4.")
    subtype: Annotated[str, Field(max_length=32)] | None = Field(
        None, description="HR+/HER2-, HER2+ or TNBC (another value is kept and warned)."
    )
    bone_mets: bool | None = None
    liver_mets: bool | None = None
    marrow_involvement: bool | None = None
    splenomegaly: bool | None = None
    prior_radiotherapy: bool | None = None


class EpisodeIn(BaseModel):
    """One CTIT episode; `index_date` is the first hetrombopag dose."""

    model_config = ConfigDict(extra="allow")

    episode_id: Identifier
    index_date: dt.date = Field(description="First hetrombopag dose (ISO 8601 date).")
    age_years: float | None = Field(None, ge=0, le=120, description="Else from birth_date.")
    dose_mg: float | None = Field(None, gt=0, le=100, description="Daily hetrombopag dose.")


class LabIn(BaseModel):
    """One lab result: `test` is a LOINC code or canonical alias (PLT, HGB, ...)."""

    model_config = ConfigDict(extra="allow")

    time: dt.datetime = Field(description="ISO 8601 date or datetime, local time.")
    test: Annotated[str, Field(min_length=1, max_length=64)]
    value: FiniteFloat
    unit: Annotated[str, Field(min_length=1, max_length=32)]

    _naive_time = field_validator("time", mode="after")(_naive)


class RegimenIn(BaseModel):
    """One anticancer regimen: generic drug names as a list (or one `;`-separated string)."""

    model_config = ConfigDict(extra="allow")

    start_date: dt.date
    end_date: dt.date | None = None
    drugs: Annotated[list[Annotated[str, Field(min_length=1)]], Field(min_length=1)]
    regimen: str | None = None
    line: int | None = Field(None, ge=1, le=30)
    cycle: int | None = Field(None, ge=1, le=200)

    @field_validator("drugs", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.split(";") if part.strip()]
        return value

    @model_validator(mode="after")
    def _ordered(self) -> RegimenIn:
        if self.end_date is not None and self.end_date < self.start_date:
            raise ValueError("end_date is before start_date")
        return self


class ScoreRequest(BaseModel):
    """One patient: the patient row, one episode (or several), the labs and the regimens."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [EXAMPLE_RECORD]})

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
