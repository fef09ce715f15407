"""Presence: PUT and GET /presence/{userId}/status."""

from aiohttp import web

from client_api.http import CLIENT_V3, hs, json_body, ok, requester
from homeserver.errors import MatrixError, forbidden
from homeserver.events.ids import parse_user_id
from homeserver.presence.presence import STATES, valid_status_msg


async def put_status(request: web.Request) -> web.Response:
    who = await requester(request)
    user_id = request.match_info["user_id"]
    if user_id != who.user_id:
        raise forbidden("You cannot set the presence of another user")
    body = await json_body(request)
    state = body.get("presence")
    if state not in STATES:
        raise MatrixError(400, "M_INVALID_PARAM", f"presence must be one of {', '.join(STATES)}")
    await hs(request).presence.set_state(who.user_id, state, valid_status_msg(body.get("status_msg")))
    return ok()


async def get_status(request: web.Request) -> web.Response:
    who = await requester(request)
    user_id = request.match_info["user_id"]
    parse_user_id(user_id)
    return ok(await hs(request).presence.status(who.user_id, user_id))


def setup(app: web.Application) -> None:
    app.router.add_put(f"{CLIENT_V3}/presence/{{user_id}}/status", put_status)
    app.router.add_get(f"{CLIENT_V3}/presence/{{user_id}}/status", get_status)
