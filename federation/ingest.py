"""The receipt pipeline for PDUs from other servers, in the spec's order.

1. format, 2. signatures (drop), 3. content hash (keep the redacted form),
4. auth against the event's own auth_events (reject), 5. against the state
before it (reject), 6. against the room's current state (soft-fail).
Missing prev_events are fetched with get_missing_events; what cannot be
fetched is bridged with state_ids + event. Rejected and soft-failed events are
stored as such and never served as accepted.
"""

from __future__ import annotations

import logging
from functools import partial
from urllib.parse import quote
from typing import Any, Protocol

from canonicaljson import encode_canonical_json

from homeserver.events.auth_rules import AuthError, auth_types_for_event, check_auth, check_auth_events
from homeserver.events.crypto import check_content_hash, compute_event_id
from homeserver.events.event import Event, StateKey
from homeserver.events.redaction import redact
from homeserver.events.room_versions import RoomVersion
from homeserver.rooms.rooms import MAX_PDU_BYTES, Rooms
from homeserver.events.state_res import resolve_state
from homeserver.json_input import non_canonical_reason

q = partial(quote, safe="")  # IDs as path segments

log = logging.getLogger("whispr.federation.ingest")

MAX_MISSING_EVENTS = 20
MAX_FETCHED_AUTH = 500
_REQUIRED = {"type": str, "sender": str, "room_id": str, "content": dict, "prev_events": list,
             "auth_events": list, "depth": int, "origin_server_ts": int, "hashes": dict, "signatures": dict}


class PduRejected(Exception):
    """The PDU is dropped (bad format or signature): not stored at all."""


class SignatureChecker(Protocol):
    async def verify_event(self, pdu: dict[str, Any], server_name: str, room_version: RoomVersion) -> None: ...


class FederationRequests(Protocol):
    async def get_json(self, destination: str, path: str, query: dict[str, Any] | None = None) -> Any: ...

    async def post_json(self, destination: str, path: str, body: Any) -> Any: ...


def server_of(user_id: str) -> str:
    return user_id.split(":", 1)[1] if ":" in user_id else ""


def check_format(pdu: Any, version: RoomVersion) -> None:
    if not isinstance(pdu, dict):
        raise PduRejected("PDU is not an object")
    for key, kind in _REQUIRED.items():
        if key == "room_id" and version.room_id_from_create_event and pdu.get("type") == "m.room.create":
            continue
        value = pdu.get(key)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise PduRejected(f"PDU field {key} is missing or of the wrong type")
    if version.event_id_in_pdu and not _is_opaque_event_id(pdu.get("event_id")):
        raise PduRejected("event_id must be a string of the form $opaque:domain in this room version")
    is_reference = _is_hash_pair if version.event_refs_with_hashes else _is_event_id
    if not all(is_reference(e) for e in pdu["prev_events"] + pdu["auth_events"]):
        raise PduRejected("prev_events and auth_events must list event IDs"
                          + (" as [event_id, {hashes}] pairs" if version.event_refs_with_hashes else ""))
    if len(pdu["prev_events"]) > 20 or len(pdu["auth_events"]) > 10:
        raise PduRejected("too many prev_events or auth_events")
    if "state_key" in pdu and not isinstance(pdu["state_key"], str):
        raise PduRejected("state_key must be a string")
    # Before v6 the spec tells servers not to enforce canonical JSON (floats, big integers).
    reason = non_canonical_reason(pdu) if version.strict_canonical_json else None
    if reason is not None:
        raise PduRejected(f"PDU is not canonical JSON: {reason}")
    if len(encode_canonical_json(pdu)) > MAX_PDU_BYTES:
        raise PduRejected("PDU is larger than 65536 bytes")


def is_plain_outlier(event: Event) -> bool:
    """Held outside the timeline only because another event needed it (auth chain, state): not
    judged as a PDU of its own yet, unlike a rejected or soft-failed event."""
    return bool(event.unsigned.get("_outlier")) and event.rejected is None


def _outcome(held: Event) -> str | None:
    """What a /send answer says again for a PDU judged before: its rejection, or nothing."""
    return None if held.rejected is None else f"rejected: {held.rejected}"


def _is_event_id(value: Any) -> bool:
    return isinstance(value, str)


def _is_opaque_event_id(value: Any) -> bool:
    """A v1/v2 event ID: `$opaque:domain`, at most 255 characters, none of them blank or control."""
    return isinstance(value, str) and value.startswith("$") and ":" in value and len(value) <= 255 \
        and value.isprintable() and not any(c.isspace() for c in value)


def _is_hash_pair(value: Any) -> bool:
    """A v1/v2 event reference: [event_id, {"sha256": ...}]."""
    return isinstance(value, list) and len(value) == 2 and _is_opaque_event_id(value[0]) \
        and isinstance(value[1], dict)


class Ingester:
    def __init__(self, server_name: str, rooms: Rooms, keys: SignatureChecker, client: FederationRequests) -> None:
        self._server_name = server_name
        self._rooms = rooms
        self._keys = keys
        self._client = client

    async def verified_event(self, pdu: Any, version: RoomVersion) -> Event:
        """Steps 1-3: format, signatures, content hash. Raises PduRejected to drop it."""
        check_format(pdu, version)
        sender_server = server_of(pdu["sender"])
        try:
            await self._keys.verify_event(pdu, sender_server, version)
            id_server = pdu["event_id"].split(":", 1)[1] if version.event_id_in_pdu else sender_server
            if id_server != sender_server:  # v1/v2: the server that named the event signed it too
                await self._keys.verify_event(pdu, id_server, version)
            authoriser = pdu.get("content", {}).get("join_authorised_via_users_server")
            if pdu["type"] == "m.room.member" and isinstance(authoriser, str) and \
                    pdu["content"].get("membership") == "join" and version.restricted_join_rule:
                await self._keys.verify_event(pdu, server_of(authoriser), version)
        except PduRejected:
            raise
        except Exception as e:
            raise PduRejected(f"bad signature: {e}") from None
        if not check_content_hash(pdu):
            log.warning("content hash mismatch for an event from %s: keeping the redacted form", sender_server)
            pdu = redact(pdu, version)
        return Event(compute_event_id(pdu, version), pdu)

    async def receive(self, origin: str, pdu: Any) -> tuple[str, str | None]:
        """Process one PDU of a transaction: (its event ID, None if accepted else why not).

        A failure of our own while processing one PDU is that PDU's error, logged: it must not
        fail the whole transaction, which the peer would then retry forever."""
        try:
            return await self._receive(origin, pdu)
        except Exception:
            log.exception("failed to process a PDU from %s", origin)
            return await self._event_id_of(pdu), "internal error while processing the event"

    async def _event_id_of(self, pdu: Any) -> str:
        """The event ID a PDU claims to have, or "" when it cannot be told."""
        try:
            version = await self._rooms.room_version(pdu["room_id"])
            return compute_event_id(pdu, version) if version is not None else ""
        except Exception:
            return ""

    async def _receive(self, origin: str, pdu: Any) -> tuple[str, str | None]:
        room_id = pdu.get("room_id") if isinstance(pdu, dict) else None
        if not isinstance(room_id, str):
            return "", "this server is not in that room"
        version = await self._rooms.room_version(room_id)
        room = await self._rooms.room(room_id) if version is not None else None
        if version is not None and room is not None and room.current_group is None:
            return await self._outside_membership(origin, pdu, version)
        if version is None or room is None or room.current_group is None:
            return "", "this server is not in that room"
        try:
            event = await self.verified_event(pdu, version)
        except PduRejected as e:
            log.warning("dropped a PDU from %s: %s", origin, e)
            try:
                return compute_event_id(pdu, version), str(e)
            except Exception:
                return "", str(e)
        held = await self._rooms.get_event(event.event_id)
        if held is not None and not is_plain_outlier(held):
            return event.event_id, _outcome(held)
        async with self._rooms.lock(event.room_id):
            return event.event_id, await self._process(origin, event, version, fetch_missing=True)

    async def _outside_membership(self, origin: str, pdu: Any, version: RoomVersion) -> tuple[str, str | None]:
        """A PDU of a room this server is not in but knows of, through a local user's pending
        invite or knock: only the end of that (a kick of the knock, the invite withdrawn, a ban) is
        taken, as that user's membership, when the sending server made and signed it, it names the
        pending membership among its auth events (it was made against it), and an invite is
        withdrawn by its inviter (who else may, this server cannot tell)."""
        try:
            event = await self.verified_event(pdu, version)
        except PduRejected as e:
            log.warning("dropped a PDU from %s: %s", origin, e)
            return await self._event_id_of(pdu), str(e)
        target = event.state_key or ""
        current = await self._rooms.outside_membership(event.room_id, target) \
            if event.type == "m.room.member" and server_of(target) == self._server_name else None
        if current is None or current.membership not in ("invite", "knock") \
                or event.membership not in ("leave", "ban") or server_of(event.sender) != origin \
                or current.event_id not in event.auth_event_ids \
                or (current.membership == "invite" and event.sender != current.sender):
            return event.event_id, "this server is not in that room"
        await self._rooms.record_outside_membership(event, version.identifier)
        log.info("%s ended %s's %s in %s", origin, target, current.membership, event.room_id)
        return event.event_id, None

    async def process(self, origin: str, event: Event, version: RoomVersion) -> str | None:
        """Steps 4-6 for an event already verified (send_join, send_leave); the caller holds the room lock."""
        return await self._process(origin, event, version, fetch_missing=False)

    async def _process(self, origin: str, event: Event, version: RoomVersion, fetch_missing: bool) -> str | None:
        held = await self._rooms.get_event(event.event_id)
        if held is not None and not is_plain_outlier(held):
            return _outcome(held)
        # An event of another room as a parent would bring that room's state in as the state before it.
        prevs = await self._rooms.get_events(event.prev_event_ids)
        if any(prev.room_id != event.room_id for prev in prevs.values()):
            log.warning("rejected %s from %s: a prev event is of another room", event.event_id, origin)
            await self._rooms.persist_outlier(event, rejected="a prev event is of another room")
            return "rejected: a prev event is of another room"
        # Missing prev events first: fetched by get_missing_events, they join the timeline; found
        # first among the auth events, they would only be outliers.
        if fetch_missing:
            await self._fetch_missing_prevs(origin, event, version)
        # Step 4: auth against the event's own auth events.
        auth = await self._auth_events(origin, event, version)
        if auth is None:
            await self._rooms.persist_outlier(event, rejected="missing or rejected auth events")
            return "missing or rejected auth events"
        try:
            check_auth_events(event, auth[0], version)
            check_auth(event, auth[1], version)
        except AuthError as e:
            log.warning("rejected %s from %s: %s", event.event_id, origin, e)
            await self._rooms.persist_outlier(event, rejected=str(e))
            return f"rejected: {e}"
        # Step 5: auth against the state before it.
        state_before = await self._state_before(origin, event, version)
        if state_before is None:
            await self._rooms.persist_outlier(event, rejected="cannot compute the state before it")
            return "cannot compute the state before the event"
        try:
            check_auth(event, await self._auth_state(event, state_before, version), version)
        except AuthError as e:
            log.warning("rejected %s from %s against the state before it: %s", event.event_id, origin, e)
            await self._rooms.persist_rejected(event, str(e), state_before)
            return f"rejected: {e}"
        # Step 6: against the current state; failing it only soft-fails the event.
        current = await self._rooms.current_state_ids(event.room_id)
        try:
            check_auth(event, await self._auth_state(event, current, version), version)
        except AuthError as e:
            log.warning("soft-failed %s from %s: %s", event.event_id, origin, e)
            await self._rooms.persist_soft_failed(event, state_before)
            return None
        await self._rooms.persist_remote(event, state_before)
        return None

    async def check_own_auth(self, origin: str, event: Event, version: RoomVersion) -> str | None:
        """Step 4 alone, for history (backfill), where the state before each event is not known:
        auth against the event's own auth events, fetched as checked outliers when missing.
        None if it passes, else why not."""
        auth = await self._auth_events(origin, event, version)
        if auth is None:
            return "missing or rejected auth events"
        try:
            check_auth_events(event, auth[0], version)
            check_auth(event, auth[1], version)
        except AuthError as e:
            return f"rejected: {e}"
        return None

    async def _auth_state(self, event: Event, state: dict[StateKey, str],
                          version: RoomVersion) -> dict[StateKey, Event]:
        wanted = auth_types_for_event(event, version)
        if not version.create_event_in_auth_events:
            wanted = wanted | {("m.room.create", "")}
        ids = {k: state[k] for k in wanted if k in state}
        found = await self._rooms.get_events(ids.values())
        return {k: found[v] for k, v in ids.items() if v in found and found[v].rejected is None}

    async def _auth_events(self, origin: str, event: Event,
                           version: RoomVersion) -> tuple[list[Event], dict[StateKey, Event]] | None:
        """The event's listed auth events and the auth state they make (with v12's implied create
        event), fetching unknown ones as checked outliers; None if some cannot be had or were rejected."""
        ids = list(event.auth_event_ids)
        if not version.create_event_in_auth_events and event.type != "m.room.create":
            ids.append("$" + event.room_id[1:])  # v12: the create event is implied by the room ID
        known = await self._rooms.get_events(ids)
        if any(i not in known for i in ids):
            await self._fetch_outliers(origin, event.room_id, [i for i in ids if i not in known], version)
            known = await self._rooms.get_events(ids)
        if any(i not in known or known[i].rejected for i in ids):
            return None
        return [known[i] for i in event.auth_event_ids], {known[i].key: known[i] for i in ids}

    async def _fetch_outliers(self, origin: str, room_id: str, event_ids: list[str], version: RoomVersion) -> None:
        """Fetch events (and, recursively, their auth events) and store them as checked outliers."""
        queue, seen = list(event_ids), set(event_ids)
        fetched: list[Event] = []
        while queue and len(fetched) < MAX_FETCHED_AUTH:
            event_id = queue.pop()
            try:
                body = await self._client.get_json(origin, f"/_matrix/federation/v1/event/{q(event_id)}")
                pdu = body["pdus"][0]
                event = await self.verified_event(pdu, version)
            except Exception as e:
                log.warning("could not fetch %s from %s: %s", event_id, origin, e)
                continue
            if event.event_id != event_id or event.room_id != room_id:
                log.warning("%s sent a different event for %s", origin, event_id)
                continue
            fetched.append(event)
            for auth_id in event.auth_event_ids:
                if auth_id not in seen and await self._rooms.get_event(auth_id) is None:
                    seen.add(auth_id)
                    queue.append(auth_id)
        await self.store_checked_outliers(fetched, version)

    async def store_checked_outliers(self, events: list[Event], version: RoomVersion) -> dict[str, str]:
        """Store events in auth order, each checked against its own auth events; returns rejections."""
        rejected: dict[str, str] = {}
        by_id = {e.event_id: e for e in events}
        done: set[str] = set()

        async def visit(event: Event, depth: int = 0) -> None:
            if event.event_id in done or depth > 200:
                return
            done.add(event.event_id)
            for auth_id in event.auth_event_ids:
                if auth_id in by_id:
                    await visit(by_id[auth_id], depth + 1)
            auth_ids = list(event.auth_event_ids)
            if not version.create_event_in_auth_events and event.type != "m.room.create":
                auth_ids.append("$" + event.room_id[1:])
            auth = await self._rooms.get_events(auth_ids)
            reason = None
            if any(a not in auth for a in auth_ids):
                reason = "missing auth events"
            elif any(auth[a].rejected for a in auth_ids):
                reason = "an auth event was rejected"
            else:
                try:
                    listed = [auth[a] for a in event.auth_event_ids]
                    check_auth_events(event, listed, version)
                    check_auth(event, {e.key: e for e in auth.values()}, version)
                except AuthError as e:
                    reason = str(e)
            if reason:
                rejected[event.event_id] = reason
                log.warning("rejected outlier %s: %s", event.event_id, reason)
            await self._rooms.persist_outlier(event, rejected=reason)

        for event in sorted(events, key=lambda e: e.depth):
            await visit(event)
        return rejected

    async def _fetch_missing_prevs(self, origin: str, event: Event, version: RoomVersion) -> None:
        known = await self._rooms.get_events(event.prev_event_ids)
        if all(p in known and not is_plain_outlier(known[p]) for p in event.prev_event_ids):
            return
        extremities = await self._rooms.forward_extremities(event.room_id)
        try:
            body = await self._client.post_json(
                origin, f"/_matrix/federation/v1/get_missing_events/{q(event.room_id)}",
                {"earliest_events": extremities, "latest_events": [event.event_id], "limit": MAX_MISSING_EVENTS,
                 "min_depth": 0})
            pdus = body.get("events", [])
        except Exception as e:
            log.warning("get_missing_events from %s failed: %s", origin, e)
            return
        missing: list[Event] = []
        for pdu in pdus[:MAX_MISSING_EVENTS]:
            try:
                missing.append(await self.verified_event(pdu, version))
            except PduRejected as e:
                log.warning("dropped a missing event from %s: %s", origin, e)
        for ev in sorted(missing, key=lambda e: (e.depth, e.origin_server_ts)):
            if ev.room_id == event.room_id:
                await self._process(origin, ev, version, fetch_missing=False)

    async def _state_before(self, origin: str, event: Event, version: RoomVersion) -> dict[StateKey, str] | None:
        """Resolve the states after each prev event; a prev we lack is bridged by asking for its state."""
        states: list[dict[StateKey, str]] = []
        for prev_id in event.prev_event_ids:
            prev = await self._rooms.get_event(prev_id)
            if prev is not None and not prev.unsigned.get("_outlier"):
                # Kept for accepted, soft-failed and (as the state before them) rejected events, but
                # not for those refused before their state was known.
                state = await self._rooms.state_at_event(prev_id)
                if state or (prev.rejected is None and not prev.unsigned.get("_soft_failed")):
                    states.append(dict(state))
                    continue
            remote = await self._remote_state_after(origin, event.room_id, prev_id, version)
            if remote is None:
                return None
            states.append(remote)
        if not states:
            return None
        if len(states) == 1:
            return states[0]
        return await resolve_state(version, states, self._rooms.get_event)

    async def _remote_state_after(self, origin: str, room_id: str, event_id: str,
                                  version: RoomVersion) -> dict[StateKey, str] | None:
        try:
            body = await self._client.get_json(origin, f"/_matrix/federation/v1/state_ids/{q(room_id)}",
                                               {"event_id": event_id})
            state_ids = [i for i in body.get("pdu_ids", []) if isinstance(i, str)]
            auth_ids = [i for i in body.get("auth_chain_ids", []) if isinstance(i, str)]
        except Exception as e:
            log.warning("state_ids from %s failed: %s", origin, e)
            return None
        wanted = list(dict.fromkeys(state_ids + auth_ids + [event_id]))
        known = await self._rooms.get_events(wanted)
        missing = [i for i in wanted if i not in known]
        if missing:
            await self._fetch_outliers(origin, room_id, missing, version)
        found = {i: e for i, e in (await self._rooms.get_events(state_ids + [event_id])).items()
                 if e.room_id == room_id}  # never another room's events, which this server may hold
        state = {found[i].key: i for i in state_ids if i in found and found[i].is_state and not found[i].rejected}
        prev = found.get(event_id)
        if prev is not None and prev.is_state and not prev.rejected:
            state[prev.key] = event_id  # state_ids gives the state before the event
        return state
