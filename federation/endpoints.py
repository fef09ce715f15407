"""Inbound Server-Server API endpoints (/_matrix/federation/...). Every request is X-Matrix authenticated."""

from __future__ import annotations

import json
import logging
from typing import Any, Awaitable, Callable

from aiohttp import web

from client_api.http import hs
from federation.ingest import PduRejected, server_of
from homeserver.auth_rules import AuthError, check_auth
from homeserver.clock import now_ms
from homeserver.errors import MatrixError, bad_json, forbidden, not_found
from homeserver.event_crypto import sign_event
from homeserver.events import Event
from homeserver.room_versions import get_room_version

log = logging.getLogger("whispr.federation.endpoints")

F1 = "/_matrix/federation/v1"
F2 = "/_matrix/federation/v2"
MAX_PDUS = 50
MAX_EDUS = 100
MAX_AUTH_CHAIN = 10_000

Handler = Callable[[web.Request, str], Awaitable[web.StreamResponse]]


def authed(handler: Handler) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """Verify X-Matrix before anything else; the handler gets the origin server name."""
    async def wrapped(request: web.Request) -> web.StreamResponse:
        server = hs(request)
        origin = await server.federation.authenticate(request)
        await server.limiter.check("federation", origin)
        await server.federation.sender.peer_contacted(origin)
        return await handler(request, origin)
    return wrapped


async def _body(request: web.Request) -> Any:
    try:
        return json.loads(await request.read())
    except ValueError:
        raise MatrixError(400, "M_NOT_JSON", "Content is not valid JSON") from None


async def _require_server_in_room(request: web.Request, room_id: str, origin: str) -> None:
    server = hs(request)
    if await server.rooms.room(room_id) is None:
        raise not_found("Unknown room")
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
    for pdu in pdus:
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


async def make_membership(request: web.Request, origin: str, membership: str) -> web.Response:
    server = hs(request)
    room_id, user_id = request.match_info["room_id"], request.match_info["user_id"]
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
    server = hs(request)
    room_id, event_id = request.match_info["room_id"], request.match_info["event_id"]
    body = await _body(request)
    if not isinstance(body, dict) or not isinstance(body.get("event"), dict):
        raise bad_json("The body needs the invite event")
    version = get_room_version(str(body.get("room_version", "1")))
    if version is None:
        raise MatrixError(400, "M_INCOMPATIBLE_ROOM_VERSION", "This server does not support that room version",
                          room_version=str(body.get("room_version")))
    try:
        event = await server.federation.ingester.verified_event(body["event"], version)
    except PduRejected as e:
        raise bad_json(f"bad invite event: {e}") from None
    target = event.state_key or ""
    if event.event_id != event_id or event.room_id != room_id or event.membership != "invite" \
            or server_of(event.sender) != origin or server_of(target) != server.config.server_name:
        raise bad_json("not an invite of one of our users from your server")
    if await server.store.users.get(target) is None:
        raise not_found("Unknown user")
    if await server.rooms.membership(room_id, target) == "join":
        raise forbidden("The user is already in the room")
    signed = sign_event(event.pdu, server.config.server_name, server.rooms.signing_key, version)
    invite_state = body.get("invite_room_state") if isinstance(body.get("invite_room_state"), list) else []
    await server.rooms.record_outside_membership(Event(event_id, signed), version.identifier,
                                                 {"invite_room_state": invite_state[:50]})
    return web.json_response({"event": signed})


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
    try:
        limit = min(int(request.query.get("limit", "10")), 100)
    except ValueError:
        raise MatrixError(400, "M_INVALID_PARAM", "limit must be an integer") from None
    events = await server.store.rooms.events_by_depth(room_id, request.query.getall("v", []), limit)
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
    earliest_ids, latest_ids = body.get("earliest_events", []), body.get("latest_events", [])
    if not all(isinstance(ids, list) and all(isinstance(i, str) for i in ids) for ids in (earliest_ids, latest_ids)):
        raise bad_json("earliest_events and latest_events must be lists of event IDs")
    earliest, latest = set(earliest_ids), list(latest_ids)
    limit = min(int(body.get("limit", 10)) if isinstance(body.get("limit", 10), int) else 10, 100)
    found: dict[str, Event] = {}
    frontier = list(latest)
    seen = set(latest) | earliest
    while frontier and len(found) < limit:
        batch = await server.rooms.get_events(frontier)
        frontier = []
        for ev in batch.values():
            for prev in ev.prev_event_ids:
                if prev not in seen:
                    seen.add(prev)
                    frontier.append(prev)
        prevs = await server.rooms.get_events(frontier)
        for ev in prevs.values():
            if ev.room_id == room_id and not ev.rejected and len(found) < limit:
                found[ev.event_id] = ev
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
        if field not in profile:
            raise not_found("No such profile field")
        return web.json_response({field: profile[field]})
    return web.json_response(profile)


async def query_directory(request: web.Request, origin: str) -> web.Response:
    return web.json_response(await hs(request).directory.resolve(request.query.get("room_alias", "")))


async def user_devices(request: web.Request, origin: str) -> web.Response:
    user_id = request.match_info["user_id"]
    if await hs(request).store.users.get(user_id) is None:
        raise not_found("Unknown user")
    return web.json_response({"user_id": user_id, "stream_id": 0, "devices": []})


def setup(app: web.Application) -> None:
    r = app.router
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
    r.add_get(f"{F1}/user/devices/{{user_id}}", authed(user_devices))
