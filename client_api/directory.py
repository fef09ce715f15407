"""Room aliases, the public room directory and user directory search."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from client_api.http import CLIENT_V3, hs, json_body, ok, requester
from homeserver.errors import MatrixError


async def put_alias(request: web.Request) -> web.Response:
    who = await requester(request)
    body = await json_body(request)
    await hs(request).directory.create_alias(who.user_id, request.match_info["alias"], body.get("room_id"))
    return ok()


async def get_alias(request: web.Request) -> web.Response:
    return ok(await hs(request).directory.resolve(request.match_info["alias"]))


async def delete_alias(request: web.Request) -> web.Response:
    who = await requester(request)
    await hs(request).directory.delete_alias(who.user_id, request.match_info["alias"])
    return ok()


async def get_visibility(request: web.Request) -> web.Response:
    return ok({"visibility": await hs(request).directory.visibility(request.match_info["room_id"])})


async def put_visibility(request: web.Request) -> web.Response:
    who = await requester(request)
    body = await json_body(request)
    await hs(request).directory.set_visibility(who.user_id, request.match_info["room_id"], body.get("visibility"))
    return ok()


async def public_rooms(request: web.Request) -> web.Response:
    server = request.query.get("server")
    if server and server != hs(request).config.server_name:
        return await _other_servers_rooms(request, server)
    if request.method == "POST":
        await requester(request)
        body = await json_body(request, allow_empty=True)
        search = body.get("filter", {}) or {}
        term = search.get("generic_search_term") if isinstance(search, dict) else None
        limit, since = body.get("limit"), body.get("since")
    else:
        term = None
        raw_limit = request.query.get("limit")
        try:
            limit = int(raw_limit) if raw_limit is not None else None
        except ValueError:
            raise MatrixError(400, "M_INVALID_PARAM", "limit must be an integer") from None
        since = request.query.get("since")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise MatrixError(400, "M_INVALID_PARAM", "limit must be a non-negative integer")
    return ok(await hs(request).directory.public_rooms(limit, since if isinstance(since, str) else None,
                                                       term if isinstance(term, str) else None))


async def _other_servers_rooms(request: web.Request, server: str) -> web.Response:
    """Another server's directory, asked over federation: for signed-in users only, since each
    request costs one to that server. The request's parameters are passed on as they are typed."""
    await requester(request)
    query: dict[str, Any]
    if request.method == "POST":
        body = await json_body(request, allow_empty=True)
        query = {k: body[k] for k in ("limit", "since", "filter", "include_all_networks", "third_party_instance_id")
                 if k in body}
    else:
        query = {}
        if "limit" in request.query:
            try:
                query["limit"] = int(request.query["limit"])
            except ValueError:
                raise MatrixError(400, "M_INVALID_PARAM", "limit must be an integer") from None
        if "since" in request.query:
            query["since"] = request.query["since"]
    limit = query.get("limit")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise MatrixError(400, "M_INVALID_PARAM", "limit must be a non-negative integer")
    return ok(await hs(request).directory.other_servers_rooms(server, query))


async def user_search(request: web.Request) -> web.Response:
    who = await requester(request)
    body = await json_body(request)
    return ok(await hs(request).directory.search_users(who.user_id, body.get("search_term"), body.get("limit")))


def setup(app: web.Application) -> None:
    app.router.add_put(f"{CLIENT_V3}/directory/room/{{alias}}", put_alias)
    app.router.add_get(f"{CLIENT_V3}/directory/room/{{alias}}", get_alias)
    app.router.add_delete(f"{CLIENT_V3}/directory/room/{{alias}}", delete_alias)
    app.router.add_get(f"{CLIENT_V3}/directory/list/room/{{room_id}}", get_visibility)
    app.router.add_put(f"{CLIENT_V3}/directory/list/room/{{room_id}}", put_visibility)
    app.router.add_get(f"{CLIENT_V3}/publicRooms", public_rooms)
    app.router.add_post(f"{CLIENT_V3}/publicRooms", public_rooms)
    app.router.add_post(f"{CLIENT_V3}/user_directory/search", user_search)
