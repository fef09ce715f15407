"""GET /notifications (the events that notified the user, newest first), and Whispr's email
notification setting with its unsubscribe link."""

from __future__ import annotations

from aiohttp import web

from client_api.http import CLIENT_V3, WHISPR, hs, json_body, ok, requester
from homeserver.clock import now_ms
from homeserver.errors import MatrixError, bad_json
from homeserver.events.client_format import client_event

DEFAULT_LIMIT = 20
MAX_LIMIT = 100


def _int(raw: str | None, name: str) -> int | None:
    if raw is None or raw == "":
        return None
    if not raw.isdigit() or len(raw) > 18:
        raise MatrixError(400, "M_INVALID_PARAM", f"{name} must be a non-negative integer")
    return int(raw)


async def get_notifications(request: web.Request) -> web.Response:
    who = await requester(request)
    server = hs(request)
    before = _int(request.query.get("from"), "from")
    limit = min(_int(request.query.get("limit"), "limit") or DEFAULT_LIMIT, MAX_LIMIT)
    only = request.query.get("only")
    page, next_token = await server.notifications.page(who.user_id, before, limit, only == "highlight")
    events = await server.rooms.get_events(n.event_id for n, _ in page)
    now = now_ms()
    out = []
    for n, read in page:
        event = events.get(n.event_id)
        version = await server.rooms.room_version(n.room_id)
        if event is None or version is None:
            continue
        out.append({"actions": n.actions, "event": client_event(event, version, now),
                    "read": read, "room_id": n.room_id, "ts": n.ts})
    body: dict[str, object] = {"notifications": out}
    if next_token is not None:
        body["next_token"] = str(next_token)
    return ok(body)


async def get_email(request: web.Request) -> web.Response:
    who = await requester(request)
    return ok({"enabled": await hs(request).email_notifier.setting(who.user_id)})


async def put_email(request: web.Request) -> web.Response:
    who = await requester(request)
    body = await json_body(request)
    if not isinstance(body.get("enabled"), bool):
        raise bad_json("enabled must be a boolean")
    server = hs(request)
    await server.email_notifier.set(who.user_id, body["enabled"], server.notifier.position)
    return ok()


async def unsubscribe(request: web.Request) -> web.Response:
    """The link in every notification mail: no login needed, the token is the proof."""
    user_id, token = request.query.get("user_id"), request.query.get("token")
    if not user_id or not token:
        raise MatrixError(400, "M_MISSING_PARAM", "user_id and token are required")
    await hs(request).email_notifier.unsubscribe(user_id, token)
    return ok({"unsubscribed": True})


def setup(app: web.Application) -> None:
    app.router.add_get(f"{CLIENT_V3}/notifications", get_notifications)
    app.router.add_get(f"{WHISPR}/notifications/email", get_email)
    app.router.add_put(f"{WHISPR}/notifications/email", put_email)
    app.router.add_get(f"{WHISPR}/notifications/email/unsubscribe", unsubscribe)
