"""Request helpers of the client face: access tokens, the requester, the client's address; and
the helpers both faces share (homeserver/web/requests.py), so handlers import one module."""

from __future__ import annotations


from typing import Any

from aiohttp import web

from client_api.forwarded import client_address
from homeserver.accounts.accounts import Requester
from homeserver.web.access_log import REQUESTER
from client_api.guest_access import check_guest_may_call
from homeserver.errors import MatrixError, forbidden, user_locked
from homeserver.web.requests import HS, hs, json_body, ok

__all__ = ["CLIENT_V3", "HS", "WHISPR", "access_token", "client_ip", "hs", "json_body", "ok", "requester"]

CLIENT_V3 = "/_matrix/client/v3"
WHISPR = "/_matrix/client/unstable/org.whispr"


def access_token(request: web.Request) -> str | None:
    header = request.headers.get("Authorization")
    if header is not None:
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise MatrixError(401, "M_MISSING_TOKEN", "Authorization header must be 'Bearer <token>'")
        return token.strip()
    return request.query.get("access_token")


async def requester(request: web.Request, *, locked_ok: bool = False) -> Requester:
    """The authenticated user; a locked account gets 401 M_USER_LOCKED (soft logout) everywhere
    but where `locked_ok` (logging out, as the spec lists)."""
    token = access_token(request)
    if not token:
        raise MatrixError(401, "M_MISSING_TOKEN", "Missing access token")
    who = await hs(request).accounts.authenticate(token, client_ip(request))
    request[REQUESTER] = who.user_id  # for the access log
    if who.locked and not locked_ok:
        raise user_locked()
    if who.is_guest:
        check_guest_may_call(request)
    return who


def client_ip(request: web.Request) -> str:
    """The client's address: behind a trusted reverse proxy, from its X-Forwarded-For."""
    return client_address(request.remote, request.headers.getall("X-Forwarded-For", ()),
                          tuple(hs(request).config.listen.trusted_proxies))


async def prove_password(request: web.Request, who: Requester, auth: object, bind: str, *,
                         limited: bool = False) -> None:
    """User-interactive auth with the requester's own password (an access token alone is not
    enough for what follows); `bind` ties the session to the operation. `limited`: each try also
    counts against the client's login rate limit."""
    server = hs(request)

    async def password(a: dict[str, Any]) -> dict[str, Any]:
        if limited:
            await server.limiter.check("login", client_ip(request))
        user = await server.login.check_password(a, client_ip(request))
        if user.user_id != who.user_id:
            raise forbidden("Invalid username or password")
        return {}

    await server.uia.run(auth, [["m.login.password"]], {"m.login.password": password}, bind=bind)
