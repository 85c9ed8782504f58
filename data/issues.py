"""Problems found in a cohort: one `Issue` per problem, and the error that carries them all."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Issue:
    """One problem in the input: where it is (table, line, column) and what is wrong.

    `line` is the CSV line number (header = 1, first data row = 2) or, for Parquet files and
    in-memory records, the 0-based row index; it is `None` for problems of a whole table or file.
    `column` is `None` when the problem is not about one column. `value` is the offending value
    when the issue is about one value that callers act on (an unknown drug's name), so they
    never parse it back out of the message; `code` names the kind of warning for machines
    (`unknown_drug`, `improbable_value`). Neither is part of equality.
    """

    table: str
    line: int | None
    column: str | None
    message: str
    value: str | None = field(default=None, compare=False)
    code: str | None = field(default=None, compare=False)

    def as_dict(self) -> dict[str, object]:
        out: dict[str, object] = {
            "table": self.table,
            "line": self.line,
            "column": self.column,
            "message": self.message,
        }
        if self.value is not None:
            out["value"] = self.value
        if self.code is not None:
            out["code"] = self.code
        return out

    def __str__(self) -> str:
        where = self.table if self.line is None else f"{self.table}:{self.line}"
        return (
            f"{where}: {self.column}: {self.message}" if self.column else f"{where}: {self.message}"
        )


class CohortError(Exception):
    """Raised when a cohort does not meet the contract; lists every problem found."""

    def __init__(self, errors: Iterable[Issue], warnings: Iterable[Issue] = ()) -> None:
        self.errors: list[Issue] = list(errors)
        self.warnings: list[Issue] = list(warnings)
        super().__init__(self._render())

    def _render(self) -> str:
        count = len(self.errors)
        head = f"cohort has {count} error{'s' if count != 1 else ''}"
        return "\n".join([head + ":", *(f"  {issue}" for issue in self.errors)])

    def __str__(self) -> str:
        return self._render()
