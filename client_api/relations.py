"""Relations: a parent event's children (GET /relations) and a room's threads (GET /threads)."""

from __future__ import annotations

from aiohttp import web

from client_api.http import hs, ok, requester
from homeserver.web.requests import int_param

V1 = "/_matrix/client/v1/rooms/{room_id}"


async def relations(request: web.Request) -> web.Response:
    who = await requester(request)
    q, path = request.query, request.match_info
    return ok(await hs(request).relations.children(
        who, path["room_id"], path["event_id"], rel_type=path.get("rel_type"), event_type=path.get("event_type"),
        from_token=q.get("from"), to_token=q.get("to"), limit=int_param(request, "limit"),
        direction=q.get("dir", "b"), recurse=q.get("recurse")))


async def threads(request: web.Request) -> web.Response:
    who = await requester(request)
    return ok(await hs(request).relations.threads(
        who, request.match_info["room_id"], request.query.get("include"), request.query.get("from"),
        int_param(request, "limit")))


def setup(app: web.Application) -> None:
    add = app.router
    add.add_get(f"{V1}/relations/{{event_id}}", relations)
    add.add_get(f"{V1}/relations/{{event_id}}/{{rel_type}}", relations)
    add.add_get(f"{V1}/relations/{{event_id}}/{{rel_type}}/{{event_type}}", relations)
    add.add_get(f"{V1}/threads", threads)
