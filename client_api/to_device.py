"""PUT /sendToDevice/{eventType}/{txnId}."""

from __future__ import annotations

from aiohttp import web

from client_api.http import CLIENT_V3, hs, json_body, ok, requester


async def send_to_device(request: web.Request) -> web.Response:
    who = await requester(request)
    body = await json_body(request)
    await hs(request).e2ee.to_device.send(who.user_id, who.device_id, request.match_info["event_type"],
                                          request.match_info["txn_id"], body.get("messages"))
    return ok()


def setup(app: web.Application) -> None:
    app.router.add_put(f"{CLIENT_V3}/sendToDevice/{{event_type}}/{{txn_id}}", send_to_device)
