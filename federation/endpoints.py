"""Inbound Server-Server API endpoints (/_matrix/federation/...). Every request is X-Matrix authenticated,
but for `openid/userinfo`, which third parties (not servers) call with the user's OpenID token."""

from __future__ import annotations

import logging
import re
from typing import Any, Awaitable, Callable

from aiohttp import web

from homeserver.web.json_output import json_response
from homeserver.web.access_log import REQUESTER
from homeserver.web.requests import hs
from federation import e2ee as federation_e2ee
from federation.ingest import PduRejected, server_of
from federation.remote_rooms import INVITE_STATE_TYPES, full_pdus_in_invite_state, received_invite_state
from homeserver.events.client_format import stripped_state
from homeserver.events.auth_rules import AuthError, check_auth
from homeserver.clock import now_ms
from homeserver.errors import MatrixError, bad_json, forbidden, invalid_param, missing_param, not_found
from homeserver.events.crypto import compute_event_id, sign_event
from homeserver.events.event import Event
from homeserver.friends.markers import is_marked
from homeserver.events.room_versions import RoomVersion, get_room_version
from homeserver.json_input import parse_json
from homeserver.rooms.restricted_joins import join_authoriser
from homeserver.rooms.timestamps import parse_query as parse_timestamp_query

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
MAX_PUBLIC_ROOMS_LIMIT = 1_000  # rooms per publicRooms answer; 0 or none asks for all of them
V1_ROOM_VERSION = "1"  # what a room version not said is taken to be (v1 invite, v2 invite without one)
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
        return json_response(done)
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
        if isinstance(pdu, dict) and isinstance(pdu.get("room_id"), str) and pdu["room_id"] in denied:
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
    return json_response(response)


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
    if membership in ("join", "knock"):
        supported = request.query.getall("ver", ["1"])
        if version.identifier not in supported:
            raise MatrixError(400, "M_INCOMPATIBLE_ROOM_VERSION", "Your server does not support this room version",
                              room_version=version.identifier)
    content: dict[str, Any] = {"membership": membership}
    authoriser = await join_authoriser(server.rooms, room_id, user_id) if membership == "join" else None
    if authoriser is not None:  # a restricted room: we vouch, and will sign the join (send_join)
        content["join_authorised_via_users_server"] = authoriser
    template, version = await server.rooms.event_template(room_id, user_id, "m.room.member", content, user_id)
    # Check now that the membership could be allowed, so the peer gets a clear refusal.
    state = await server.rooms.current_state(room_id)
    probe = Event("$probe", {**template, "hashes": {}, "signatures": {server.config.server_name: {}}})
    try:
        check_auth(probe, state, version)
    except AuthError as e:
        raise forbidden(f"You are not allowed to {membership} this room: {e}") from None
    return json_response({"event": template, "room_version": version.identifier})


async def send_membership(request: web.Request, origin: str, membership: str) -> web.Response:
    """v2 send_join / send_leave: the answer as it is."""
    return json_response(await _send_membership(request, origin, membership))


async def send_membership_v1(request: web.Request, origin: str, membership: str) -> web.Response:
    """v1 send_join / send_leave (deprecated, still called by older servers): `[200, answer]`."""
    return json_response([200, await _send_membership(request, origin, membership)])


async def _send_membership(request: web.Request, origin: str, membership: str) -> dict[str, Any]:
    server = hs(request)
    room_id, event_id = request.match_info["room_id"], request.match_info["event_id"]
    await _require_acl(request, room_id, origin)
    version = await server.rooms.room_version(room_id)
    if version is None:
        raise not_found("Unknown room")
    pdu = await _body(request)
    if membership == "join" and _authorised_by_us(pdu, server.config.server_name, version):
        # A restricted join one of our users vouches for: only if the user qualifies now (the auth
        # rules cannot tell: they only hold the authoriser to being joined with the invite level),
        # and then our signature goes on it before the checks.
        sender = pdu.get("sender")
        if not isinstance(sender, str) or await join_authoriser(server.rooms, room_id, sender) is None:
            raise forbidden("This join needs no authorisation from this server")
        pdu = sign_event(pdu, server.config.server_name, server.rooms.signing_key, version)
    try:
        event = await server.federation.ingester.verified_event(pdu, version)
    except PduRejected as e:
        raise invalid_param(f"bad event: {e}") from None  # M_INVALID_PARAM: what the spec says servers should answer
    if event.event_id != event_id or event.room_id != room_id or event.type != "m.room.member" \
            or event.membership != membership or event.state_key != event.sender \
            or server_of(event.sender) != origin:
        raise invalid_param(f"not a {membership} of {origin}'s user for this room and event ID")
    state_before = await server.rooms.current_state_ids(room_id)
    async with server.rooms.lock(room_id):
        error = await server.federation.ingester.process(origin, event, version)
        stored = await server.rooms.get_event(event.event_id)
    if error or stored is None or stored.rejected or stored.unsigned.get("_soft_failed"):
        raise forbidden(f"The {membership} was refused: {error or 'not allowed by the current state'}")
    await server.federation.sender.send_event(event, exclude=origin)
    if membership == "leave":
        return {}
    if membership == "knock":
        return {"knock_room_state": await _room_preview(request, room_id, version)}
    states = await server.rooms.get_events(state_before.values())
    chain = await _auth_chain(request, list(state_before.values()))
    return {
        "origin": server.config.server_name,
        "state": [e.pdu for e in states.values()],
        "auth_chain": [e.pdu for e in chain],
        "members_omitted": False,
        "servers_in_room": sorted(await server.store.rooms.room_servers(room_id)),
        "event": event.pdu,
    }


def _authorised_by_us(pdu: Any, server_name: str, version: RoomVersion) -> bool:
    content = pdu.get("content") if isinstance(pdu, dict) else None
    authoriser = content.get("join_authorised_via_users_server") if isinstance(content, dict) else None
    return version.restricted_join_rule and isinstance(authoriser, str) and server_of(authoriser) == server_name


async def _room_preview(request: web.Request, room_id: str, version: RoomVersion) -> list[dict[str, Any]]:
    """What a knocking server's user may see of the room: the preview state, stripped (full PDUs
    from room version 12, as for invites, MSC4311)."""
    state = await hs(request).rooms.current_state(room_id)
    shown = [e for k, e in state.items() if k[0] in INVITE_STATE_TYPES]
    return [e.pdu if full_pdus_in_invite_state(version) else stripped_state(e) for e in shown]


async def invite(request: web.Request, origin: str) -> web.Response:
    """v2 invite: `{event, room_version, invite_room_state}`, answered `{event}`."""
    await _require_acl(request, request.match_info["room_id"], origin)
    body = await _body(request)
    if not isinstance(body, dict) or not isinstance(body.get("event"), dict):
        raise bad_json("The body needs the invite event")
    signed = await _invite(request, origin, body["event"], str(body.get("room_version", V1_ROOM_VERSION)),
                           body.get("invite_room_state"))
    return json_response({"event": signed})


async def invite_v1(request: web.Request, origin: str) -> web.Response:
    """v1 invite (deprecated): the body is the event, its room state in `unsigned.invite_room_state`,
    and the room version is not said: a room we hold has its own, any other is taken to be v1 (the
    spec: v1 invites are for rooms of version 1 or 2). Answered `[200, {event}]`."""
    await _require_acl(request, request.match_info["room_id"], origin)
    body = await _body(request)
    if not isinstance(body, dict):
        raise bad_json("The body must be the invite event")
    unsigned = body.get("unsigned")
    invite_state = unsigned.get("invite_room_state") if isinstance(unsigned, dict) else None
    signed = await _invite(request, origin, body, V1_ROOM_VERSION, invite_state)
    return json_response([200, {"event": signed}])


async def _invite(request: web.Request, origin: str, pdu: dict[str, Any], version_id: str,
                  invite_room_state: Any) -> dict[str, Any]:
    """Another server invites one of our users: the event, signed by us too. In a room this server
    is in, the invite is an event of the room, checked like any PDU; elsewhere it is only the
    invitee's pending invite."""
    server = hs(request)
    room_id, event_id = request.match_info["room_id"], request.match_info["event_id"]
    room = await server.rooms.room(room_id)
    held = room is not None and room.current_group is not None
    version = await server.rooms.room_version(room_id) if held else get_room_version(version_id)
    if version is None:
        raise MatrixError(400, "M_INCOMPATIBLE_ROOM_VERSION", "This server does not support that room version",
                          room_version=version_id)
    try:
        event = await server.federation.ingester.verified_event(pdu, version)
    except PduRejected as e:
        raise invalid_param(f"bad invite event: {e}") from None
    target = event.state_key or ""
    if event.event_id != event_id or event.room_id != room_id or event.type != "m.room.member" \
            or event.membership != "invite" or server_of(event.sender) != origin \
            or server_of(target) != server.config.server_name:
        raise invalid_param("not an invite of one of our users from your server")
    if await server.store.users.get(target) is None:
        raise not_found("Unknown user")
    if await server.rooms.membership(room_id, target) == "join":
        raise forbidden("The user is already in the room")
    if is_marked(event):  # a friend request: the invitee's settings may refuse its sender
        await server.friends.check_remote_request(target, event.sender)
    signed = Event(event_id, sign_event(event.pdu, server.config.server_name, server.rooms.signing_key, version))
    if held:
        await _accept_invite_event(request, origin, signed, version)
    else:
        invite_state = received_invite_state(invite_room_state, signed, version)
        await server.rooms.record_outside_membership(signed, version.identifier,
                                                     {"invite_room_state": invite_state})
    return signed.pdu


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
    if "event_id" not in request.query:
        raise missing_param("event_id is required")
    ev = await server.rooms.get_event(request.query["event_id"])
    if ev is None or ev.room_id != room_id or ev.unsigned.get("_outlier") or ev.rejected:
        raise not_found("Unknown event")
    ids = await server.rooms.state_at_event(ev.event_id, after=False)
    if not ids and ev.unsigned.get("_soft_failed"):  # soft-failed before its state was kept
        raise not_found("The state at that event is not known here")
    return ids, await _auth_chain(request, list(ids.values()))


async def state_ids(request: web.Request, origin: str) -> web.Response:
    ids, chain = await _state_before(request, origin)
    return json_response({"pdu_ids": list(ids.values()), "auth_chain_ids": [e.event_id for e in chain]})


async def state(request: web.Request, origin: str) -> web.Response:
    ids, chain = await _state_before(request, origin)
    events = await hs(request).rooms.get_events(ids.values())
    return json_response({"pdus": [e.pdu for e in events.values()], "auth_chain": [e.pdu for e in chain]})


async def get_event(request: web.Request, origin: str) -> web.Response:
    server = hs(request)
    ev = await server.rooms.get_event(request.match_info["event_id"])
    if ev is None or ev.rejected:
        raise not_found("Unknown event")
    await _require_server_in_room(request, ev.room_id, origin)
    return json_response({"origin": server.config.server_name, "origin_server_ts": now_ms(),
                              "pdus": await _as_seen_by(request, origin, ev.room_id, [ev])})


async def event_auth(request: web.Request, origin: str) -> web.Response:
    room_id = request.match_info["room_id"]
    await _require_server_in_room(request, room_id, origin)
    ev = await hs(request).rooms.get_event(request.match_info["event_id"])
    if ev is None or ev.room_id != room_id:
        raise not_found("Unknown event")
    chain = await _auth_chain(request, ev.auth_event_ids)
    return json_response({"auth_chain": [e.pdu for e in chain]})


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
    return json_response({"origin": server.config.server_name, "origin_server_ts": now_ms(),
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
    return json_response({"events": await _as_seen_by(request, origin, room_id, ordered)})


async def query_profile(request: web.Request, origin: str) -> web.Response:
    server = hs(request)
    user_id = request.query.get("user_id", "")
    if server_of(user_id) != server.config.server_name:
        raise not_found("Not one of our users")
    profile = await server.profiles.get(user_id)
    field = request.query.get("field")
    if field:
        # A known user without that field: 200 without it (as the spec and Synapse answer).
        return json_response({field: profile[field]} if field in profile else {})
    return json_response(profile)


async def query_directory(request: web.Request, origin: str) -> web.Response:
    return json_response(await hs(request).directory.resolve_local(request.query.get("room_alias", "")))


async def public_rooms(request: web.Request, origin: str) -> web.Response:
    """The rooms published in our directory (never those of other servers, nor those closed to
    federation), GET or POST with a filter. No application services bridge networks here:
    `include_all_networks` changes nothing and a `third_party_instance_id` names no network we
    have (an empty chunk)."""
    room_types: list[str | None] | None = None
    term: Any = None
    if request.method == "POST":
        body = await _body(request)
        if not isinstance(body, dict):
            raise bad_json("The body must be an object")
        limit, since, instance = body.get("limit"), body.get("since"), body.get("third_party_instance_id")
        all_networks = body.get("include_all_networks", False)
        search = body.get("filter") or {}
        if not isinstance(search, dict):
            raise bad_json("filter must be an object")
        term, types = search.get("generic_search_term"), search.get("room_types")
        if types is not None:
            if not isinstance(types, list) or not all(t is None or isinstance(t, str) for t in types):
                raise bad_json("filter.room_types must list room types (or null)")
            room_types = types
    else:
        since, instance = request.query.get("since"), request.query.get("third_party_instance_id")
        limit = _query_int(request, "limit", 0, MAX_PUBLIC_ROOMS_LIMIT) if "limit" in request.query else None
        all_networks = {"true": True, "false": False}.get(request.query.get("include_all_networks", "false"))
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 0):
        raise invalid_param("limit must be a non-negative integer")
    if not isinstance(all_networks, bool):
        raise invalid_param("include_all_networks must be true or false")
    for name, value in (("since", since), ("third_party_instance_id", instance), ("generic_search_term", term)):
        if value is not None and not isinstance(value, str):
            raise invalid_param(f"{name} must be a string")
    if instance is not None and all_networks:
        raise invalid_param("third_party_instance_id cannot be used with include_all_networks")
    if instance is not None:
        return json_response({"chunk": [], "total_room_count_estimate": 0})
    return json_response(await hs(request).directory.public_rooms(
        min(limit, MAX_PUBLIC_ROOMS_LIMIT) if limit else None, since, term, room_types, federating_only=True))


async def hierarchy(request: web.Request, origin: str) -> web.Response:
    """A space and its children as the origin server may see them (404 when it may see none)."""
    room_id = request.match_info["room_id"]
    await _require_acl(request, room_id, origin)
    suggested_only = {"true": True, "false": False}.get(request.query.get("suggested_only", "false"))
    if suggested_only is None:
        raise invalid_param("suggested_only must be true or false")
    return web.json_response(await hs(request).spaces.for_server(origin, room_id, suggested_only))


async def timestamp_to_event(request: web.Request, origin: str) -> web.Response:
    room_id = request.match_info["room_id"]
    await _require_server_in_room(request, room_id, origin)
    ts, direction = parse_timestamp_query(request.query.get("ts"), request.query.get("dir"))
    return web.json_response(await hs(request).events_by_time.for_server(room_id, ts, direction))


async def openid_userinfo(request: web.Request) -> web.Response:
    return json_response({"sub": await hs(request).openid.userinfo(request.query.get("access_token"))})


def setup(app: web.Application) -> None:
    r = app.router
    r.add_get(f"{F1}/openid/userinfo", openid_userinfo)
    r.add_put(f"{F1}/send/{{txn_id}}", authed(send_transaction))
    r.add_get(f"{F1}/make_join/{{room_id}}/{{user_id}}", authed(lambda q, o: make_membership(q, o, "join")))
    r.add_put(f"{F2}/send_join/{{room_id}}/{{event_id}}", authed(lambda q, o: send_membership(q, o, "join")))
    r.add_put(f"{F1}/send_join/{{room_id}}/{{event_id}}", authed(lambda q, o: send_membership_v1(q, o, "join")))
    r.add_get(f"{F1}/make_leave/{{room_id}}/{{user_id}}", authed(lambda q, o: make_membership(q, o, "leave")))
    r.add_put(f"{F2}/send_leave/{{room_id}}/{{event_id}}", authed(lambda q, o: send_membership(q, o, "leave")))
    r.add_put(f"{F1}/send_leave/{{room_id}}/{{event_id}}", authed(lambda q, o: send_membership_v1(q, o, "leave")))
    r.add_get(f"{F1}/make_knock/{{room_id}}/{{user_id}}", authed(lambda q, o: make_membership(q, o, "knock")))
    r.add_put(f"{F1}/send_knock/{{room_id}}/{{event_id}}", authed(lambda q, o: send_membership(q, o, "knock")))
    r.add_put(f"{F2}/invite/{{room_id}}/{{event_id}}", authed(invite))
    r.add_put(f"{F1}/invite/{{room_id}}/{{event_id}}", authed(invite_v1))
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
    r.add_get(f"{F1}/publicRooms", authed(public_rooms))
    r.add_post(f"{F1}/publicRooms", authed(public_rooms))
    r.add_get(f"{F1}/hierarchy/{{room_id}}", authed(hierarchy))
    r.add_get(f"{F1}/timestamp_to_event/{{room_id}}", authed(timestamp_to_event))
