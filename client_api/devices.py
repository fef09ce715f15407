"""The user's devices (sessions)."""

from typing import Any

from aiohttp import web

from client_api.http import CLIENT_V3, hs, json_body, ok, prove_password, requester
from homeserver.errors import bad_json, not_found
from homeserver.accounts.models import Device


def _device_json(d: Device) -> dict[str, Any]:
    # Unknown fields stay null, not absent, although the spec types them as optional strings and
    # integers: matrix-nio's schema requires all four keys (Synapse answers the same).
    return {"device_id": d.device_id, "display_name": d.display_name,
            "last_seen_ts": d.last_seen_ts, "last_seen_ip": d.last_seen_ip}


async def list_devices(request: web.Request) -> web.Response:
    who = await requester(request)
    return ok({"devices": [_device_json(d) for d in await hs(request).accounts.devices(who.user_id)]})


async def get_device(request: web.Request) -> web.Response:
    who = await requester(request)
    device = await hs(request).accounts.device(who.user_id, request.match_info["device_id"])
    if device is None:
        raise not_found("Unknown device")
    return ok(_device_json(device))


async def put_device(request: web.Request) -> web.Response:
    who = await requester(request)
    body = await json_body(request, allow_empty=True)
    await hs(request).accounts.rename_device(who.user_id, request.match_info["device_id"], body.get("display_name"))
    return ok()


async def _delete(request: web.Request, device_ids: list[str], auth: object) -> web.Response:
    server = hs(request)
    who = await requester(request)
    await prove_password(request, who, auth, f"delete_devices:{who.user_id}:{','.join(sorted(device_ids))}",
                         limited=True)
    await server.accounts.delete_devices(who.user_id, device_ids)
    return ok()


async def delete_device(request: web.Request) -> web.Response:
    body = await json_body(request, allow_empty=True)
    return await _delete(request, [request.match_info["device_id"]], body.get("auth"))


async def delete_devices(request: web.Request) -> web.Response:
    body = await json_body(request)
    ids = body.get("devices")
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise bad_json("devices must be a list of device IDs")
    return await _delete(request, ids, body.get("auth"))


def setup(app: web.Application) -> None:
    app.router.add_get(f"{CLIENT_V3}/devices", list_devices)
    app.router.add_get(f"{CLIENT_V3}/devices/{{device_id}}", get_device)
    app.router.add_put(f"{CLIENT_V3}/devices/{{device_id}}", put_device)
    app.router.add_delete(f"{CLIENT_V3}/devices/{{device_id}}", delete_device)
    app.router.add_post(f"{CLIENT_V3}/delete_devices", delete_devices)
