"""Shared request helpers for the handlers: the app key, JSON bodies, auth."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from client_api.forwarded import client_address
from homeserver.accounts.accounts import Requester
from homeserver.errors import MatrixError
from homeserver.server import HomeServer

HS = web.AppKey("homeserver", HomeServer)
CLIENT_V3 = "/_matrix/client/v3"
WHISPR = "/_matrix/client/unstable/org.whispr"


def hs(request: web.Request) -> HomeServer:
    return request.app[HS]


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


async def json_body(request: web.Request, *, allow_empty: bool = False) -> dict[str, Any]:
    raw = await request.read()
    if not raw.strip():
        if allow_empty:
            return {}
        raise MatrixError(400, "M_NOT_JSON", "Request body is empty; a JSON object was expected")
    try:
        body = json.loads(raw, parse_constant=_reject_constant)
    except (ValueError, UnicodeDecodeError):
        raise MatrixError(400, "M_NOT_JSON", "Content is not valid JSON") from None
    if not isinstance(body, dict):
        raise MatrixError(400, "M_BAD_JSON", "Content must be a JSON object")
    return body


def ok(body: Any = None, status: int = 200) -> web.Response:
    return web.json_response({} if body is None else body, status=status)


def access_token(request: web.Request) -> str | None:
    header = request.headers.get("Authorization")
    if header is not None:
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise MatrixError(401, "M_MISSING_TOKEN", "Authorization header must be 'Bearer <token>'")
        return token.strip()
    return request.query.get("access_token")


async def requester(request: web.Request) -> Requester:
    token = access_token(request)
    if not token:
        raise MatrixError(401, "M_MISSING_TOKEN", "Missing access token")
    return await hs(request).accounts.authenticate(token, client_ip(request))


def client_ip(request: web.Request) -> str:
    """The client's address: behind a trusted reverse proxy, from its X-Forwarded-For."""
    return client_address(request.remote, request.headers.getall("X-Forwarded-For", ()),
                          tuple(hs(request).config.listen.trusted_proxies))
