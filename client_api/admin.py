"""The Synapse-compatible admin API (`/_synapse/admin/...`), on the client listener as Synapse serves it.

Every endpoint but shared-secret registration and the server version needs the access token of a server
admin (the users' `admin` flag): none is 401 M_MISSING_TOKEN, a user who is not an admin 403 M_FORBIDDEN.
Shapes follow Synapse's admin API documentation, so operators' scripts and admin web UIs keep working.
"""

from __future__ import annotations

from importlib import metadata
from typing import Any

from aiohttp import web

from client_api.http import CLIENT_V3, hs, json_body, ok, requester
from homeserver.accounts.accounts import Requester
from homeserver.admin.rooms import DeleteRequest
from homeserver.errors import MatrixError, forbidden, invalid_param
from homeserver.web.requests import bool_param, int_param

ADMIN = "/_synapse/admin"


async def admin_requester(request: web.Request) -> Requester:
    who = await requester(request)
    if not await hs(request).admin_users.is_admin(who.user_id):
        raise forbidden("You are not a server admin")
    return who


def _backwards(request: web.Request) -> bool:
    direction = request.query.get("dir", "f")
    if direction not in ("f", "b"):
        raise invalid_param("dir must be f or b")
    return direction == "b"


def _optional_bool(request: web.Request, name: str) -> bool | None:
    return bool_param(request, name, False) if name in request.query else None


def _server_version() -> str:
    try:
        return metadata.version("whispr")
    except metadata.PackageNotFoundError:
        return "0.0.0"


# --- no admin token needed -----------------------------------------------------------------


async def register_nonce(request: web.Request) -> web.Response:
    return ok({"nonce": await hs(request).shared_secret.nonce()})


async def register_shared_secret(request: web.Request) -> web.Response:
    return ok(await hs(request).shared_secret.register(await json_body(request)))


async def server_version(_request: web.Request) -> web.Response:
    return ok({"server_version": f"Whispr {_server_version()}"})


# --- users -----------------------------------------------------------------------------------


async def list_users(request: web.Request) -> web.Response:
    await admin_requester(request)
    bool_param(request, "guests", True)  # checked, though there are no guest accounts to include or leave out
    return ok(await hs(request).admin_users.list_users(
        name=request.query.get("name"), user_id=request.query.get("user_id"),
        deactivated=bool_param(request, "deactivated", False), admins=_optional_bool(request, "admins"),
        order_by=request.query.get("order_by", "name"), backwards=_backwards(request),
        offset=int_param(request, "from", 0), limit=int_param(request, "limit", 100)))


async def query_user(request: web.Request) -> web.Response:
    await admin_requester(request)
    return ok(await hs(request).admin_users.query(request.match_info["user_id"]))


async def upsert_user(request: web.Request) -> web.Response:
    await admin_requester(request)
    body = await json_body(request, allow_empty=True)
    account, created = await hs(request).admin_users.upsert(request.match_info["user_id"], body)
    return ok(account, status=201 if created else 200)


async def get_admin(request: web.Request) -> web.Response:
    await admin_requester(request)
    user = await hs(request).admin_users.existing(request.match_info["user_id"])
    return ok({"admin": user.admin})


async def set_admin(request: web.Request) -> web.Response:
    who = await admin_requester(request)
    user_id = request.match_info["user_id"]
    body = await json_body(request)
    if user_id == who.user_id and body.get("admin") is False:
        raise MatrixError(400, "M_UNKNOWN", "You may not demote yourself")
    await hs(request).admin_users.set_admin(user_id, body.get("admin"))
    return ok({})


async def deactivate(request: web.Request) -> web.Response:
    await admin_requester(request)
    body = await json_body(request, allow_empty=True)
    await hs(request).admin_users.deactivate(request.match_info["user_id"], body.get("erase", False))
    return ok({"id_server_unbind_result": "success"})


async def reset_password(request: web.Request) -> web.Response:
    await admin_requester(request)
    body = await json_body(request)
    await hs(request).admin_users.reset_password(request.match_info["user_id"], body.get("new_password"),
                                                 body.get("logout_devices", True))
    return ok({})


async def whois(request: web.Request) -> web.Response:
    await admin_requester(request)
    return ok(await hs(request).admin_users.whois(request.match_info["user_id"]))


async def whois_client(request: web.Request) -> web.Response:
    """The spec's GET /admin/whois/{userId}: a server admin, or the user about themselves."""
    who = await requester(request)
    user_id = request.match_info["user_id"]
    if user_id != who.user_id and not await hs(request).admin_users.is_admin(who.user_id):
        raise forbidden("You are not a server admin")
    return ok(await hs(request).admin_users.whois(user_id))


def _moderation_handlers(kind: str) -> tuple[Any, Any]:
    """GET and PUT /_matrix/client/v1/admin/lock|suspend/{userId} (the spec's account moderation)."""
    async def get(request: web.Request) -> web.Response:
        await admin_requester(request)
        return ok(await hs(request).admin_users.moderation(request.match_info["user_id"], kind))

    async def put(request: web.Request) -> web.Response:
        who = await admin_requester(request)
        body = await json_body(request)
        return ok(await hs(request).admin_users.set_moderation(who.user_id, request.match_info["user_id"], kind,
                                                               body))
    return get, put


async def joined_rooms(request: web.Request) -> web.Response:
    await admin_requester(request)
    return ok(await hs(request).admin_users.joined_rooms(request.match_info["user_id"]))


async def user_devices(request: web.Request) -> web.Response:
    await admin_requester(request)
    return ok(await hs(request).admin_users.devices(request.match_info["user_id"]))


async def delete_user_device(request: web.Request) -> web.Response:
    await admin_requester(request)
    await hs(request).admin_users.delete_device(request.match_info["user_id"], request.match_info["device_id"])
    return ok({})


async def user_media(request: web.Request) -> web.Response:
    await admin_requester(request)
    server = hs(request)
    user = await server.admin_users.existing(request.match_info["user_id"])
    return ok(await server.admin_media.user_media(
        user.user_id, offset=int_param(request, "from", 0), limit=int_param(request, "limit", 100),
        order_by=request.query.get("order_by", "created_ts"), backwards=_backwards(request)))


# --- rooms -----------------------------------------------------------------------------------


async def list_rooms(request: web.Request) -> web.Response:
    await admin_requester(request)
    return ok(await hs(request).admin_rooms.list_rooms(
        offset=int_param(request, "from", 0), limit=int_param(request, "limit", 100),
        order_by=request.query.get("order_by", "name"), backwards=_backwards(request),
        search_term=request.query.get("search_term"), public=_optional_bool(request, "public_rooms"),
        empty=_optional_bool(request, "empty_rooms")))


async def room_details(request: web.Request) -> web.Response:
    await admin_requester(request)
    return ok(await hs(request).admin_rooms.details(request.match_info["room_id"]))


async def room_members(request: web.Request) -> web.Response:
    await admin_requester(request)
    return ok(await hs(request).admin_rooms.members(request.match_info["room_id"]))


async def room_state(request: web.Request) -> web.Response:
    await admin_requester(request)
    return ok(await hs(request).admin_rooms.state(request.match_info["room_id"], request.query.get("type")))


async def delete_room_v1(request: web.Request) -> web.Response:
    who = await admin_requester(request)
    delete = DeleteRequest.from_body(await json_body(request, allow_empty=True))
    return ok(await hs(request).admin_rooms.delete_now(request.match_info["room_id"], who.user_id, delete))


async def delete_room_v2(request: web.Request) -> web.Response:
    who = await admin_requester(request)
    delete = DeleteRequest.from_body(await json_body(request, allow_empty=True))
    delete_id = await hs(request).admin_rooms.start_delete(request.match_info["room_id"], who.user_id, delete)
    return ok({"delete_id": delete_id})


async def room_delete_status(request: web.Request) -> web.Response:
    await admin_requester(request)
    return ok(await hs(request).admin_rooms.room_delete_statuses(request.match_info["room_id"]))


async def delete_status(request: web.Request) -> web.Response:
    await admin_requester(request)
    return ok(await hs(request).admin_rooms.delete_status(request.match_info["delete_id"]))


async def get_block(request: web.Request) -> web.Response:
    await admin_requester(request)
    return ok(await hs(request).admin_rooms.blocked(request.match_info["room_id"]))


async def set_block(request: web.Request) -> web.Response:
    who = await admin_requester(request)
    body = await json_body(request)
    room_id = request.match_info["room_id"]
    await hs(request).admin_rooms.set_blocked(room_id, body.get("block"), who.user_id)
    return ok({"block": body["block"]})


# --- media -----------------------------------------------------------------------------------


async def quarantine(request: web.Request) -> web.Response:
    await admin_requester(request)
    await hs(request).admin_media.set_quarantined(request.match_info["server_name"], request.match_info["media_id"],
                                                  True)
    return ok({})


async def unquarantine(request: web.Request) -> web.Response:
    await admin_requester(request)
    await hs(request).admin_media.set_quarantined(request.match_info["server_name"], request.match_info["media_id"],
                                                  False)
    return ok({})


async def delete_media(request: web.Request) -> web.Response:
    await admin_requester(request)
    return ok(await hs(request).admin_media.delete(request.match_info["server_name"],
                                                   request.match_info["media_id"]))


# --- registration tokens ---------------------------------------------------------------------


async def list_tokens(request: web.Request) -> web.Response:
    await admin_requester(request)
    tokens = await hs(request).registration_tokens.all(_optional_bool(request, "valid"))
    return ok({"registration_tokens": [t.to_json() for t in tokens]})


async def new_token(request: web.Request) -> web.Response:
    await admin_requester(request)
    token = await hs(request).registration_tokens.create(await json_body(request, allow_empty=True))
    return ok(token.to_json())


async def get_token(request: web.Request) -> web.Response:
    await admin_requester(request)
    return ok((await hs(request).registration_tokens.get(request.match_info["token"])).to_json())


async def update_token(request: web.Request) -> web.Response:
    await admin_requester(request)
    body = await json_body(request, allow_empty=True)
    return ok((await hs(request).registration_tokens.update(request.match_info["token"], body)).to_json())


async def delete_token(request: web.Request) -> web.Response:
    await admin_requester(request)
    await hs(request).registration_tokens.delete(request.match_info["token"])
    return ok({})


async def event_reports(request: web.Request) -> web.Response:
    await admin_requester(request)
    direction = request.query.get("dir", "b")
    if direction not in ("f", "b"):
        raise invalid_param("dir must be f or b")
    return ok(await hs(request).admin_reports.event_reports(
        offset=int_param(request, "from", 0), limit=int_param(request, "limit", 100), backwards=direction == "b",
        room_id=request.query.get("room_id"), reporter=request.query.get("user_id")))


def _report_id(request: web.Request) -> int:
    raw = request.match_info["report_id"]
    if not raw.isdigit() or len(raw) > 18:
        raise invalid_param("The report ID must be a positive integer")
    return int(raw)


async def event_report(request: web.Request) -> web.Response:
    await admin_requester(request)
    return ok(await hs(request).admin_reports.event_report(_report_id(request)))


async def delete_event_report(request: web.Request) -> web.Response:
    await admin_requester(request)
    await hs(request).admin_reports.delete_event_report(_report_id(request))
    return ok({})


def setup(app: web.Application) -> None:
    r = app.router
    r.add_get(f"{ADMIN}/v1/register", register_nonce)
    r.add_post(f"{ADMIN}/v1/register", register_shared_secret)
    r.add_get(f"{ADMIN}/v1/server_version", server_version)
    r.add_get(f"{ADMIN}/v2/users", list_users)
    r.add_get(f"{ADMIN}/v2/users/{{user_id}}", query_user)
    r.add_put(f"{ADMIN}/v2/users/{{user_id}}", upsert_user)
    r.add_get(f"{ADMIN}/v1/users/{{user_id}}/admin", get_admin)
    r.add_put(f"{ADMIN}/v1/users/{{user_id}}/admin", set_admin)
    r.add_get(f"{ADMIN}/v1/users/{{user_id}}/media", user_media)
    r.add_get(f"{ADMIN}/v1/users/{{user_id}}/joined_rooms", joined_rooms)
    r.add_get(f"{ADMIN}/v2/users/{{user_id}}/devices", user_devices)
    r.add_delete(f"{ADMIN}/v2/users/{{user_id}}/devices/{{device_id}}", delete_user_device)
    r.add_post(f"{ADMIN}/v1/deactivate/{{user_id}}", deactivate)
    r.add_post(f"{ADMIN}/v1/reset_password/{{user_id}}", reset_password)
    r.add_get(f"{ADMIN}/v1/whois/{{user_id}}", whois)
    r.add_get(f"{CLIENT_V3}/admin/whois/{{user_id}}", whois_client)
    r.add_get(f"{ADMIN}/v1/rooms", list_rooms)
    r.add_get(f"{ADMIN}/v1/rooms/{{room_id}}", room_details)
    r.add_get(f"{ADMIN}/v1/rooms/{{room_id}}/members", room_members)
    r.add_get(f"{ADMIN}/v1/rooms/{{room_id}}/state", room_state)
    r.add_get(f"{ADMIN}/v1/rooms/{{room_id}}/block", get_block)
    r.add_put(f"{ADMIN}/v1/rooms/{{room_id}}/block", set_block)
    r.add_delete(f"{ADMIN}/v1/rooms/{{room_id}}", delete_room_v1)
    r.add_delete(f"{ADMIN}/v2/rooms/{{room_id}}", delete_room_v2)
    r.add_get(f"{ADMIN}/v2/rooms/{{room_id}}/delete_status", room_delete_status)
    r.add_get(f"{ADMIN}/v2/rooms/delete_status/{{delete_id}}", delete_status)
    r.add_post(f"{ADMIN}/v1/media/quarantine/{{server_name}}/{{media_id}}", quarantine)
    r.add_post(f"{ADMIN}/v1/media/unquarantine/{{server_name}}/{{media_id}}", unquarantine)
    r.add_delete(f"{ADMIN}/v1/media/{{server_name}}/{{media_id}}", delete_media)
    r.add_get(f"{ADMIN}/v1/registration_tokens", list_tokens)
    r.add_post(f"{ADMIN}/v1/registration_tokens/new", new_token)
    r.add_get(f"{ADMIN}/v1/registration_tokens/{{token}}", get_token)
    r.add_put(f"{ADMIN}/v1/registration_tokens/{{token}}", update_token)
    r.add_delete(f"{ADMIN}/v1/registration_tokens/{{token}}", delete_token)
    for path, kind in (("lock", "locked"), ("suspend", "suspended")):
        get, put = _moderation_handlers(kind)
        r.add_get(f"/_matrix/client/v1/admin/{path}/{{user_id}}", get)
        r.add_put(f"/_matrix/client/v1/admin/{path}/{{user_id}}", put)
    r.add_get(f"{ADMIN}/v1/event_reports", event_reports)
    r.add_get(f"{ADMIN}/v1/event_reports/{{report_id}}", event_report)
    r.add_delete(f"{ADMIN}/v1/event_reports/{{report_id}}", delete_event_report)
