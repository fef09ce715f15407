"""Rooms: create, membership, state, send, redact, history, members, typing, receipts."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from client_api.http import CLIENT_V3, hs, json_body, ok, requester
from homeserver.events.client_format import client_event
from homeserver.clock import now_ms
from homeserver.errors import MatrixError, bad_json, forbidden, not_found
from homeserver.sync.filters import EventFilter, parse_event_filter
from homeserver.json_input import parse_json
from homeserver.rooms.timeline import INITIAL_SYNC_LIMIT
from homeserver.rooms.timestamps import parse_query as parse_timestamp_query
from homeserver.web.requests import int_param
from storage.rooms import TxnRef

R = f"{CLIENT_V3}/rooms/{{room_id}}"


def _event_filter(request: web.Request) -> EventFilter:
    raw = request.query.get("filter")
    if not raw:
        return EventFilter()
    return parse_event_filter(parse_json(raw.encode("utf-8", "surrogatepass")), "filter")


async def create_room(request: web.Request) -> web.Response:
    who = await requester(request)
    who.require_not_suspended()
    body = await json_body(request, allow_empty=True)
    room_id = await hs(request).chats.create(who.user_id, body)
    return ok({"room_id": room_id})


async def join(request: web.Request) -> web.Response:
    who = await requester(request)
    who.require_not_suspended()
    body = await json_body(request, allow_empty=True)
    target = request.match_info.get("room_id_or_alias") or request.match_info["room_id"]
    via = request.query.getall("server_name", []) + request.query.getall("via", [])
    room_id = await hs(request).chats.join(target, who.user_id, body.get("reason"), via=via, guest=who.is_guest)
    return ok({"room_id": room_id})


async def knock(request: web.Request) -> web.Response:
    who = await requester(request)
    who.require_not_suspended()
    body = await json_body(request, allow_empty=True)
    via = request.query.getall("server_name", []) + request.query.getall("via", [])
    room_id = await hs(request).membership.knock(request.match_info["room_id_or_alias"], who.user_id,
                                                 body.get("reason"), via=via)
    return ok({"room_id": room_id})


async def invite(request: web.Request) -> web.Response:
    who = await requester(request)
    who.require_not_suspended()
    body = await json_body(request)
    await hs(request).membership.invite(request.match_info["room_id"], who.user_id, body.get("user_id"),
                                        body.get("reason"))
    return ok()


async def leave(request: web.Request) -> web.Response:
    who = await requester(request)
    body = await json_body(request, allow_empty=True)
    await hs(request).membership.leave(request.match_info["room_id"], who.user_id, body.get("reason"))
    return ok()


async def forget(request: web.Request) -> web.Response:
    who = await requester(request)
    await hs(request).membership.forget(request.match_info["room_id"], who.user_id)
    return ok()


def _membership_handler(kind: str) -> Any:
    async def handler(request: web.Request) -> web.Response:
        who = await requester(request)
        body = await json_body(request)
        await hs(request).membership.set_membership(request.match_info["room_id"], who.user_id,
                                                    body.get("user_id"), kind, body.get("reason"))
        return ok()
    return handler


async def send(request: web.Request) -> web.Response:
    who = await requester(request)
    server = hs(request)
    if request.match_info["event_type"] != "m.room.redaction":
        who.require_not_suspended()  # a suspended user may still redact their own events
    await server.limiter.check("message", who.user_id)
    body = await json_body(request)
    room_id = request.match_info["room_id"]
    event_type = request.match_info["event_type"]
    await server.relations.check_new(room_id, body)
    # Membership is checked by the auth rules inside create_event (403 M_FORBIDDEN).
    ev = await server.rooms.create_event(room_id, who.user_id, event_type, body,
                                         txn=TxnRef(who.device_id, request.match_info["txn_id"]))
    return ok({"event_id": ev.event_id})


async def redact(request: web.Request) -> web.Response:
    who = await requester(request)
    server = hs(request)
    await server.limiter.check("message", who.user_id)
    body = await json_body(request, allow_empty=True)
    room_id, target = request.match_info["room_id"], request.match_info["event_id"]
    await server.rooms.require_joined(room_id, who.user_id)
    if who.suspended:
        target_event = await server.rooms.get_event(target)
        if target_event is None or target_event.sender != who.user_id:
            who.require_not_suspended()  # their own events only
    reason = body.get("reason")
    if reason is not None and not isinstance(reason, str):
        raise bad_json("reason must be a string")
    room, version = await server.rooms.require_room(room_id)
    content: dict[str, Any] = {"reason": reason} if reason is not None else {}
    extra: dict[str, Any] = {}
    if version.redacts_in_content:
        content["redacts"] = target
    else:
        extra["redacts"] = target
    ev = await server.rooms.create_event(room_id, who.user_id, "m.room.redaction", content,
                                         txn=TxnRef(who.device_id, "redact:" + request.match_info["txn_id"]),
                                         extra=extra)
    return ok({"event_id": ev.event_id})


async def put_state(request: web.Request) -> web.Response:
    who = await requester(request)
    who.require_not_suspended()
    server = hs(request)
    body = await json_body(request)
    room_id = request.match_info["room_id"]
    event_type = request.match_info["event_type"]
    state_key = request.match_info.get("state_key", "")
    if event_type == "m.room.member":
        if state_key != who.user_id:
            raise forbidden("Use the membership endpoints to change membership")
        return ok({"event_id": await server.membership.set_own_member_profile(room_id, who.user_id, body)})
    await server.rooms.require_joined(room_id, who.user_id)
    ev = await server.rooms.create_event(room_id, who.user_id, event_type, body, state_key=state_key)
    return ok({"event_id": ev.event_id})


async def get_state_event(request: web.Request) -> web.Response:
    who = await requester(request)
    server = hs(request)
    room_id = request.match_info["room_id"]
    key = (request.match_info["event_type"], request.match_info.get("state_key", ""))
    state = await server.timeline.visible_state(room_id, who.user_id)
    event_id = state.get(key)
    ev = await server.rooms.get_event(event_id) if event_id else None
    if ev is None:
        raise not_found("No such state event")
    if request.query.get("format") == "event":
        room, version = await server.rooms.require_room(room_id)
        return ok(client_event(ev, version, now_ms()))
    return ok(ev.content)


async def get_state(request: web.Request) -> web.Response:
    who = await requester(request)
    server = hs(request)
    room_id = request.match_info["room_id"]
    ids = await server.timeline.visible_state(room_id, who.user_id)
    events = await server.rooms.get_events(ids.values())
    room, version = await server.rooms.require_room(room_id)
    now = now_ms()
    return ok([client_event(e, version, now) for e in sorted(events.values(), key=lambda e: e.stream)])


async def members(request: web.Request) -> web.Response:
    who = await requester(request)
    server = hs(request)
    room_id = request.match_info["room_id"]
    # The spec: current members while joined, the members as of the leave (or ban) after it.
    state = await server.timeline.visible_state(room_id, who.user_id)
    found = await server.rooms.get_events(eid for key, eid in state.items() if key[0] == "m.room.member")
    membership = request.query.get("membership")
    not_membership = request.query.get("not_membership")
    room, version = await server.rooms.require_room(room_id)
    now = now_ms()
    chunk = [client_event(e, version, now) for e in found.values()
             if (membership is None or e.membership == membership)
             and (not_membership is None or e.membership != not_membership)]
    return ok({"chunk": chunk})


async def joined_members(request: web.Request) -> web.Response:
    who = await requester(request)
    server = hs(request)
    room_id = request.match_info["room_id"]
    await server.rooms.require_joined(room_id, who.user_id)
    state = await server.rooms.current_state(room_id)
    # The spec types both fields as strings: a member without one has it left out, not null.
    joined = {k[1]: {field: e.content[key] for field, key in (("display_name", "displayname"),
                                                              ("avatar_url", "avatar_url"))
                     if isinstance(e.content.get(key), str)}
              for k, e in state.items() if k[0] == "m.room.member" and e.membership == "join"}
    return ok({"joined": joined})


async def joined_rooms(request: web.Request) -> web.Response:
    who = await requester(request)
    rooms = await hs(request).store.rooms.rooms_for_user(who.user_id)
    return ok({"joined_rooms": sorted(r for r, (m, _) in rooms.items() if m == "join")})


async def messages(request: web.Request) -> web.Response:
    who = await requester(request)
    return ok(await hs(request).timeline.messages(
        who, request.match_info["room_id"], request.query.get("from"), request.query.get("dir", "b"),
        int_param(request, "limit", 10), _event_filter(request)))


async def context(request: web.Request) -> web.Response:
    who = await requester(request)
    return ok(await hs(request).timeline.context(
        who, request.match_info["room_id"], request.match_info["event_id"], int_param(request, "limit", 10),
        _event_filter(request)))


async def get_event(request: web.Request) -> web.Response:
    who = await requester(request)
    return ok(await hs(request).timeline.event(who, request.match_info["room_id"], request.match_info["event_id"]))


async def initial_sync(request: web.Request) -> web.Response:
    who = await requester(request)
    return ok(await hs(request).timeline.initial_sync(who, request.match_info["room_id"],
                                                      int_param(request, "limit", INITIAL_SYNC_LIMIT)))


async def event_anywhere(request: web.Request) -> web.Response:
    who = await requester(request)
    return ok(await hs(request).timeline.event_anywhere(who, request.match_info["event_id"]))


async def global_initial_sync(request: web.Request) -> web.Response:
    who = await requester(request)
    archived = request.query.get("archived", "false")
    if archived not in ("true", "false"):
        raise MatrixError(400, "M_INVALID_PARAM", "archived must be true or false")
    return ok(await hs(request).timeline.global_initial_sync(who, int_param(request, "limit", INITIAL_SYNC_LIMIT),
                                                             archived == "true"))


async def peek_events(request: web.Request) -> web.Response:
    """GET /events?room_id=: room previews; the global event stream of old is not served."""
    who = await requester(request)
    room_id = request.query.get("room_id")
    if not room_id:
        raise MatrixError(400, "M_MISSING_PARAM", "room_id is required")
    return ok(await hs(request).previews.events(who, room_id, request.query.get("from"),
                                                int_param(request, "timeout", 0)))


async def typing(request: web.Request) -> web.Response:
    who = await requester(request)
    server = hs(request)
    if request.match_info["user_id"] != who.user_id:
        raise forbidden("You can only set your own typing state")
    body = await json_body(request)
    is_typing = body.get("typing")
    if not isinstance(is_typing, bool):
        raise bad_json("typing must be a boolean")
    timeout = body.get("timeout", 30_000)
    if isinstance(timeout, bool) or not isinstance(timeout, int):
        raise bad_json("timeout must be an integer")
    room_id = request.match_info["room_id"]
    await server.rooms.require_joined(room_id, who.user_id)
    await server.typing.set(room_id, who.user_id, is_typing, timeout)
    return ok()


async def receipt(request: web.Request) -> web.Response:
    who = await requester(request)
    body = await json_body(request, allow_empty=True)
    await hs(request).room_data.receipt(who.user_id, request.match_info["room_id"],
                                        request.match_info["receipt_type"], request.match_info["event_id"],
                                        body.get("thread_id"))
    return ok()


async def read_markers(request: web.Request) -> web.Response:
    who = await requester(request)
    body = await json_body(request)
    await hs(request).room_data.read_markers(who.user_id, request.match_info["room_id"], body)
    return ok()


async def upgrade(request: web.Request) -> web.Response:
    who = await requester(request)
    body = await json_body(request)
    new_room = await hs(request).upgrades.upgrade(who.user_id, request.match_info["room_id"],
                                                  body.get("new_version"), body.get("additional_creators"))
    return ok({"replacement_room": new_room})


async def timestamp_to_event(request: web.Request) -> web.Response:
    who = await requester(request)
    ts, direction = parse_timestamp_query(request.query.get("ts"), request.query.get("dir"))
    return ok(await hs(request).events_by_time.for_user(who.user_id, request.match_info["room_id"], ts, direction))


async def room_aliases(request: web.Request) -> web.Response:
    who = await requester(request)
    return ok({"aliases": await hs(request).directory.aliases(who.user_id, request.match_info["room_id"])})


async def mutual_rooms(request: web.Request) -> web.Response:
    who = await requester(request)
    other = request.query.get("user_id")
    if other is None:
        raise MatrixError(400, "M_INVALID_PARAM", "user_id is required")
    batch = request.query.get("from", request.query.get("batch_token"))
    return ok(await hs(request).membership.mutual_rooms(who.user_id, other, batch))


def setup(app: web.Application) -> None:
    add = app.router
    add.add_post(f"{CLIENT_V3}/createRoom", create_room)
    add.add_get("/_matrix/client/v1/mutual_rooms", mutual_rooms)
    add.add_post(f"{CLIENT_V3}/join/{{room_id_or_alias}}", join)
    add.add_post(f"{R}/join", join)
    add.add_post(f"{CLIENT_V3}/knock/{{room_id_or_alias}}", knock)
    add.add_post(f"{R}/invite", invite)
    add.add_post(f"{R}/leave", leave)
    add.add_post(f"{R}/forget", forget)
    add.add_post(f"{R}/kick", _membership_handler("kick"))
    add.add_post(f"{R}/ban", _membership_handler("ban"))
    add.add_post(f"{R}/unban", _membership_handler("unban"))
    add.add_put(f"{R}/send/{{event_type}}/{{txn_id}}", send)
    add.add_put(f"{R}/redact/{{event_id}}/{{txn_id}}", redact)
    add.add_get(f"{R}/state", get_state)
    add.add_get(f"{R}/state/{{event_type}}", get_state_event)
    add.add_get(f"{R}/state/{{event_type}}/{{state_key}}", get_state_event)
    add.add_get(f"{R}/state/{{event_type}}/", get_state_event)
    add.add_put(f"{R}/state/{{event_type}}", put_state)
    add.add_put(f"{R}/state/{{event_type}}/", put_state)
    add.add_put(f"{R}/state/{{event_type}}/{{state_key}}", put_state)
    add.add_get(f"{R}/members", members)
    add.add_get(f"{R}/joined_members", joined_members)
    add.add_get(f"{CLIENT_V3}/joined_rooms", joined_rooms)
    add.add_get(f"{R}/messages", messages)
    add.add_get(f"{R}/context/{{event_id}}", context)
    add.add_get(f"{R}/event/{{event_id}}", get_event)
    add.add_get(f"{R}/initialSync", initial_sync)
    add.add_get(f"{CLIENT_V3}/events", peek_events)
    add.add_get(f"{CLIENT_V3}/events/{{event_id}}", event_anywhere)
    add.add_get(f"{CLIENT_V3}/initialSync", global_initial_sync)
    add.add_put(f"{R}/typing/{{user_id}}", typing)
    add.add_post(f"{R}/receipt/{{receipt_type}}/{{event_id}}", receipt)
    add.add_post(f"{R}/read_markers", read_markers)
    add.add_get(f"{R}/aliases", room_aliases)
    add.add_post(f"{R}/upgrade", upgrade)
    add.add_get("/_matrix/client/v1/rooms/{room_id}/timestamp_to_event", timestamp_to_event)
