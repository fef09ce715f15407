"""Inbound Server-Server API endpoints (/_matrix/federation/...). Every request is X-Matrix authenticated,
but for `openid/userinfo`, which third parties (not servers) call with the user's OpenID token."""

from __future__ import annotations

import logging
import re
from typing import Any, Awaitable, Callable

from aiohttp import web

from client_api.access_log import REQUESTER
from client_api.http import hs
from federation import e2ee as federation_e2ee
from federation.ingest import PduRejected, server_of
from federation.remote_rooms import received_invite_state
from homeserver.events.auth_rules import AuthError, check_auth
from homeserver.clock import now_ms
from homeserver.errors import MatrixError, bad_json, forbidden, invalid_param, missing_param, not_found
from homeserver.events.crypto import compute_event_id, sign_event
from homeserver.events.event import Event
from homeserver.events.room_versions import RoomVersion, get_room_version
from homeserver.json_input import parse_json

log = logging.getLogger("whispr.federation.endpoints")

F1 = "/_matrix/federation/v1"
F2 = "/_matrix/federation/v2"
MAX_PDUS = 50
MAX_EDUS = 100
MAX_AUTH_CHAIN = 10_000
MAX_BACKFILL_LIMIT = 100  # PDUs per /backfill answer
MAX_BACKFILL_FROM = 100  # `v` event IDs per /backfill request
DEFAULT_MISSING_EVENTS_LIMIT = 10  # the spec's default
MAX_MISSING_EVENTS_LIMIT = 100
MAX_MISSING_LATEST = 20  # get_missing_events `latest_events`
MAX_MISSING_EARLIEST = 1_000  # get_missing_events `earliest_events`
MAX_DEPTH = 2**63 - 1  # depths are 64-bit signed integers
_DECIMAL = re.compile(r"-?[0-9]+")  # what int() takes beyond this (spaces, "_", "+", other digits) is refused
_HUGE_DIGITS = 19  # more digits than any limit or depth: clamped without converting

Handler = Callable[[web.Request, str], Awaitable[web.StreamResponse]]


def authed(handler: Handler) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """Verify X-Matrix before anything else; the handler gets the origin server name."""
    async def wrapped(request: web.Request) -> web.StreamResponse:
        server = hs(request)
        origin = await server.federation.authenticate(request)
        request[REQUESTER] = origin  # for the access log
        await server.limiter.check("federation", origin)
        await server.federation.sender.peer_contacted(origin)
        return await handler(request, origin)
    return wrapped


async def _body(request: web.Request) -> Any:
    return parse_json(await request.read(), safe_integers=False)


def _in_range(name: str, value: int, minimum: int, maximum: int) -> int:
    """Below `minimum` is refused; above `maximum` is clamped to it."""
    if value < minimum:
        raise invalid_param(f"{name} must be at least {minimum}")
    return min(value, maximum)


def _query_int(request: web.Request, name: str, minimum: int, maximum: int) -> int:
    """A required integer query parameter (decimal digits, optionally negative)."""
    raw = request.query.get(name)
    if raw is None:
        raise missing_param(f"{name} is required")
    if not _DECIMAL.fullmatch(raw):
        raise invalid_param(f"{name} must be an integer")
    digits = raw.lstrip("-")
    value = int(raw) if len(digits) <= _HUGE_DIGITS else (-1 if raw.startswith("-") else 1) * 10**_HUGE_DIGITS
    return _in_range(name, value, minimum, maximum)


def _body_int(body: dict[str, Any], name: str, default: int, minimum: int, maximum: int) -> int:
    value = body.get(name, default)
    if not isinstance(value, int) or isinstance(value, bool):
        raise invalid_param(f"{name} must be an integer")
    return _in_range(name, value, minimum, maximum)


def _event_ids(body: dict[str, Any], name: str, maximum: int) -> list[str]:
    value = body.get(name)
    if not isinstance(value, list) or not all(isinstance(e, str) for e in value):
        raise bad_json(f"{name} must be a list of event IDs")
    if len(value) > maximum:
        raise bad_json(f"at most {maximum} {name}")
    return value


async def _require_acl(request: web.Request, room_id: str, origin: str) -> None:
    """403 when the room's server ACL denies the requesting server (rooms not held have no ACL)."""
    await hs(request).federation.acls.require_allowed(origin, room_id)


async def _require_server_in_room(request: web.Request, room_id: str, origin: str) -> None:
    server = hs(request)
    if await server.rooms.room(room_id) is None:
        raise not_found("Unknown room")
    await _require_acl(request, room_id, origin)
    if origin not in await server.store.rooms.room_servers(room_id):
        raise forbidden("Your server has no one in this room")


async def _as_seen_by(request: web.Request, origin: str, room_id: str, events: list[Event]) -> list[Any]:
    """History for another server: redacted where the room's history visibility hides it from it."""
    server = hs(request)
    version = await server.rooms.room_version(room_id)
    if version is None:
        return [e.pdu for e in events]
    return await server.visibility.for_server(origin, events, version)


async def _auth_chain(request: web.Request, event_ids: list[str]) -> list[Event]:
    rooms = hs(request).rooms
    seen: dict[str, Event] = {}
    queue = list(event_ids)
    while queue and len(seen) < MAX_AUTH_CHAIN:
        batch = await rooms.get_events(queue)
        queue = []
        for ev in batch.values():
            for auth_id in ev.auth_event_ids:
                if auth_id not in seen:
                    queue.append(auth_id)
            seen.setdefault(ev.event_id, ev)
        queue = [q for q in queue if q not in seen]
    return sorted(seen.values(), key=lambda e: e.depth)


async def send_transaction(request: web.Request, origin: str) -> web.Response:
    server = hs(request)
    txn_id = request.match_info["txn_id"]
    done = await server.store.federation.inbound_txn(origin, txn_id)
    if done is not None:
        return web.json_response(done)
    body = await _body(request)
    if not isinstance(body, dict) or not isinstance(body.get("pdus", []), list) \
            or not isinstance(body.get("edus", []), list):
        raise bad_json("A transaction needs pdus and edus lists")
    pdus, edus = body.get("pdus", []), body.get("edus", [])
    if len(pdus) > MAX_PDUS or len(edus) > MAX_EDUS:
        raise MatrixError(400, "M_TOO_LARGE", f"at most {MAX_PDUS} PDUs and {MAX_EDUS} EDUs per transaction")
    results: dict[str, Any] = {}
    denied = await _rooms_denying(request, origin, pdus)
    for pdu in pdus:
        if isinstance(pdu, dict) and pdu.get("room_id") in denied:
            event_id = await _event_id_of(request, pdu)
            log.warning("ignored PDU %s from %s: the server ACL of %s denies it", event_id, origin, pdu["room_id"])
            if event_id:
                results[event_id] = {"error": f"the server ACL of {pdu['room_id']} denies {origin}"}
            continue
        event_id, error = await server.federation.ingester.receive(origin, pdu)
        if event_id:
            results[event_id] = {"error": error} if error else {}
    for edu in edus:
        try:
            await server.federation.receive_edu(origin, edu)
        except Exception:
            log.exception("ignoring a bad EDU from %s", origin)
    response = {"pdus": results}
    await server.store.federation.record_inbound_txn(origin, txn_id, response, now_ms())
    return web.json_response(response)


async def _rooms_denying(request: web.Request, origin: str, pdus: list[Any]) -> set[str]:
    """The rooms of a transaction's PDUs whose server ACL denies the origin: one check per room."""
    acls = hs(request).federation.acls
    rooms = {p["room_id"] for p in pdus if isinstance(p, dict) and isinstance(p.get("room_id"), str)}
    return {room_id for room_id in rooms if not await acls.allows(origin, room_id)}


async def _event_id_of(request: web.Request, pdu: dict[str, Any]) -> str:
    """The event ID to report a refused PDU under, or "" when it cannot be computed."""
    version = await hs(request).rooms.room_version(pdu["room_id"])
    try:
        return compute_event_id(pdu, version) if version is not None else ""
    except Exception:
        return ""


async def make_membership(request: web.Request, origin: str, membership: str) -> web.Response:
    server = hs(request)
    room_id, user_id = request.match_info["room_id"], request.match_info["user_id"]
    await _require_acl(request, room_id, origin)
    if server_of(user_id) != origin:
        raise forbidden("You can only make events for your own users")
    version = await server.rooms.room_version(room_id)
    if version is None:
        raise not_found("Unknown room")
    if membership == "join":
        supported = request.query.getall("ver", ["1"])
        if version.identifier not in supported:
            raise MatrixError(400, "M_INCOMPATIBLE_ROOM_VERSION", "Your server does not support this room version",
                              room_version=version.identifier)
    template, version = await server.rooms.event_template(room_id, user_id, "m.room.member",
                                                          {"membership": membership}, user_id)
    # Check now that the membership could be allowed, so the peer gets a clear refusal.
    state = await server.rooms.current_state(room_id)
    probe = Event("$probe", {**template, "hashes": {}, "signatures": {}})
    try:
        check_auth(probe, state, version)
    except AuthError as e:
        raise forbidden(f"You are not allowed to {membership} this room: {e}") from None
    return web.json_response({"event": template, "room_version": version.identifier})


async def send_membership(request: web.Request, origin: str, membership: str) -> web.Response:
    server = hs(request)
    room_id, event_id = request.match_info["room_id"], request.match_info["event_id"]
    await _require_acl(request, room_id, origin)
    version = await server.rooms.room_version(room_id)
    if version is None:
        raise not_found("Unknown room")
    pdu = await _body(request)
    try:
        event = await server.federation.ingester.verified_event(pdu, version)
    except PduRejected as e:
        raise bad_json(f"bad event: {e}") from None
    if event.event_id != event_id or event.room_id != room_id or event.type != "m.room.member" \
            or event.membership != membership or event.state_key != event.sender \
            or server_of(event.sender) != origin:
        raise bad_json(f"not a {membership} of {origin}'s user for this room and event ID")
    state_before = await server.rooms.current_state_ids(room_id)
    async with server.rooms.lock(room_id):
        error = await server.federation.ingester.process(origin, event, version)
        stored = await server.rooms.get_event(event.event_id)
    if error or stored is None or stored.rejected or stored.unsigned.get("_soft_failed"):
        raise forbidden(f"The {membership} was refused: {error or 'not allowed by the current state'}")
    await server.federation.sender.send_event(event, exclude=origin)
    if membership == "leave":
        return web.json_response({})
    states = await server.rooms.get_events(state_before.values())
    chain = await _auth_chain(request, list(state_before.values()))
    return web.json_response({
        "origin": server.config.server_name,
        "state": [e.pdu for e in states.values()],
        "auth_chain": [e.pdu for e in chain],
        "members_omitted": False,
        "servers_in_room": sorted(await server.store.rooms.room_servers(room_id)),
        "event": event.pdu,
    })


async def invite(request: web.Request, origin: str) -> web.Response:
    """Another server invites one of our users. In a room this server is in, the invite is an
    event of the room, checked like any PDU; elsewhere it is only the invitee's pending invite."""
    server = hs(request)
    room_id, event_id = request.match_info["room_id"], request.match_info["event_id"]
    await _require_acl(request, room_id, origin)
    body = await _body(request)
    if not isinstance(body, dict) or not isinstance(body.get("event"), dict):
        raise bad_json("The body needs the invite event")
    room = await server.rooms.room(room_id)
    held = room is not None and room.current_group is not None
    version = await server.rooms.room_version(room_id) if held else get_room_version(
        str(body.get("room_version", "1")))
    if version is None:
        raise MatrixError(400, "M_INCOMPATIBLE_ROOM_VERSION", "This server does not support that room version",
                          room_version=str(body.get("room_version")))
    try:
        event = await server.federation.ingester.verified_event(body["event"], version)
    except PduRejected as e:
        raise bad_json(f"bad invite event: {e}") from None
    target = event.state_key or ""
    if event.event_id != event_id or event.room_id != room_id or event.type != "m.room.member" \
            or event.membership != "invite" or server_of(event.sender) != origin \
            or server_of(target) != server.config.server_name:
        raise bad_json("not an invite of one of our users from your server")
    if await server.store.users.get(target) is None:
        raise not_found("Unknown user")
    if await server.rooms.membership(room_id, target) == "join":
        raise forbidden("The user is already in the room")
    signed = Event(event_id, sign_event(event.pdu, server.config.server_name, server.rooms.signing_key, version))
    if held:
        await _accept_invite_event(request, origin, signed, version)
    else:
        invite_state = received_invite_state(body.get("invite_room_state"), signed, version)
        await server.rooms.record_outside_membership(signed, version.identifier,
                                                     {"invite_room_state": invite_state})
    return web.json_response({"event": signed.pdu})


async def _accept_invite_event(request: web.Request, origin: str, event: Event, version: RoomVersion) -> None:
    """An invite into a room we hold passes the auth rules against its auth events, the state
    before it and the current state (inviter of the origin, joined, with the invite level), or
    is refused with 403; a refused invite is kept as rejected or soft-failed, never as accepted."""
    server = hs(request)
    async with server.rooms.lock(event.room_id):
        error = await server.federation.ingester.process(origin, event, version)
        stored = await server.rooms.get_event(event.event_id)
    if error or stored is None or stored.rejected or stored.unsigned.get("_soft_failed") \
            or stored.unsigned.get("_outlier"):
        log.warning("refused an invite %s from %s: %s", event.event_id, origin, error or "not allowed now")
        raise forbidden(f"The invite was refused: {error or 'not allowed by the current state'}")


async def _state_before(request: web.Request, origin: str) -> tuple[dict[Any, str], list[Event]]:
    """The state before ?event_id= (what state_ids and state answer) and its auth chain."""
    server = hs(request)
    room_id = request.match_info["room_id"]
    await _require_server_in_room(request, room_id, origin)
    ev = await server.rooms.get_event(request.query.get("event_id", ""))
    if ev is None or ev.room_id != room_id or ev.unsigned.get("_outlier"):
        raise not_found("Unknown event")
    ids = await server.rooms.state_at_event(ev.event_id, after=False)
    return ids, await _auth_chain(request, list(ids.values()))


async def state_ids(request: web.Request, origin: str) -> web.Response:
    ids, chain = await _state_before(request, origin)
    return web.json_response({"pdu_ids": list(ids.values()), "auth_chain_ids": [e.event_id for e in chain]})


async def state(request: web.Request, origin: str) -> web.Response:
    ids, chain = await _state_before(request, origin)
    events = await hs(request).rooms.get_events(ids.values())
    return web.json_response({"pdus": [e.pdu for e in events.values()], "auth_chain": [e.pdu for e in chain]})


async def get_event(request: web.Request, origin: str) -> web.Response:
    server = hs(request)
    ev = await server.rooms.get_event(request.match_info["event_id"])
    if ev is None or ev.rejected:
        raise not_found("Unknown event")
    await _require_server_in_room(request, ev.room_id, origin)
    return web.json_response({"origin": server.config.server_name, "origin_server_ts": now_ms(),
                              "pdus": await _as_seen_by(request, origin, ev.room_id, [ev])})


async def event_auth(request: web.Request, origin: str) -> web.Response:
    room_id = request.match_info["room_id"]
    await _require_server_in_room(request, room_id, origin)
    ev = await hs(request).rooms.get_event(request.match_info["event_id"])
    if ev is None or ev.room_id != room_id:
        raise not_found("Unknown event")
    chain = await _auth_chain(request, ev.auth_event_ids)
    return web.json_response({"auth_chain": [e.pdu for e in chain]})


async def backfill(request: web.Request, origin: str) -> web.Response:
    server = hs(request)
    room_id = request.match_info["room_id"]
    await _require_server_in_room(request, room_id, origin)
    limit = _query_int(request, "limit", 1, MAX_BACKFILL_LIMIT)
    before = request.query.getall("v", [])
    if not before:
        raise missing_param("v (the event IDs to backfill from) is required")
    if len(before) > MAX_BACKFILL_FROM:
        raise invalid_param(f"at most {MAX_BACKFILL_FROM} v event IDs")
    events = await server.store.rooms.events_by_depth(room_id, before, limit)
    events = [e for e in events if not e.unsigned.get("_soft_failed")]
    return web.json_response({"origin": server.config.server_name, "origin_server_ts": now_ms(),
                              "pdus": await _as_seen_by(request, origin, room_id, events)})


async def get_missing_events(request: web.Request, origin: str) -> web.Response:
    server = hs(request)
    room_id = request.match_info["room_id"]
    await _require_server_in_room(request, room_id, origin)
    body = await _body(request)
    if not isinstance(body, dict):
        raise bad_json("body must be an object")
    earliest = _event_ids(body, "earliest_events", MAX_MISSING_EARLIEST)
    latest = _event_ids(body, "latest_events", MAX_MISSING_LATEST)
    limit = _body_int(body, "limit", DEFAULT_MISSING_EVENTS_LIMIT, 1, MAX_MISSING_EVENTS_LIMIT)
    min_depth = _body_int(body, "min_depth", 0, 0, MAX_DEPTH)
    found: dict[str, Event] = {}
    # Breadth-first through prev_events, never into earliest_events nor below min_depth.
    walk = [ev for ev in (await server.rooms.get_events(latest)).values() if ev.room_id == room_id]
    seen = set(latest) | set(earliest)
    while walk and len(found) < limit:
        frontier = list(dict.fromkeys(p for ev in walk for p in ev.prev_event_ids if p not in seen))
        seen.update(frontier)
        prevs = await server.rooms.get_events(frontier)
        walk = []
        for prev_id in frontier:
            ev = prevs.get(prev_id)
            if ev is not None and ev.room_id == room_id and not ev.rejected and ev.depth >= min_depth \
                    and len(found) < limit:
                found[ev.event_id] = ev
                walk.append(ev)
    ordered = sorted(found.values(), key=lambda e: (e.depth, e.stream))
    return web.json_response({"events": await _as_seen_by(request, origin, room_id, ordered)})


async def query_profile(request: web.Request, origin: str) -> web.Response:
    server = hs(request)
    user_id = request.query.get("user_id", "")
    if server_of(user_id) != server.config.server_name:
        raise not_found("Not one of our users")
    profile = await server.profiles.get(user_id)
    field = request.query.get("field")
    if field:
        # A known user without that field: 200 without it (as the spec and Synapse answer).
        return web.json_response({field: profile[field]} if field in profile else {})
    return web.json_response(profile)


async def query_directory(request: web.Request, origin: str) -> web.Response:
    return web.json_response(await hs(request).directory.resolve_local(request.query.get("room_alias", "")))


async def openid_userinfo(request: web.Request) -> web.Response:
    return web.json_response({"sub": await hs(request).openid.userinfo(request.query.get("access_token"))})


def setup(app: web.Application) -> None:
    r = app.router
    r.add_get(f"{F1}/openid/userinfo", openid_userinfo)
    r.add_put(f"{F1}/send/{{txn_id}}", authed(send_transaction))
    r.add_get(f"{F1}/make_join/{{room_id}}/{{user_id}}", authed(lambda q, o: make_membership(q, o, "join")))
    r.add_put(f"{F2}/send_join/{{room_id}}/{{event_id}}", authed(lambda q, o: send_membership(q, o, "join")))
    r.add_get(f"{F1}/make_leave/{{room_id}}/{{user_id}}", authed(lambda q, o: make_membership(q, o, "leave")))
    r.add_put(f"{F2}/send_leave/{{room_id}}/{{event_id}}", authed(lambda q, o: send_membership(q, o, "leave")))
    r.add_put(f"{F2}/invite/{{room_id}}/{{event_id}}", authed(invite))
    r.add_get(f"{F1}/state_ids/{{room_id}}", authed(state_ids))
    r.add_get(f"{F1}/state/{{room_id}}", authed(state))
    r.add_get(f"{F1}/event/{{event_id}}", authed(get_event))
    r.add_get(f"{F1}/event_auth/{{room_id}}/{{event_id}}", authed(event_auth))
    r.add_get(f"{F1}/backfill/{{room_id}}", authed(backfill))
    r.add_post(f"{F1}/get_missing_events/{{room_id}}", authed(get_missing_events))
    r.add_get(f"{F1}/query/profile", authed(query_profile))
    r.add_get(f"{F1}/query/directory", authed(query_directory))
    r.add_get(f"{F1}/user/devices/{{user_id}}", authed(lambda q, o: federation_e2ee.user_devices(q, o, hs(q))))
    r.add_post(f"{F1}/user/keys/query", authed(lambda q, o: federation_e2ee.keys_query(q, o, hs(q))))
    r.add_post(f"{F1}/user/keys/claim", authed(lambda q, o: federation_e2ee.keys_claim(q, o, hs(q))))
