"""Reporting an event, a room or a user to the server admins (rate-limited per user)."""

from __future__ import annotations

from aiohttp import web

from client_api.http import CLIENT_V3, hs, json_body, ok, requester


async def report_event(request: web.Request) -> web.Response:
    who = await requester(request)
    server = hs(request)
    await server.limiter.check("report", who.user_id)
    body = await json_body(request, allow_empty=True)
    await server.reports.report_event(who, request.match_info["room_id"], request.match_info["event_id"], body)
    return ok()


async def report_room(request: web.Request) -> web.Response:
    who = await requester(request)
    server = hs(request)
    await server.limiter.check("report", who.user_id)
    body = await json_body(request, allow_empty=True)
    await server.reports.report_room(who, request.match_info["room_id"], body)
    return ok()


async def report_user(request: web.Request) -> web.Response:
    who = await requester(request)
    server = hs(request)
    await server.limiter.check("report", who.user_id)
    body = await json_body(request, allow_empty=True)
    await server.reports.report_user(who, request.match_info["user_id"], body, server.config.server_name)
    return ok()


def setup(app: web.Application) -> None:
    r = app.router
    r.add_post(f"{CLIENT_V3}/rooms/{{room_id}}/report/{{event_id}}", report_event)
    r.add_post(f"{CLIENT_V3}/rooms/{{room_id}}/report", report_room)
    r.add_post(f"{CLIENT_V3}/users/{{user_id}}/report", report_user)
