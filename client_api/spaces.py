"""Spaces: a space's hierarchy and room summaries (Client-Server API v1)."""

from __future__ import annotations

from aiohttp import web

from client_api.http import hs, ok, requester
from homeserver.web.requests import bool_param, int_param

CLIENT_V1 = "/_matrix/client/v1"


async def hierarchy(request: web.Request) -> web.Response:
    who = await requester(request)
    return ok(await hs(request).spaces.hierarchy(
        who.user_id, request.match_info["room_id"], bool_param(request, "suggested_only", False),
        int_param(request, "limit"), int_param(request, "max_depth"), request.query.get("from")))


async def room_summary(request: web.Request) -> web.Response:
    who = await requester(request)
    return ok(await hs(request).spaces.room_summary(who.user_id, request.match_info["room_id_or_alias"],
                                                    request.query.getall("via", [])))


def setup(app: web.Application) -> None:
    app.router.add_get(f"{CLIENT_V1}/rooms/{{room_id}}/hierarchy", hierarchy)
    app.router.add_get(f"{CLIENT_V1}/room_summary/{{room_id_or_alias}}", room_summary)
