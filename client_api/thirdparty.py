"""Third-party networks and VoIP: what a server without application services or bridges answers.

No protocol is bridged here, so `/thirdparty/protocols` is `{}`, a named protocol is 404
M_NOT_FOUND and every lookup finds nothing (Synapse's answers without appservices).
"""

from __future__ import annotations

from aiohttp import web

from client_api.http import CLIENT_V3, hs, ok, requester
from homeserver.clock import now_ms
from homeserver.errors import not_found
from homeserver.voip.turn import turn_server

T = f"{CLIENT_V3}/thirdparty"


async def protocols(request: web.Request) -> web.Response:
    await requester(request)
    return ok({})


async def protocol(request: web.Request) -> web.Response:
    await requester(request)
    raise not_found("No such protocol")


async def nothing_found(request: web.Request) -> web.Response:
    await requester(request)
    return web.json_response([])


async def turn(request: web.Request) -> web.Response:
    who = await requester(request)
    return ok(turn_server(hs(request).config.voip, who.user_id, who.is_guest, now_ms()))


def setup(app: web.Application) -> None:
    r = app.router
    r.add_get(f"{T}/protocols", protocols)
    r.add_get(f"{T}/protocol/{{protocol}}", protocol)
    r.add_get(f"{T}/location/{{protocol}}", nothing_found)
    r.add_get(f"{T}/user/{{protocol}}", nothing_found)
    r.add_get(f"{T}/location", nothing_found)
    r.add_get(f"{T}/user", nothing_found)
    r.add_get(f"{CLIENT_V3}/voip/turnServer", turn)
