"""Room key backup: /room_keys/version and /room_keys/keys at the three levels."""

from __future__ import annotations

from aiohttp import web

from client_api.http import CLIENT_V3, hs, json_body, ok, requester


async def create_version(request: web.Request) -> web.Response:
    who = await requester(request)
    return ok({"version": await hs(request).e2ee.backups.create(who.user_id, await json_body(request))})


async def get_version(request: web.Request) -> web.Response:
    who = await requester(request)
    return ok(await hs(request).e2ee.backups.info(who.user_id, request.match_info.get("version")))


async def put_version(request: web.Request) -> web.Response:
    who = await requester(request)
    await hs(request).e2ee.backups.update(who.user_id, request.match_info["version"], await json_body(request))
    return ok()


async def delete_version(request: web.Request) -> web.Response:
    who = await requester(request)
    await hs(request).e2ee.backups.delete(who.user_id, request.match_info["version"])
    return ok()


async def keys(request: web.Request) -> web.Response:
    who = await requester(request)
    backups = hs(request).e2ee.backups
    room_id, session_id = request.match_info.get("room_id"), request.match_info.get("session_id")
    version = request.query.get("version")
    if request.method == "PUT":
        return ok(await backups.put_keys(who.user_id, version, await json_body(request), room_id, session_id))
    if request.method == "GET":
        return ok(await backups.get_keys(who.user_id, version, room_id, session_id))
    return ok(await backups.delete_keys(who.user_id, version, room_id, session_id))


def setup(app: web.Application) -> None:
    base = f"{CLIENT_V3}/room_keys"
    app.router.add_post(f"{base}/version", create_version)
    app.router.add_get(f"{base}/version", get_version)
    app.router.add_get(f"{base}/version/{{version}}", get_version)
    app.router.add_put(f"{base}/version/{{version}}", put_version)
    app.router.add_delete(f"{base}/version/{{version}}", delete_version)
    for path in ("keys", "keys/{room_id}", "keys/{room_id}/{session_id}"):
        for method in ("PUT", "GET", "DELETE"):
            app.router.add_route(method, f"{base}/{path}", keys)
