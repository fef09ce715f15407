"""JSON from the outside: one parser for every request body, both faces, and canonical JSON's values.

Whatever arrives is either a value we can store, sign and send on (UTF-8 without lone surrogates,
nesting bounded, finite numbers) or a Matrix error: never a RecursionError or a UnicodeEncodeError
further down. Event content must also keep to canonical JSON's number space (integers within
±(2^53−1), no floats: room versions 6 and later), or copies of a room on other servers would drift.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

import orjson

from homeserver.errors import MatrixError
from storage.json_text import has_long_digit_run

# Deeper than any real body; well inside Python's recursion limit for everything that walks it.
MAX_JSON_DEPTH = 100
# Canonical JSON's integer range (the spec's [-(2**53)+1, (2**53)-1]).
MAX_SAFE_INTEGER = 2**53 - 1
# A JSON escape that may stand for half of a surrogate pair.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
# orjson parses a body about 7x faster than the standard library, and refuses everything it does
# (invalid UTF-8, lone surrogates, NaN, infinities) but two things: it reads an integer beyond 64
# bits as a float, and it nests up to 1,024 levels. A body with a run of 16 digits (which any
# integer outside ±(2^53−1) has) takes the standard library's path, as does one orjson refuses,
# so the error is the same as ever; depth is checked after either.


class NonCanonicalNumber(ValueError):
    """An integer outside canonical JSON's range, or a number that is not finite."""


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise NonCanonicalNumber(f"{text} is out of range")
    return value


def _safe_int(text: str) -> int:
    value = int(text)
    if not -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER:
        raise NonCanonicalNumber(f"integer {text} is outside ±(2^53-1)")
    return value


def parse_json(raw: bytes, *, safe_integers: bool = True) -> Any:
    """Parse a request body. M_NOT_JSON when it is not JSON; M_BAD_JSON when it is JSON we refuse:
    nested deeper than MAX_JSON_DEPTH, a lone surrogate, a number that is not finite, or (with
    `safe_integers`, the client face) an integer outside ±(2^53−1). Federation bodies keep big
    integers so one bad PDU is dropped alone (federation.ingest.check_format), not its transaction."""
    if not has_long_digit_run(raw):
        try:
            value = orjson.loads(raw)
        except orjson.JSONDecodeError:
            pass  # the standard library's path says what is wrong
        else:
            _check_depth(raw, value)
            return value
    hooks: dict[str, Any] = {"parse_constant": _reject_constant, "parse_float": _finite_float}
    if safe_integers:
        hooks["parse_int"] = _safe_int
    try:
        value = json.loads(raw, **hooks)
    except RecursionError:
        raise MatrixError(400, "M_BAD_JSON", f"JSON is nested deeper than {MAX_JSON_DEPTH} levels") from None
    except NonCanonicalNumber as e:
        raise MatrixError(400, "M_BAD_JSON", f"Content is not canonical JSON: {e}") from None
    except (ValueError, UnicodeDecodeError):
        raise MatrixError(400, "M_NOT_JSON", "Content is not valid JSON") from None
    _check_depth(raw, value)
    if _SURROGATE_ESCAPE.search(raw) is not None and _has_lone_surrogate(value):
        raise MatrixError(400, "M_BAD_JSON", "Content holds a lone UTF-16 surrogate, which is not Unicode text")
    return value


def _check_depth(raw: bytes, value: Any) -> None:
    """M_BAD_JSON when nested deeper than MAX_JSON_DEPTH; the value is walked only when the raw
    bytes hold enough brackets for that."""
    if raw.count(b"[") + raw.count(b"{") > MAX_JSON_DEPTH and _depth(value) > MAX_JSON_DEPTH:
        raise MatrixError(400, "M_BAD_JSON", f"JSON is nested deeper than {MAX_JSON_DEPTH} levels")


def _depth(value: Any) -> int:
    """Levels of nesting (a scalar is 0), counted up to just past MAX_JSON_DEPTH: one level of
    containers at a time, in comprehensions rather than a stack of pairs (4x faster)."""
    level = [value] if type(value) in (dict, list) else []
    depth = 0
    while level and depth <= MAX_JSON_DEPTH:
        depth += 1
        level = [child for item in level for child in (item.values() if type(item) is dict else item)
                 if type(child) is dict or type(child) is list]
    return depth


def _has_lone_surrogate(value: Any) -> bool:
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def non_canonical_reason(value: Any) -> str | None:
    """Why `value` (event content) is not canonical JSON's value space, or None when it is."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, float):
            return "floats are not allowed in canonical JSON"
        elif isinstance(item, int) and not isinstance(item, bool) and not -MAX_SAFE_INTEGER <= item <= MAX_SAFE_INTEGER:
            return f"integer {item} is outside ±(2^53-1)"
    return None
