"""Account data (global and per room) and filters."""

from __future__ import annotations

from aiohttp import web

from client_api.http import CLIENT_V3, hs, json_body, ok, requester
from homeserver.errors import forbidden

U = f"{CLIENT_V3}/user/{{user_id}}"


async def put_account_data(request: web.Request) -> web.Response:
    who = await requester(request)
    body = await json_body(request)
    await hs(request).room_data.set_account_data(who.user_id, request.match_info["user_id"],
                                                 request.match_info.get("room_id", ""), request.match_info["type"],
                                                 body)
    return ok()


async def get_account_data(request: web.Request) -> web.Response:
    who = await requester(request)
    return ok(await hs(request).room_data.get_account_data(
        who.user_id, request.match_info["user_id"], request.match_info.get("room_id", ""),
        request.match_info["type"]))


async def get_tags(request: web.Request) -> web.Response:
    who = await requester(request)
    m = request.match_info
    return ok(await hs(request).room_data.tags(who.user_id, m["user_id"], m["room_id"]))


async def put_tag(request: web.Request) -> web.Response:
    who = await requester(request)
    body = await json_body(request, allow_empty=True)
    m = request.match_info
    await hs(request).room_data.set_tag(who.user_id, m["user_id"], m["room_id"], m["tag"], body)
    return ok()


async def delete_tag(request: web.Request) -> web.Response:
    who = await requester(request)
    m = request.match_info
    await hs(request).room_data.remove_tag(who.user_id, m["user_id"], m["room_id"], m["tag"])
    return ok()


async def create_filter(request: web.Request) -> web.Response:
    who = await requester(request)
    body = await json_body(request)
    if request.match_info["user_id"] != who.user_id:
        raise forbidden("You can only create filters for yourself")
    return ok({"filter_id": await hs(request).filters.create(who.user_id, body)})


async def get_filter(request: web.Request) -> web.Response:
    who = await requester(request)
    if request.match_info["user_id"] != who.user_id:
        raise forbidden("You can only read your own filters")
    return ok(await hs(request).filters.get(who.user_id, request.match_info["filter_id"]))


def setup(app: web.Application) -> None:
    app.router.add_put(f"{U}/account_data/{{type}}", put_account_data)
    app.router.add_get(f"{U}/account_data/{{type}}", get_account_data)
    app.router.add_put(f"{U}/rooms/{{room_id}}/account_data/{{type}}", put_account_data)
    app.router.add_get(f"{U}/rooms/{{room_id}}/account_data/{{type}}", get_account_data)
    app.router.add_get(f"{U}/rooms/{{room_id}}/tags", get_tags)
    app.router.add_put(f"{U}/rooms/{{room_id}}/tags/{{tag}}", put_tag)
    app.router.add_delete(f"{U}/rooms/{{room_id}}/tags/{{tag}}", delete_tag)
    app.router.add_post(f"{U}/filter", create_filter)
    app.router.add_get(f"{U}/filter/{{filter_id}}", get_filter)
