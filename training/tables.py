"""Table 1: per-variable summary of the labelled episodes, overall and by response."""

from __future__ import annotations

import numpy as np
import pandas as pd

from features.registry import feature_label, spec_of, unit_text

COLUMNS = ["variable", "level", "overall", "responders", "non_responders", "missing"]


def _numeric_cell(values: pd.Series) -> str:
    values = values.dropna()
    if values.empty:
        return "-"
    q1, q2, q3 = np.percentile(values.astype(float), [25, 50, 75])
    return f"{q2:.3g} [{q1:.3g}, {q3:.3g}]"


def _count_cell(count: int, total: int) -> str:
    return f"{count} ({100 * count / total:.1f}%)" if total else "0"


def _is_text(values: pd.Series) -> bool:
    """Object or string dtype (pandas 3 reads text as `str`, pandas 2 as `object`)."""
    return values.dtype == object or isinstance(values.dtype, pd.StringDtype)


def _is_categorical(values: pd.Series) -> bool:
    non_missing = values.dropna()
    if _is_text(values) or isinstance(values.dtype, pd.CategoricalDtype):
        return True
    if pd.api.types.is_bool_dtype(values):
        return True
    return non_missing.nunique() <= 2 and set(non_missing.unique()) <= {0, 1}


def _is_binary(values: pd.Series) -> bool:
    non_missing = values.dropna()
    if pd.api.types.is_bool_dtype(values):
        return True
    if _is_text(values):
        return set(non_missing.astype(str).str.lower().unique()) <= {"true", "false", "1", "0"}
    return set(non_missing.unique()) <= {0, 1}


def _name(column: str, with_unit: bool) -> str:
    """A variable's clinical name (features.registry) and, for numbers, its unit."""
    try:
        unit = unit_text(spec_of(column).unit)
    except KeyError:
        unit = ""
    return feature_label(column) + (f" ({unit})" if with_unit and unit else "")


def table_one(raw_features: pd.DataFrame, y: pd.Series, max_levels: int = 12) -> pd.DataFrame:
    """Median [IQR] for numeric variables, n (%) for categorical levels (one row "yes" for a
    yes/no variable), and missingness; variables by their clinical names.

    Args:
        raw_features: one row per labelled episode, index or column `episode_id`.
        y: response (0/1), index `episode_id`.
    """
    frame = raw_features.set_index("episode_id") if "episode_id" in raw_features else raw_features
    frame = frame.loc[y.index]
    y = y.astype(int)
    responders = frame[y.to_numpy() == 1]
    non_responders = frame[y.to_numpy() == 0]
    rows = [
        {
            "variable": "episodes",
            "level": "",
            "overall": str(len(frame)),
            "responders": str(len(responders)),
            "non_responders": str(len(non_responders)),
            "missing": "",
        }
    ]
    for column in frame.columns:
        values = frame[column]
        n_missing = int(values.isna().sum())
        missing = _count_cell(n_missing, len(values))
        if _is_binary(values) and not values.dropna().empty:
            yes = values.dropna().astype(str).str.lower().isin(["1", "1.0", "true"])
            positive = set(values.dropna()[yes.to_numpy()].astype(str))

            def count_yes(part: pd.Series, positive: set[str] = positive) -> int:
                return int(part.dropna().astype(str).isin(positive).sum())

            rows.append(
                {
                    "variable": _name(column, with_unit=False),
                    "level": "yes",
                    "overall": _count_cell(count_yes(values), len(values)),
                    "responders": _count_cell(count_yes(responders[column]), len(responders)),
                    "non_responders": _count_cell(
                        count_yes(non_responders[column]), len(non_responders)
                    ),
                    "missing": missing,
                }
            )
        elif _is_categorical(values):
            levels = values.dropna().astype(str).value_counts()
            shown = list(levels.index[:max_levels])
            for i, level in enumerate(shown):
                rows.append(
                    {
                        "variable": _name(column, with_unit=False),
                        "level": level,
                        "overall": _count_cell(int(levels[level]), len(values)),
                        "responders": _count_cell(
                            int((responders[column].astype(str) == level).sum()), len(responders)
                        ),
                        "non_responders": _count_cell(
                            int((non_responders[column].astype(str) == level).sum()),
                            len(non_responders),
                        ),
                        "missing": missing if i == 0 else "",
                    }
                )
            if len(levels) > max_levels:
                other = int(levels.iloc[max_levels:].sum())
                rows.append(
                    {
                        "variable": _name(column, with_unit=False),
                        "level": f"({len(levels) - max_levels} other levels)",
                        "overall": _count_cell(other, len(values)),
                        "responders": "",
                        "non_responders": "",
                        "missing": "",
                    }
                )
            if levels.empty:
                rows.append(
                    {
                        "variable": _name(column, with_unit=False),
                        "level": "",
                        "overall": "-",
                        "responders": "-",
                        "non_responders": "-",
                        "missing": missing,
                    }
                )
        else:
            rows.append(
                {
                    "variable": _name(column, with_unit=True),
                    "level": "median [IQR]",
                    "overall": _numeric_cell(values),
                    "responders": _numeric_cell(responders[column]),
                    "non_responders": _numeric_cell(non_responders[column]),
                    "missing": missing,
                }
            )
    return pd.DataFrame(rows, columns=COLUMNS)
