"""Friends (/_matrix/client/unstable/org.whispr/friends...): parse, limit, call the domain, serialise."""

from __future__ import annotations

from aiohttp import web

from client_api.http import WHISPR, hs, json_body, ok, requester


async def send_request(request: web.Request) -> web.Response:
    server = hs(request)
    who = await requester(request)
    who.require_not_suspended()  # a request is an invite
    body = await json_body(request)
    await server.limiter.check("friend_request", who.user_id)
    return ok(await server.friends.request(who.user_id, body.get("user_id"), body.get("message")))


async def list_requests(request: web.Request) -> web.Response:
    who = await requester(request)
    return ok(await hs(request).friends.requests(who.user_id))


async def accept(request: web.Request) -> web.Response:
    who = await requester(request)
    who.require_not_suspended()  # accepting is joining
    return ok(await hs(request).friends.accept(who.user_id, request.match_info["user_id"]))


async def decline(request: web.Request) -> web.Response:
    who = await requester(request)
    await hs(request).friends.decline(who.user_id, request.match_info["user_id"])
    return ok()


async def cancel(request: web.Request) -> web.Response:
    who = await requester(request)
    await hs(request).friends.cancel(who.user_id, request.match_info["user_id"])
    return ok()


async def list_friends(request: web.Request) -> web.Response:
    who = await requester(request)
    return ok({"friends": await hs(request).friends.friends(who.user_id)})


async def remove(request: web.Request) -> web.Response:
    who = await requester(request)
    await hs(request).friends.remove(who.user_id, request.match_info["user_id"])
    return ok()


async def get_settings(request: web.Request) -> web.Response:
    who = await requester(request)
    return ok(await hs(request).friends.settings(who.user_id))


async def put_settings(request: web.Request) -> web.Response:
    who = await requester(request)
    body = await json_body(request)
    await hs(request).friends.set_settings(who.user_id, body)
    return ok()


def setup(app: web.Application) -> None:
    base = f"{WHISPR}/friends"
    app.router.add_get(base, list_friends)
    app.router.add_delete(f"{base}/{{user_id}}", remove)
    app.router.add_post(f"{base}/requests", send_request)
    app.router.add_get(f"{base}/requests", list_requests)
    app.router.add_post(f"{base}/requests/{{user_id}}/accept", accept)
    app.router.add_post(f"{base}/requests/{{user_id}}/decline", decline)
    app.router.add_delete(f"{base}/requests/{{user_id}}", cancel)
    app.router.add_get(f"{base}/settings", get_settings)
    app.router.add_put(f"{base}/settings", put_settings)
