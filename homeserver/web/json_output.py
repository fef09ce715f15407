"""JSON for every response body, on both faces.

orjson writes a response about 15x faster than the standard library (a /keys/query answer for 50
users: 15 us against 260 us). It refuses a few values the standard library accepts, integers beyond
64 bits among them, which a peer can still smuggle into stored content; such a body falls back to
the standard library rather than becoming a 500.
"""

from __future__ import annotations

import json
from typing import Any

import orjson
from aiohttp import web

_OPTIONS = orjson.OPT_NON_STR_KEYS


def encode_json(body: Any) -> bytes:
    try:
        return orjson.dumps(body, option=_OPTIONS)
    except (orjson.JSONEncodeError, TypeError):
        return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=encode_json(body), status=status, headers=headers, content_type="application/json")
