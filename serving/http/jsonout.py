"""JSON out: answers and audit rows rendered by orjson (a C extension) instead of `json.dumps`.

One answer with its explanation is about 3.6 kB of JSON. The standard library renders it in
38 µs on this project's development VM (twice that after a scoring has filled the CPU caches),
orjson in 2-4 µs and `dumps` below, with its check for NaN, in 9-11 µs; a served request
renders it twice (the answer, and the output kept in the audit row). Numbers keep their
shortest round-trip digits, as with `json`, though not always the same notation (`1e-05` comes
out as `0.00001`: the same number to any JSON reader); text is UTF-8 rather than ASCII escapes.

orjson writes NaN and the infinities as `null`, where `json.dumps(..., allow_nan=False)`
(Starlette's `JSONResponse`) refuses them. `dumps` refuses them too, so no answer carries a
number that is not one silently turned into null: a NaN is a defect of the code that built the
answer, and the request fails as an internal error, before its audit row is written.
"""

from __future__ import annotations

import json
from enum import Enum
from typing import Any

import numpy as np
import orjson
from starlette.responses import JSONResponse

#: numpy numbers and arrays as JSON numbers; int, float, bool and None keys as strings (as
#: `json`). Dataclasses and datetimes, which `json` refuses, are not rendered natively either:
#: they go to the fallback, which refuses them.
_OPTIONS = (
    orjson.OPT_SERIALIZE_NUMPY
    | orjson.OPT_NON_STR_KEYS
    | orjson.OPT_PASSTHROUGH_DATACLASS
    | orjson.OPT_PASSTHROUGH_DATETIME
)


def dumps(content: Any, *, sort_keys: bool = False) -> bytes:
    """`content` as compact UTF-8 JSON; raises ValueError for NaN or an infinity (anywhere) and
    TypeError for a value JSON cannot hold, as `json.dumps(..., allow_nan=False)` does.

    What orjson refuses but `json` holds (integers beyond 64 bits, float subclasses other than
    numpy's, named tuples) is rendered by `json` instead, so nothing `json` accepted fails here.
    """
    options = _OPTIONS | orjson.OPT_SORT_KEYS if sort_keys else _OPTIONS
    try:
        raw = orjson.dumps(content, option=options)
    except orjson.JSONEncodeError:
        return _standard(content, sort_keys)
    if b"null" in raw and _has_non_finite(content):
        raise ValueError("NaN or an infinity is not valid JSON")
    return raw


def _standard(content: Any, sort_keys: bool) -> bytes:
    """The standard library's rendering, compact and UTF-8 as `dumps`'s; its refusals kept."""
    try:
        text = json.dumps(
            content, allow_nan=False, ensure_ascii=False, separators=(",", ":"), sort_keys=sort_keys
        )
    except TypeError as exc:
        raise TypeError(f"not JSON serialisable: {exc}") from None
    except RecursionError:
        raise ValueError("nested too deeply to render as JSON") from None
    return text.encode("utf-8")


def _has_non_finite(content: Any) -> bool:
    """Whether a NaN or an infinity hides in `content` (orjson wrote it as null)."""
    pending = [content]
    while pending:
        value = pending.pop()
        kind = type(value)
        if kind is float:
            if value - value != 0.0:  # NaN and the infinities: x - x is NaN, never 0.0
                return True
        elif kind in _SCALARS:
            continue
        elif isinstance(value, dict):
            pending.extend(value.values())
            pending.extend(key for key in value if isinstance(key, float))  # {nan: 1}
        elif isinstance(value, list | tuple):
            pending.extend(value)
        elif isinstance(value, Enum):
            pending.append(value.value)
        elif isinstance(value, _NUMPY_OR_FLOAT) and not np.isfinite(value).all():
            return True
    return False


_SCALARS = frozenset({str, int, bool, type(None)})
#: float subclasses (numpy.float64) and numpy numbers or arrays: numpy decides.
_NUMPY_OR_FLOAT = (float, np.ndarray, np.floating, np.complexfloating)


class FastJSONResponse(JSONResponse):
    """`JSONResponse` rendered by `dumps` (same media type, status and headers)."""

    def render(self, content: Any) -> bytes:
        return dumps(content)
