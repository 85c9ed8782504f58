"""Patient records (the scoring JSON of DESIGN.md) to cohort-contract tables, and back to paths.

A record is one patient's rows of the cohort contract: `patient`, `episode` (or `episodes`), `labs`
and `regimens`. Several records become one set of tables so that a batch goes through the very code
that loads a training cohort. Inside a batch, patients and episodes get positional ids (`r0`,
`r0e0`, ...): records never mix even when two carry the same patient id, a score cannot depend on
an identifier, and no raw identifier reaches the feature code or its messages.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from data.issues import CohortError, Issue
from serving.request.schemas import ScoreRequest


class RecordError(ValueError):
    """A record does not meet the contract; `errors` holds one `{loc, msg, type}` per problem."""

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        self.errors = errors
        lines = [f"{'.'.join(str(part) for part in e['loc'])}: {e['msg']}" for e in errors]
        count = len(errors)
        super().__init__(
            f"record has {count} error{'s' if count != 1 else ''}:\n  " + "\n  ".join(lines)
        )


def validate_record(record: Any, prefix: Sequence[str | int] = ()) -> ScoreRequest:
    """The record as a `ScoreRequest`, or a `RecordError` naming the path of every problem."""
    if isinstance(record, ScoreRequest):
        return record
    try:
        return ScoreRequest.model_validate(record)
    except ValidationError as exc:
        raise RecordError(
            [
                {"loc": [*prefix, *error["loc"]], "msg": error["msg"], "type": error["type"]}
                for error in exc.errors(include_url=False)
            ]
        ) from None


def patient_record_to_tables(record: dict[str, Any] | ScoreRequest) -> dict[str, list[dict]]:
    """The cohort-contract tables of one patient record, keeping its own identifiers."""
    request = validate_record(record)
    return RecordBatch.from_requests([request], keep_ids=True).tables


@dataclass(frozen=True)
class EpisodeRef:
    """Where an episode of a batch came from, and the id the caller gave it."""

    record_index: int
    episode_id: str
    internal_id: str
    index_date: dt.date


@dataclass
class RecordBatch:
    """Contract tables of several records, with the origin of every row."""

    tables: dict[str, list[dict]]
    origins: dict[str, list[tuple[int, tuple[str | int, ...]]]]
    episodes: list[EpisodeRef]
    patient_ids: list[str]
    warnings: dict[int, list[dict[str, Any]]] = field(default_factory=dict)

    @classmethod
    def from_requests(cls, requests: Sequence[ScoreRequest], keep_ids: bool = False) -> RecordBatch:
        """Tables of validated requests; positional ids unless `keep_ids` (one record only)."""
        tables: dict[str, list[dict]] = {"patients": [], "episodes": [], "labs": [], "regimens": []}
        origins: dict[str, list[tuple[int, tuple[str | int, ...]]]] = {t: [] for t in tables}
        episodes: list[EpisodeRef] = []
        warnings: dict[int, list[dict[str, Any]]] = {}
        for i, request in enumerate(requests):
            patient = request.patient
            pid = patient.patient_id if keep_ids else f"r{i}"
            row = {"patient_id": pid}
            for name, value in patient:
                if name != "patient_id" and value is not None:
                    row[name] = value.isoformat() if isinstance(value, dt.date) else value
            tables["patients"].append(row)
            origins["patients"].append((i, ("patient",)))
            for j, episode in enumerate(request.all_episodes()):
                eid = episode.episode_id if keep_ids else f"r{i}e{j}"
                core = {
                    "episode_id": eid,
                    "patient_id": pid,
                    "index_date": episode.index_date.isoformat(),
                    "age_years": episode.age_years,
                    "dose_mg": episode.dose_mg,
                }
                # Extra fields stay even when null (a model's extra_static column must exist),
                # and never override a contract column.
                extras = {k: v for k, v in (episode.model_extra or {}).items() if k not in core}
                tables["episodes"].append({**extras, **_present(core)})
                origins["episodes"].append(
                    (i, ("episode",) if request.episode is not None else ("episodes", j))
                )
                episodes.append(EpisodeRef(i, episode.episode_id, eid, episode.index_date))
            for k, lab in enumerate(request.labs):
                row = {
                    "patient_id": pid,
                    "time": lab.time.isoformat(),
                    "test": lab.test,
                    "value": lab.value,
                    "unit": lab.unit,
                }
                row = {**(lab.model_extra or {}), **row}  # extras never override a column
                tables["labs"].append(row)
                origins["labs"].append((i, ("labs", k)))
            for k, regimen in enumerate(request.regimens):
                row = {
                    "patient_id": pid,
                    "start_date": regimen.start_date.isoformat(),
                    "end_date": regimen.end_date.isoformat() if regimen.end_date else None,
                    "drugs": ";".join(regimen.drugs),
                    "regimen": regimen.regimen,
                    "line": regimen.line,
                    "cycle": regimen.cycle,
                }
                row = {**(regimen.model_extra or {}), **row}  # extras never override a column
                tables["regimens"].append(_present(row))
                origins["regimens"].append((i, ("regimens", k)))
            warnings[i] = _record_warnings(request)
        patient_ids = [request.patient.patient_id for request in requests]
        return cls(tables, origins, episodes, patient_ids, warnings)

    def locate(self, issue: Issue) -> tuple[int | None, tuple[str | int, ...]]:
        """(record index, path inside the record) of a cohort issue found in these tables."""
        rows = self.origins.get(issue.table)
        if rows is None or issue.line is None or not 0 <= issue.line < len(rows):
            return None, ()
        record_index, path = rows[issue.line]
        column = issue.column
        if column is None:
            return record_index, path
        if column == "patient_id" and issue.table != "patients":
            return record_index, ("patient", "patient_id")
        return record_index, (*path, column)

    def errors_of(self, exc: CohortError, batch: bool) -> RecordError:
        """A `RecordError` whose paths point into the records, from a cohort-loader error.

        In a batch, paths start with the record's position.
        """
        errors = []
        for issue in exc.errors:
            record_index, path = self.locate(issue)
            if record_index is None:
                loc: list[str | int] = [issue.table]
            elif batch:
                loc = [record_index, *path]
            else:
                loc = list(path)
            errors.append({"loc": loc, "msg": issue.message, "type": "value_error"})
        return RecordError(errors)

    def issue_warnings(self, issues: Iterable[Issue]) -> None:
        """File loader warnings (unknown tests, unknown subtypes, ...) under the record whose row
        they name, code `input` (unknown drugs are the answers' own, by episode)."""
        for issue in issues:
            record_index, path = self.locate(issue)
            if record_index is None:
                continue
            self.warnings.setdefault(record_index, []).append(
                {"code": issue.code or "input", "message": issue.message, "loc": list(path)}
            )


def _present(row: dict[str, Any]) -> dict[str, Any]:
    # Absent rather than None: fewer all-empty columns for the loader to check (faster).
    return {key: value for key, value in row.items() if value is not None}


def _record_warnings(request: ScoreRequest) -> list[dict[str, Any]]:
    """Warnings about a record that the loader does not give: rows after the index date."""
    out: list[dict[str, Any]] = []
    index_dates = [episode.index_date for episode in request.all_episodes()]
    last_index = max(index_dates)
    late = sum(1 for lab in request.labs if lab.time.date() > last_index)
    if late:
        out.append(
            {
                "code": "labs_after_index",
                "message": f"{late} lab result{'s' if late != 1 else ''} dated after the index "
                "date not used (only data up to the index date enter the model)",
                "loc": ["labs"],
            }
        )
    for k, regimen in enumerate(request.regimens):
        if regimen.start_date > last_index:
            out.append(
                {
                    "code": "regimen_after_index",
                    "message": f"regimen {', '.join(regimen.drugs)} starts on "
                    f"{regimen.start_date.isoformat()}, after the index date; not used",
                    "loc": ["regimens", k, "start_date"],
                }
            )
    return out
