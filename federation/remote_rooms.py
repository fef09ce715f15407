"""Membership across servers: joining remote rooms, inviting remote users, leaving.

Outbound halves of make_join/send_join, invite and make_leave/send_leave.
Every event a peer returns is verified before it is stored.
"""

from __future__ import annotations

import logging
from functools import partial
from urllib.parse import quote
from typing import Any

from homeserver.events.auth_rules import AuthError, check_auth
from homeserver.events.client_format import stripped_from_json, stripped_state
from homeserver.clock import now_ms
from homeserver.errors import MatrixError, forbidden, not_found
from homeserver.events.crypto import compute_event_id, new_opaque_event_id, sign_event
from homeserver.events.event import Event, StateKey
from homeserver.events.room_versions import KNOWN_ROOM_VERSIONS, RoomVersion, get_room_version
from homeserver.rooms.rooms import Rooms
from federation.ingest import FederationRequests, Ingester, PduRejected, SignatureChecker, server_of
from storage.store import Store

q = partial(quote, safe="")  # IDs as path segments

log = logging.getLogger("whispr.federation.rooms")

INVITE_STATE_TYPES = ("m.room.create", "m.room.join_rules", "m.room.name", "m.room.avatar",
                      "m.room.canonical_alias", "m.room.encryption", "m.room.topic")
MAX_INVITE_STATE = 50
# make_join answers of a resident server that cannot vouch for a restricted join (another may).
RESTRICTED_JOIN_ERRORS = ("M_UNABLE_TO_AUTHORISE_JOIN", "M_UNABLE_TO_GRANT_JOIN")


def full_pdus_in_invite_state(version: RoomVersion) -> bool:
    """MSC4311: from room version 12, invite_room_state holds full PDUs (the create event among them)."""
    return version.room_id_from_create_event


def received_invite_state(raw: Any, invite: Event, version: RoomVersion) -> list[dict[str, Any]]:
    """The invite_room_state another server sent, as stripped events for the invitee's sync:
    stripped events or full PDUs of the room's preview types and members, junk dropped. A PDU
    must be of the invite's room (in v12, a create event must hash to the room ID)."""
    kept: dict[StateKey, dict[str, Any]] = {}
    for item in raw[:MAX_INVITE_STATE] if isinstance(raw, list) else []:
        stripped = stripped_from_json(item)
        if stripped is None or stripped["type"] not in (*INVITE_STATE_TYPES, "m.room.member"):
            continue
        if stripped["type"] == "m.room.member" and stripped["state_key"] == invite.state_key:
            continue  # the invitee's membership is the invite itself
        if ("hashes" in item or "signatures" in item) and not _pdu_of_room(item, invite.room_id, version):
            continue
        kept.setdefault((stripped["type"], stripped["state_key"]), stripped)
    return list(kept.values())


def _pdu_of_room(pdu: dict[str, Any], room_id: str, version: RoomVersion) -> bool:
    if pdu.get("type") == "m.room.create" and version.room_id_from_create_event:
        try:
            return "!" + compute_event_id(pdu, version)[1:] == room_id
        except Exception:  # not hashable as a PDU
            return False
    return pdu.get("room_id") == room_id


def _signed_part(pdu: dict[str, Any]) -> dict[str, Any]:
    """An event without what other servers may add to it (their signatures, unsigned data)."""
    return {k: v for k, v in pdu.items() if k not in ("signatures", "unsigned")}


class FederationClientLike(FederationRequests):
    async def put_json(self, destination: str, path: str, body: Any) -> Any: ...


class RemoteRooms:
    def __init__(self, server_name: str, rooms: Rooms, store: Store, client: FederationClientLike,
                 ingester: Ingester, keys: SignatureChecker) -> None:
        self._server_name = server_name
        self._rooms = rooms
        self._store = store
        self._client = client
        self._ingester = ingester
        self._keys = keys

    # --- joining ---------------------------------------------------------------------

    async def join(self, room_id: str, user_id: str, servers: list[str], content: dict[str, Any]) -> None:
        """Join a room held by other servers, trying each candidate server in turn."""
        candidates = [s for s in dict.fromkeys(servers) if s and s != self._server_name]
        if not candidates:
            raise not_found("No known server can let you join this room")
        last_error: Exception | None = None
        for server in candidates:
            try:
                await self._join_via(server, room_id, user_id, content)
                return
            except MatrixError as e:
                if e.errcode in ("M_FORBIDDEN", "M_INCOMPATIBLE_ROOM_VERSION"):
                    raise
                last_error = e
            except Exception as e:  # unreachable or misbehaving peer: try the next one
                log.warning("joining %s via %s failed: %s", room_id, server, e)
                last_error = e
        errcode = getattr(last_error, "errcode", None)
        if errcode in RESTRICTED_JOIN_ERRORS:  # no resident server could vouch for the user: say so
            raise MatrixError(400, errcode, f"Could not join through any server: {last_error}")
        raise MatrixError(502, "M_UNKNOWN", f"Could not join through any server: {last_error}")

    async def _join_via(self, server: str, room_id: str, user_id: str, content: dict[str, Any]) -> None:
        try:
            template = await self._client.get_json(
                server, f"/_matrix/federation/v1/make_join/{q(room_id)}/{q(user_id)}",
                {"ver": list(KNOWN_ROOM_VERSIONS)})
        except Exception as e:
            status = getattr(e, "status", None)
            errcode = getattr(e, "errcode", None)
            if status == 403:
                raise forbidden(f"{server} refused the join: {e}") from None
            if errcode == "M_INCOMPATIBLE_ROOM_VERSION":
                raise MatrixError(400, "M_INCOMPATIBLE_ROOM_VERSION", "This room's version is not supported") \
                    from None
            raise
        version = get_room_version(str(template.get("room_version", "1")))
        if version is None:
            raise MatrixError(400, "M_INCOMPATIBLE_ROOM_VERSION", "This room's version is not supported")
        signed, event_id = self._sign_template(server, template, room_id, user_id, version,
                                               {**content, "membership": "join"})
        resp = await self._client.put_json(server, f"/_matrix/federation/v2/send_join/{q(room_id)}/{q(event_id)}",
                                           signed)
        if isinstance(resp, dict) and isinstance(resp.get("event"), dict):
            signed = await self._countersigned(server, signed, resp["event"], version)
        await self._absorb_join(server, room_id, Event(event_id, signed), version, resp)

    async def _countersigned(self, server: str, ours: dict[str, Any], theirs: dict[str, Any],
                             version: RoomVersion) -> dict[str, Any]:
        """The join as the resident server returned it (restricted joins: with the authoriser's
        server's signature): the same event as ours but for signatures, that signature verified."""
        authoriser = (ours.get("content") or {}).get("join_authorised_via_users_server")
        if not isinstance(authoriser, str) or not version.restricted_join_rule:
            return ours  # nothing for the resident server to add
        if _signed_part(theirs) != _signed_part(ours) or not isinstance(theirs.get("signatures"), dict):
            raise MatrixError(502, "M_UNKNOWN", f"{server} returned a different join event")
        signatures = {s: dict(v) for s, v in theirs["signatures"].items() if isinstance(v, dict)}
        signatures.setdefault(self._server_name, {}).update(ours["signatures"][self._server_name])
        merged = {**ours, "signatures": signatures}
        try:
            await self._keys.verify_event(merged, server_of(authoriser), version)
        except Exception as e:
            raise MatrixError(502, "M_UNKNOWN", f"the authorising server's signature on the join is bad: {e}") \
                from None
        return merged

    def _sign_template(self, server: str, template: dict[str, Any], room_id: str, user_id: str,
                       version: RoomVersion, content: dict[str, Any]) -> tuple[dict[str, Any], str]:
        """Fill in and sign a make_join/make_leave template after checking it is what we asked for."""
        proto = template.get("event") or {}
        pdu = {k: proto[k] for k in ("room_id", "sender", "type", "state_key", "prev_events", "auth_events",
                                     "depth") if k in proto}
        if pdu.get("room_id") != room_id or pdu.get("sender") != user_id or pdu.get("type") != "m.room.member" \
                or pdu.get("state_key") != user_id:
            raise MatrixError(502, "M_UNKNOWN", f"{server} sent a bad membership template")
        keep = {k: v for k, v in (proto.get("content") or {}).items() if k == "join_authorised_via_users_server"}
        pdu["content"] = {**keep, **content}
        pdu["origin_server_ts"] = now_ms()
        if version.event_id_in_pdu:
            pdu["event_id"] = new_opaque_event_id(self._server_name)
        signed = sign_event(pdu, self._server_name, self._rooms.signing_key, version)
        return signed, compute_event_id(signed, version)

    async def _absorb_join(self, server: str, room_id: str, join: Event, version: RoomVersion,
                           resp: Any) -> None:
        if not isinstance(resp, dict) or not isinstance(resp.get("state"), list) \
                or not isinstance(resp.get("auth_chain"), list):
            raise MatrixError(502, "M_UNKNOWN", f"{server} sent a bad send_join response")
        state_events = await self._verified(server, room_id, resp["state"], version)
        chain = await self._verified(server, room_id, resp["auth_chain"], version)
        create = next((e for e in state_events if e.type == "m.room.create" and e.state_key == ""), None)
        if create is None:
            raise MatrixError(502, "M_UNKNOWN", f"{server} sent no create event")
        await self._store.rooms.ensure_room(room_id, version.identifier, create.sender, now_ms())
        everything = {e.event_id: e for e in chain + state_events}
        rejected = await self._ingester.store_checked_outliers(list(everything.values()), version)
        state: dict[StateKey, str] = {e.key: e.event_id for e in state_events
                                      if e.is_state and e.event_id not in rejected}
        async with self._rooms.lock(room_id):
            auth_ids = {k: state[k] for k in state}
            auth_events = await self._rooms.get_events(auth_ids.values())
            try:
                check_auth(join, {k: auth_events[v] for k, v in auth_ids.items() if v in auth_events}, version)
            except AuthError as e:
                raise forbidden(f"the join is not allowed by the room's state: {e}") from None
            await self._rooms.persist_remote(join, state)
        log.info("joined %s via %s (%d state events)", room_id, server, len(state))

    async def _verified(self, server: str, room_id: str, pdus: list[Any], version: RoomVersion) -> list[Event]:
        """Events of a peer's response that pass format, signature and hash checks (others are dropped)."""
        events = []
        for pdu in pdus:
            try:
                ev = await self._ingester.verified_event(pdu, version)
            except PduRejected as e:
                log.warning("dropped an event of %s's send_join response: %s", server, e)
                continue
            if ev.room_id == room_id:
                events.append(ev)
        return events

    # --- knocking ----------------------------------------------------------------------

    async def knock(self, room_id: str, user_id: str, servers: list[str], content: dict[str, Any]) -> None:
        """Knock on a room held by other servers (make_knock, send_knock), trying each in turn; the
        knock is then the user's membership outside the room, with the preview state it returned."""
        candidates = [s for s in dict.fromkeys(servers) if s and s != self._server_name]
        if not candidates:
            raise not_found("No known server can take your knock on this room")
        last_error: Exception | None = None
        for server in candidates:
            try:
                await self._knock_via(server, room_id, user_id, content)
                return
            except MatrixError as e:
                if e.errcode in ("M_FORBIDDEN", "M_INCOMPATIBLE_ROOM_VERSION"):
                    raise
                last_error = e
            except Exception as e:  # unreachable or misbehaving peer: try the next one
                status = getattr(e, "status", None)
                if status in (400, 403):
                    raise MatrixError(status, getattr(e, "errcode", None) or "M_FORBIDDEN",
                                      f"{server} refused the knock: {e}") from None
                log.warning("knocking on %s via %s failed: %s", room_id, server, e)
                last_error = e
        raise MatrixError(502, "M_UNKNOWN", f"Could not knock through any server: {last_error}")

    async def _knock_via(self, server: str, room_id: str, user_id: str, content: dict[str, Any]) -> None:
        template = await self._client.get_json(
            server, f"/_matrix/federation/v1/make_knock/{q(room_id)}/{q(user_id)}",
            {"ver": [v.identifier for v in KNOWN_ROOM_VERSIONS.values() if v.knock_join_rule]})
        version = get_room_version(str(template.get("room_version", "")))
        if version is None or not version.knock_join_rule:
            raise MatrixError(400, "M_INCOMPATIBLE_ROOM_VERSION", "This room's version does not support knocking")
        proto = template.get("event") or {}
        if (proto.get("content") or {}).get("membership") != "knock":
            raise MatrixError(502, "M_UNKNOWN", f"{server} sent a bad knock template")
        signed, event_id = self._sign_template(server, template, room_id, user_id, version,
                                               {**content, "membership": "knock"})
        resp = await self._client.put_json(server, f"/_matrix/federation/v1/send_knock/{q(room_id)}/{q(event_id)}",
                                           signed)
        knock = Event(event_id, signed)
        shown = received_invite_state(resp.get("knock_room_state") if isinstance(resp, dict) else None,
                                      knock, version)
        await self._rooms.record_outside_membership(knock, version.identifier,
                                                    {"knock_room_state": shown, "knock_via": server})

    # --- inviting -----------------------------------------------------------------

    async def countersign_invite(self, event: Event) -> Event:
        """Send our invite of a remote user to their server, which must sign it too."""
        target = event.state_key or ""
        destination = server_of(target)
        version = await self._rooms.room_version(event.room_id)
        assert version is not None
        state = await self._rooms.current_state(event.room_id)
        shown = [e for k, e in state.items() if k[0] in INVITE_STATE_TYPES]
        if ("m.room.member", event.sender) in state:
            shown.append(state[("m.room.member", event.sender)])
        full = full_pdus_in_invite_state(version)
        invite_state = [e.pdu if full else stripped_state(e) for e in shown]
        try:
            resp = await self._client.put_json(
                destination, f"/_matrix/federation/v2/invite/{q(event.room_id)}/{q(event.event_id)}",
                {"event": event.pdu, "room_version": version.identifier, "invite_room_state": invite_state})
        except Exception as e:
            raise MatrixError(getattr(e, "status", 502) if getattr(e, "status", 0) in (400, 403) else 502,
                              getattr(e, "errcode", None) or "M_UNKNOWN",
                              f"{destination} did not accept the invite: {e}") from None
        signed = resp.get("event") if isinstance(resp, dict) else None
        # The same event but for signatures (in v1/v2 the ID alone proves nothing: it is a field).
        if not isinstance(signed, dict) or _signed_part(signed) != _signed_part(event.pdu):
            raise MatrixError(502, "M_UNKNOWN", f"{destination} returned a different invite event")
        try:
            await self._keys.verify_event(signed, destination, version)
        except Exception as e:
            raise MatrixError(502, "M_UNKNOWN", f"{destination}'s signature on the invite is bad: {e}") from None
        return Event(event.event_id, signed)

    # --- leaving a room we only know by an invite or a knock --------------------------

    async def reject_invite(self, room_id: str, user_id: str, inviter_server: str) -> None:
        """Leave through `inviter_server`: rejecting an invite, or retracting a knock made through it."""
        template = await self._client.get_json(inviter_server,
                                               f"/_matrix/federation/v1/make_leave/{q(room_id)}/{q(user_id)}")
        version = get_room_version(str(template.get("room_version", "")))
        if version is None:
            raise MatrixError(400, "M_INCOMPATIBLE_ROOM_VERSION", "This room's version is not supported")
        signed, event_id = self._sign_template(inviter_server, template, room_id, user_id, version,
                                               {"membership": "leave"})
        await self._client.put_json(inviter_server, f"/_matrix/federation/v2/send_leave/{q(room_id)}/{q(event_id)}",
                                    signed)
        await self._rooms.record_outside_membership(Event(event_id, signed), version.identifier)
