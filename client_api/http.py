"""Shared request helpers for the handlers: the app key, JSON bodies, auth."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from client_api.forwarded import client_address
from homeserver.accounts.accounts import Requester
from client_api.access_log import REQUESTER
from client_api.guest_access import check_guest_may_call
from homeserver.errors import MatrixError
from homeserver.json_input import parse_json
from homeserver.server import HomeServer

HS = web.AppKey("homeserver", HomeServer)
CLIENT_V3 = "/_matrix/client/v3"
WHISPR = "/_matrix/client/unstable/org.whispr"


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
    who = await hs(request).accounts.authenticate(token, client_ip(request))
    request[REQUESTER] = who.user_id  # for the access log
    if who.is_guest:
        check_guest_may_call(request)
    return who


def client_ip(request: web.Request) -> str:
    """The client's address: behind a trusted reverse proxy, from its X-Forwarded-For."""
    return client_address(request.remote, request.headers.getall("X-Forwarded-For", ()),
                          tuple(hs(request).config.listen.trusted_proxies))
