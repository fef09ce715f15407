"""The app key and the request and response helpers every handler of either face uses."""

from __future__ import annotations

from typing import Any, overload

from aiohttp import web

from homeserver.errors import MatrixError, invalid_param
from homeserver.json_input import parse_json
from homeserver.web.json_output import json_response
from homeserver.server import HomeServer

HS = web.AppKey("homeserver", HomeServer)


def hs(request: web.Request) -> HomeServer:
    return request.app[HS]


async def json_body(request: web.Request, *, allow_empty: bool = False) -> dict[str, Any]:
    raw = await request.read()
    if not raw.strip():
        if allow_empty:
            return {}
        raise MatrixError(400, "M_NOT_JSON", "Request body is empty; a JSON object was expected")
    body = parse_json(raw)
    if not isinstance(body, dict):
        raise MatrixError(400, "M_BAD_JSON", "Content must be a JSON object")
    return body


def ok(body: Any = None, status: int = 200) -> web.Response:
    return json_response({} if body is None else body, status=status)


@overload
def int_param(request: web.Request, name: str, default: int) -> int: ...


@overload
def int_param(request: web.Request, name: str, default: None = None) -> int | None: ...


def int_param(request: web.Request, name: str, default: int | None = None) -> int | None:
    """An integer query parameter (400 M_INVALID_PARAM if it is not one)."""
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError:
        raise invalid_param(f"{name} must be an integer") from None


def bool_param(request: web.Request, name: str, default: bool) -> bool:
    raw = request.query.get(name)
    if raw is None:
        return default
    if raw not in ("true", "false"):
        raise invalid_param(f"{name} must be true or false")
    return raw == "true"
