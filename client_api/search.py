"""POST /search: server-side search of the rooms' messages, names and topics."""

from __future__ import annotations

from aiohttp import web

from client_api.http import CLIENT_V3, hs, json_body, ok, requester


async def search(request: web.Request) -> web.Response:
    who = await requester(request)
    body = await json_body(request)
    return ok(await hs(request).search.search(who, body, request.query.get("next_batch")))


def setup(app: web.Application) -> None:
    app.router.add_post(f"{CLIENT_V3}/search", search)
