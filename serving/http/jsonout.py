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

from typing import Any

import numpy as np
import orjson
from starlette.responses import JSONResponse

#: numpy numbers and arrays as JSON numbers; int, float, bool and None keys as strings (as `json`).
_OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS


def dumps(content: Any, *, sort_keys: bool = False) -> bytes:
    """`content` as compact UTF-8 JSON; raises ValueError for NaN or an infinity (anywhere) and
    TypeError for a value JSON cannot hold, as `json.dumps(..., allow_nan=False)` does."""
    options = _OPTIONS | orjson.OPT_SORT_KEYS if sort_keys else _OPTIONS
    try:
        raw = orjson.dumps(content, option=options)
    except orjson.JSONEncodeError as exc:
        raise TypeError(f"not JSON serialisable: {exc}") from None
    if b"null" in raw and _has_non_finite(content):
        raise ValueError("NaN or an infinity is not valid JSON")
    return raw


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
        elif isinstance(value, list | tuple):
            pending.extend(value)
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
