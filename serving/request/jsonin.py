"""Strict JSON for every entry point (HTTP bodies, `ctit score` files): what `json.loads` lets by.

Python's `json` module reads `NaN`, `Infinity` and `1e309` (as infinity), lets the last of two
equal keys win, keeps unpaired UTF-16 surrogates (`"\\ud800"`) in strings, and recurses once per
nesting level (a deeply nested body raises `RecursionError`). `loads_strict` refuses all of these
with a `JsonRefused` that names the path of the offending value where there is one, and never
quotes the value itself (it may be patient data).

The depth is measured on the raw bytes before parsing (strings removed by one regular
expression, every other byte but brackets by `bytes.translate`, the brackets counted with
numpy), so no parser ever recurses past `MAX_DEPTH`. A text with no more than `MAX_DEPTH`
opening brackets in all cannot nest deeper, and skips the measure.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

import numpy as np

#: Deepest nesting of arrays and objects accepted. A FHIR Bundle of Observations nests about 10
#: levels; a CDS Hooks request with draft orders about 12.
MAX_DEPTH = 64

_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")
_NOT_BRACKETS = bytes(range(256)).translate(None, b"[]{}")


class JsonRefused(ValueError):
    """A JSON text is refused: `status` 400 (not JSON, too deep) or 422 (a value), with a path."""

    def __init__(self, status: int, loc: list[str | int], msg: str, kind: str) -> None:
        super().__init__(f"{'.'.join(str(p) for p in loc) or 'body'}: {msg}")
        self.status = status
        self.loc = loc
        self.msg = msg
        self.kind = kind

    def error(self, prefix: tuple[str | int, ...] = ("body",)) -> dict[str, Any]:
        """The refusal as one `{loc, msg, type}` item of a 4xx answer's `detail`."""
        return {"loc": [*prefix, *self.loc], "msg": self.msg, "type": self.kind}


def nesting_depth(raw: bytes) -> int:
    """Deepest nesting of `[` and `{` outside strings (exact for well-formed JSON)."""
    brackets = _STRING.sub(b"", raw).translate(None, _NOT_BRACKETS)
    if not brackets:
        return 0
    # `[` 0x5B and `{` 0x7B have bit 1 set, `]` 0x5D and `}` 0x7D do not: +1 opens, -1 closes.
    step = (np.frombuffer(brackets, dtype=np.uint8) & 2).astype(np.int8) - 1
    return int(np.cumsum(step, dtype=np.int64).max(initial=0))


class _NonFinite:
    """Stands in for a NaN, an infinity or an out-of-range number until its path is known."""

    __slots__ = ()


_NON_FINITE = _NonFinite()


def loads_strict(raw: bytes | str, max_depth: int = MAX_DEPTH) -> Any:
    """Parse JSON, refusing deep nesting, duplicate keys, non-finite numbers and lone surrogates.

    Raises:
        JsonRefused: 400 for text that is not JSON or nests deeper than `max_depth`; 422 (with
            the path) for a duplicate key, a non-finite number or an unpaired surrogate.
    """
    data = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else raw
    # No JSON nests deeper than it has `[` and `{` bytes: one patient's record usually has
    # fewer than `max_depth` of them, and counting them costs ~1 us against ~45 us for the depth.
    opens = data.count(b"[") + data.count(b"{")
    if opens > max_depth and nesting_depth(data) > max_depth:
        raise JsonRefused(400, [], f"JSON nested deeper than {max_depth} levels", "json_too_deep")
    watch = _Watch()
    obj = _parse(data, watch)
    _refuse_duplicate_key(obj, watch.duplicate)
    if watch.non_finite:
        _refuse_non_finite(obj)
    if _SURROGATE_ESCAPE.search(data):
        _refuse_unpaired_surrogate(obj)
    return obj


class _Watch:
    """The parser's hooks: notes the first duplicate key and whether a number was not finite
    (NaN, Infinity, out of range; each left as `_NON_FINITE` until its path is found)."""

    def __init__(self) -> None:
        self.non_finite = False
        self.duplicate: str | None = None

    def number(self, text: str) -> Any:
        value = float(text)
        if math.isfinite(value):
            return value
        self.non_finite = True
        return _NON_FINITE

    def constant(self, _text: str) -> Any:
        self.non_finite = True
        return _NON_FINITE

    def pairs(self, items: list[tuple[str, Any]]) -> dict[str, Any]:
        out = dict(items)
        if len(out) != len(items) and self.duplicate is None:
            seen: set[str] = set()
            for key, _ in items:
                if key in seen:
                    self.duplicate = key
                    break
                seen.add(key)
        return out


def _parse(data: bytes, watch: _Watch) -> Any:
    """`json.loads` with `watch`'s hooks; 400 for text that is not JSON."""
    try:
        return json.loads(
            data,
            parse_float=watch.number,
            parse_constant=watch.constant,
            object_pairs_hook=watch.pairs,
        )
    except RecursionError:  # only when max_depth is set above the interpreter's limit
        raise JsonRefused(400, [], "JSON nested too deeply", "json_too_deep") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
        reason = exc.msg if isinstance(exc, json.JSONDecodeError) else "not UTF-8 text"
        raise JsonRefused(400, [], f"not valid JSON ({reason})", "json_invalid") from None


def _refuse_duplicate_key(obj: Any, duplicate: str | None) -> None:
    """422 at the object holding `duplicate` (the first key seen twice in one object), if any."""
    if duplicate is None:
        return
    key = _safe(str(duplicate))[:64]
    holder = _find(obj, lambda v: isinstance(v, dict) and duplicate in v)
    loc = [*(holder or []), key]
    raise JsonRefused(422, loc, f"duplicate key {key!r} in one JSON object", "duplicate_key")


def _refuse_non_finite(obj: Any) -> None:
    """422 at the first non-finite number."""
    loc = _find(obj, lambda v: v is _NON_FINITE) or []
    raise JsonRefused(
        422,
        loc,
        "not a finite number (NaN, Infinity and numbers beyond 1.8e308 are refused)",
        "finite_number",
    )


def _refuse_unpaired_surrogate(obj: Any) -> None:
    """422 at the first key or string holding an unpaired surrogate (escapes may be paired)."""
    loc = _find(obj, _unpaired, keys=True)
    if loc is not None:
        raise JsonRefused(
            422, loc, "text holds an unpaired UTF-16 surrogate (\\ud800-\\udfff)", "string_type"
        )


def _unpaired(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _find(obj: Any, bad: Any, keys: bool = False) -> list[str | int] | None:
    """Path of the first value (or, with `keys`, key) for which `bad` holds; iterative."""
    stack: list[tuple[Any, list[str | int]]] = [(obj, [])]
    while stack:
        value, path = stack.pop()
        if bad(value):
            return path
        if isinstance(value, dict):
            for key, item in reversed(list(value.items())):
                if keys and bad(key):
                    return [*path, _safe(key)]
                stack.append((item, [*path, _safe(key)]))
        elif isinstance(value, list):
            for i in range(len(value) - 1, -1, -1):
                stack.append((value[i], [*path, i]))
    return None


def _safe(text: str) -> str:
    """Text that can be encoded as UTF-8 (unpaired surrogates replaced)."""
    return text.encode("utf-8", "replace").decode("utf-8")
