"""Profiles: GET the whole profile, GET/PUT one field (displayname, avatar_url, org.whispr.bio, ...)."""

from aiohttp import web

from client_api.http import CLIENT_V3, hs, json_body, ok, requester
from homeserver.errors import bad_json


async def get_profile(request: web.Request) -> web.Response:
    return ok(await hs(request).profiles.get(request.match_info["user_id"]))


async def get_field(request: web.Request) -> web.Response:
    return ok(await hs(request).profiles.get_field(request.match_info["user_id"], request.match_info["key"]))


async def put_field(request: web.Request) -> web.Response:
    who = await requester(request)
    who.require_not_suspended()
    key = request.match_info["key"]
    body = await json_body(request)
    if key not in body:
        raise bad_json(f"body must hold the {key} field")
    await hs(request).profiles.set_field(who.user_id, request.match_info["user_id"], key, body[key])
    return ok()


async def delete_field(request: web.Request) -> web.Response:
    who = await requester(request)
    who.require_not_suspended()
    await hs(request).profiles.set_field(who.user_id, request.match_info["user_id"], request.match_info["key"], None)
    return ok()


def setup(app: web.Application) -> None:
    app.router.add_get(f"{CLIENT_V3}/profile/{{user_id}}", get_profile)
    app.router.add_get(f"{CLIENT_V3}/profile/{{user_id}}/{{key}}", get_field)
    app.router.add_put(f"{CLIENT_V3}/profile/{{user_id}}/{{key}}", put_field)
    app.router.add_delete(f"{CLIENT_V3}/profile/{{user_id}}/{{key}}", delete_field)
