"""Pushers: GET /pushers, POST /pushers/set."""

from __future__ import annotations

from aiohttp import web

from client_api.http import CLIENT_V3, hs, json_body, ok, requester


async def get_pushers(request: web.Request) -> web.Response:
    who = await requester(request)
    return ok({"pushers": await hs(request).pushers.of_user(who.user_id)})


async def set_pusher(request: web.Request) -> web.Response:
    who = await requester(request)
    body = await json_body(request)
    server = hs(request)
    await server.pushers.set(who.user_id, body, server.notifier.position)
    return ok()


def setup(app: web.Application) -> None:
    app.router.add_get(f"{CLIENT_V3}/pushers", get_pushers)
    app.router.add_post(f"{CLIENT_V3}/pushers/set", set_pusher)
