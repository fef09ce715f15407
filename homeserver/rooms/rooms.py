"""Rooms: building, authorising and persisting events, state and membership.

Every event this server creates is a full PDU of its room's version: auth and
prev events, depth, content hash, our signature and a reference-hash ID. The
authorization rules are checked on local events exactly as on remote ones.
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
from collections import OrderedDict
from dataclasses import dataclass, replace
from typing import Any, Awaitable, Callable, Iterable, Protocol

from canonicaljson import encode_canonical_json
from signedjson.key import SigningKey

from homeserver.events.auth_rules import (AuthError, auth_types_for_event, check_auth, local_redaction_allowed,
                                   may_redact_any, redaction_allowed, same_event_id_domain, server_of)
from homeserver.clock import now_ms
from homeserver.errors import MatrixError, bad_json, forbidden, not_found
from homeserver.events.crypto import compute_event_id, event_reference, new_opaque_event_id, sign_event
from homeserver.events.event import Event, StateKey
from homeserver.sync.notifier import Notifier
from homeserver.rooms.recent_events import RecentEvents
from homeserver.events.room_versions import RoomVersion, get_room_version
from homeserver.events.state_res import resolve_state
from homeserver.json_input import non_canonical_reason
from storage.database import ConstraintViolation
from storage.push import EventPush
from storage.rooms import HeldRedaction, RoomInfo, StateMap, TxnRef
from storage.store import Store

log = logging.getLogger("whispr.rooms")

MAX_PDU_BYTES = 65_536
MAX_PREV_EVENTS = 10
EVENT_CACHE_SIZE = 20_000
SERVERS_CACHE_SIZE = 4_096
HEADS_CACHE_SIZE = 4_096
CREATE: StateKey = ("m.room.create", "")
POWER_LEVELS: StateKey = ("m.room.power_levels", "")
POWER_LEVEL_INT_KEYS = ("ban", "events_default", "invite", "kick", "redact", "state_default", "users_default")


def validate_content(event_type: str, content: Any, state_key: Any) -> None:
    """Shape checks that make bad input M_BAD_JSON rather than an auth failure."""
    if not isinstance(content, dict):
        raise bad_json("content must be a JSON object")
    if not isinstance(event_type, str) or not event_type or len(event_type) > 255:
        raise bad_json("event type must be a string of 1-255 characters")
    if state_key is not None and (not isinstance(state_key, str) or len(state_key) > 255):
        raise bad_json("state_key must be a string of at most 255 characters")
    if event_type == "m.room.member" and not isinstance(content.get("membership"), str):
        raise bad_json("m.room.member content needs a membership string")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and -(2**53) + 1 <= value <= 2**53 - 1


# Room versions 1-9 take levels written as integer strings too ("50", " +050 "), which rooms made
# by older servers hold and clients send back when they change one entry.
_LEVEL_STRING = re.compile(r"^\s*[+-]?[0-9]+\s*$")


def _check_power_levels(content: dict[str, Any], version: RoomVersion) -> None:
    def level(value: Any) -> bool:
        return _is_int(value) or (not version.integer_only_power_levels and isinstance(value, str)
                                  and _LEVEL_STRING.match(value) is not None)

    for key in POWER_LEVEL_INT_KEYS:
        if key in content and not level(content[key]):
            raise bad_json(f"power level {key} must be an integer")
    for key in ("events", "users", "notifications"):
        value = content.get(key, {})
        if not isinstance(value, dict) or not all(level(v) for v in value.values()):
            raise bad_json(f"power levels {key} must map to integers")


def _redacts_where_kept(version: RoomVersion, content: dict[str, Any],
                        extra: dict[str, Any] | None) -> dict[str, Any] | None:
    """A local m.room.redaction with its target where its room version keeps it: v10 reads the
    top-level key, so a target a client gave in content (as v11+ has it) is copied there.
    400 unless there is one."""
    if not version.redacts_in_content and "redacts" not in (extra or {}) and isinstance(content.get("redacts"), str):
        extra = {**(extra or {}), "redacts": content["redacts"]}
    target = content.get("redacts") if version.redacts_in_content else (extra or {}).get("redacts")
    if not isinstance(target, str) or not target:
        raise bad_json("m.room.redaction needs the ID of the event it redacts (redacts)")
    return extra


class PushHook(Protocol):
    """Push evaluation (homeserver/push): its rows are stored in the event's own transaction."""

    async def evaluate(self, event: Event, state: StateMap, group: int | None) -> EventPush | None: ...

    def stored(self, event: Event, push: EventPush | None) -> None: ...


@dataclass(frozen=True)
class _Head:
    """A room as this process left it after its last write: the send context without a query."""

    room: RoomInfo
    extremities: list[str]
    stream: int


class Rooms:
    def __init__(self, server_name: str, store: Store, signing_key: SigningKey, notifier: Notifier) -> None:
        self.server_name = server_name
        self._store = store
        self._key = signing_key
        self._notifier = notifier
        self._locks: dict[str, asyncio.Lock] = {}
        self._events: OrderedDict[str, Event] = OrderedDict()
        self._versions: dict[str, RoomVersion] = {}
        # Each room's latest timeline events, for /sync; kept exact through the notifier.
        self.recent = RecentEvents()
        notifier.on_stream.append(self.recent.observe)
        # Called after each local event is stored, with the state group after it (the federation
        # sender queues it).
        self.on_local_event: list[Callable[[Event, int | None], Awaitable[None]]] = []
        # Called after each event is stored in a room's timeline, local or received; must not block
        # (the room's lock may be held).
        self.on_stored: list[Callable[[Event], None]] = []
        # Called after every event is stored, local or received, and every outside membership
        # (friends follow member events); the room's lock may be held, so no new events in them.
        self.on_event: list[Callable[[Event], Awaitable[None]]] = []
        self._servers: OrderedDict[int, frozenset[str]] = OrderedDict()
        # What this process last wrote to each room (see _head_of); only when it is the only writer.
        self._heads: OrderedDict[str, _Head] = OrderedDict()
        self.push: PushHook | None = None

    @property
    def signing_key(self) -> SigningKey:
        return self._key

    def forget_room(self, room_id: str) -> None:
        """Drop what this process remembers of a room an admin purged."""
        self._heads.pop(room_id, None)
        self._versions.pop(room_id, None)

    # --- reading ---------------------------------------------------------------

    async def room(self, room_id: str) -> RoomInfo | None:
        return await self._store.rooms.get_room(room_id)

    async def require_room(self, room_id: str) -> tuple[RoomInfo, RoomVersion]:
        room = await self._store.rooms.get_room(room_id)
        if room is None:
            raise not_found("Unknown room")
        version = get_room_version(room.room_version)
        if version is None:
            raise MatrixError(500, "M_UNKNOWN", f"room version {room.room_version} is not supported")
        return room, version

    async def room_version(self, room_id: str) -> RoomVersion | None:
        """A room's version never changes, so it is cached for good."""
        version = self._versions.get(room_id)
        if version is None:
            room = await self._store.rooms.get_room(room_id)
            version = get_room_version(room.room_version) if room is not None else None
            if version is not None:
                self._versions[room_id] = version
        return version

    async def get_event(self, event_id: str) -> Event | None:
        ev = self._events.get(event_id)
        if ev is not None:
            self._events.move_to_end(event_id)
            return ev
        ev = await self._store.rooms.get_event(event_id)
        if ev is not None:
            self._cache(ev)
        return ev

    async def get_events(self, event_ids: Iterable[str]) -> dict[str, Event]:
        found: dict[str, Event] = {}
        missing = []
        for eid in event_ids:
            ev = self._events.get(eid)
            if ev is None:
                missing.append(eid)
            else:
                found[eid] = ev
        if missing:
            loaded = await self._store.rooms.get_events(missing)
            for ev in loaded.values():
                self._cache(ev)
            found.update(loaded)
        return found

    def _cache(self, ev: Event) -> None:
        self._events[ev.event_id] = ev
        self._events.move_to_end(ev.event_id)
        while len(self._events) > EVENT_CACHE_SIZE:
            self._events.popitem(last=False)

    def forget_cached(self, event_id: str) -> None:
        self._events.pop(event_id, None)

    async def current_state_ids(self, room_id: str) -> StateMap:
        room = await self._store.rooms.get_room(room_id)
        return {} if room is None else await self._store.rooms.state_map(room.current_group)

    async def current_state(self, room_id: str) -> dict[StateKey, Event]:
        ids = await self.current_state_ids(room_id)
        events = await self.get_events(ids.values())
        return {k: events[eid] for k, eid in ids.items() if eid in events}

    async def state_event(self, room_id: str, event_type: str, state_key: str = "") -> Event | None:
        eid = (await self.current_state_ids(room_id)).get((event_type, state_key))
        return None if eid is None else await self.get_event(eid)

    async def joined_servers(self, state_group: int) -> frozenset[str]:
        """Servers with a joined member in a state group. Groups never change, so the answer is
        kept: a message (which adds no state) costs no membership scan to route."""
        servers = self._servers.get(state_group)
        if servers is None:
            state = await self._store.rooms.state_map(state_group)
            members = await self.get_events(eid for key, eid in state.items() if key[0] == "m.room.member")
            servers = frozenset(server_of(e.state_key) for e in members.values()
                                if e.membership == "join" and e.state_key and ":" in e.state_key)
            self._servers[state_group] = servers
            if len(self._servers) > SERVERS_CACHE_SIZE:
                self._servers.popitem(last=False)
        return servers

    async def state_at_event(self, event_id: str, after: bool = True) -> StateMap:
        groups = await self._store.rooms.event_state_groups(event_id)
        if groups is None:
            return {}
        return await self._store.rooms.state_map(groups[1] if after else groups[0])

    async def forward_extremities(self, room_id: str) -> list[str]:
        """The room's latest events, which nothing held follows yet (where gap filling stops)."""
        return await self._store.rooms.forward_extremities(room_id)

    async def membership(self, room_id: str, user_id: str) -> str | None:
        ev = await self.state_event(room_id, "m.room.member", user_id)
        return None if ev is None else ev.membership

    async def require_joined(self, room_id: str, user_id: str) -> None:
        if await self._store.rooms.get_room(room_id) is None:
            raise forbidden("You are not in this room")  # do not reveal whether it exists
        if await self.membership(room_id, user_id) != "join":
            raise forbidden("You are not joined to this room")

    # --- writing ----------------------------------------------------------------

    def _lock(self, room_id: str) -> asyncio.Lock:
        lock = self._locks.get(room_id)
        if lock is None:
            lock = self._locks[room_id] = asyncio.Lock()
        return lock

    def lock(self, room_id: str) -> asyncio.Lock:
        """Held while a room's extremities and state move (local sends and remote events alike)."""
        return self._lock(room_id)

    async def create_event(self, room_id: str, sender: str, event_type: str, content: dict[str, Any],
                           state_key: str | None = None, txn: TxnRef | None = None,
                           extra: dict[str, Any] | None = None,
                           countersign: Callable[[Event], Awaitable[Event]] | None = None) -> Event:
        """Build, sign, authorise and persist one event in a room we hold; wake syncs.

        `countersign` lets another server sign the event before it is stored (remote invites)."""
        validate_content(event_type, content, state_key)
        try:
            return await self._create_event(room_id, sender, event_type, content, state_key, txn, extra,
                                            countersign)
        except ConstraintViolation:
            # The transaction ID was used already (a retry; the store's unique index says so, in one
            # place for every process): answer with the event it made. Nothing of this one was kept.
            existing = await self._store.rooms.event_for_txn(sender, txn) if txn is not None else None
            ev = await self.get_event(existing) if existing is not None else None
            if ev is None:
                raise
            return ev

    async def _create_event(self, room_id: str, sender: str, event_type: str, content: dict[str, Any],
                            state_key: str | None, txn: TxnRef | None, extra: dict[str, Any] | None,
                            countersign: Callable[[Event], Awaitable[Event]] | None) -> Event:
        async with self._lock(room_id):
            room, extremities = await self._head_of(room_id)
            if room is None or room.current_group is None:
                raise forbidden("You are not in this room")  # unknown rooms look the same
            version = get_room_version(room.room_version)
            assert version is not None
            if event_type == "m.room.redaction":
                extra = _redacts_where_kept(version, content, extra)
            if event_type == "m.room.power_levels":
                _check_power_levels(content, version)
            state = await self._store.rooms.state_map(room.current_group)
            pdu, prev_ids = await self._template(room_id, version, state, sender, event_type, content, state_key,
                                                 extremities)
            pdu.update(extra or {})
            event = await self._sign_and_check(pdu, version, state)
            redacts = await self._check_local_redaction(event, version, state) \
                if event_type == "m.room.redaction" else None
            if countersign is not None:
                event = await countersign(event)
            return await self._persist(event, room, state, prev_ids, txn, extremities, redacts)

    async def _head_of(self, room_id: str) -> tuple[RoomInfo | None, list[str]]:
        """The room and its forward extremities; the caller holds the room's lock.

        When this process is the only writer (no Redis) and nothing has happened in the room
        since its own last write (the notifier has heard of every position up to that write and
        of none in the room after it), that write's outcome is still the truth: no query."""
        head = self._heads.get(room_id)
        if head is not None and not self._notifier.shared and self._notifier.position >= head.stream \
                and self._notifier.room_positions.get(room_id) == head.stream:
            return head.room, head.extremities
        self._heads.pop(room_id, None)
        context = await self._store.rooms.send_context(room_id)
        return context.room, context.extremities

    async def _template(self, room_id: str, version: RoomVersion, state: StateMap, sender: str, event_type: str,
                        content: dict[str, Any], state_key: str | None,
                        extremities: list[str] | None = None) -> tuple[dict[str, Any], list[str]]:
        if extremities is None:
            extremities = await self._store.rooms.forward_extremities(room_id)
        prev_ids = extremities[:MAX_PREV_EVENTS]
        prevs = await self.get_events(prev_ids)
        pdu: dict[str, Any] = {
            "room_id": room_id, "sender": sender, "type": event_type, "content": content,
            "origin_server_ts": now_ms(), "prev_events": prev_ids,
            "depth": min(max((e.depth for e in prevs.values()), default=0) + 1, 2**63 - 1),
        }
        if state_key is not None:
            pdu["state_key"] = state_key
        auth_ids = [state[k] for k in sorted(auth_types_for_event(pdu, version)) if k in state]
        pdu["auth_events"] = auth_ids
        if version.event_refs_with_hashes:  # v1/v2: [event_id, {hashes}] pairs, and the ID in the PDU
            auths = await self.get_events(auth_ids)
            pdu["prev_events"] = [event_reference(i, prevs[i].pdu, version) for i in prev_ids if i in prevs]
            pdu["auth_events"] = [event_reference(i, auths[i].pdu, version) for i in auth_ids if i in auths]
            pdu["event_id"] = new_opaque_event_id(self.server_name)
        return pdu, prev_ids

    async def event_template(self, room_id: str, sender: str, event_type: str, content: dict[str, Any],
                             state_key: str) -> tuple[dict[str, Any], RoomVersion]:
        """An unsigned event for another server to sign (make_join, make_leave)."""
        room, version = await self.require_room(room_id)
        if room.current_group is None:
            raise not_found("This server is not in that room")
        state = await self._store.rooms.state_map(room.current_group)
        pdu, _ = await self._template(room_id, version, state, sender, event_type, content, state_key)
        pdu["origin"] = self.server_name  # still expected by some peers in templates
        pdu.pop("event_id", None)  # v1/v2: the server that signs the event names it
        return pdu, version

    async def create_room_event(self, version: RoomVersion, sender: str, content: dict[str, Any],
                                is_public: bool) -> Event:
        """The m.room.create event, which has no parents; its room ID is random, or (v12) its hash."""
        pdu: dict[str, Any] = {"sender": sender, "type": "m.room.create", "state_key": "", "content": content,
                               "origin_server_ts": now_ms(), "prev_events": [], "auth_events": [], "depth": 1}
        if not version.room_id_from_create_event:
            pdu["room_id"] = f"!{secrets.token_urlsafe(18)}:{self.server_name}"
        if version.event_id_in_pdu:
            pdu["event_id"] = new_opaque_event_id(self.server_name)
        event = await self._sign_and_check(pdu, version, {})
        room_id = event.room_id
        await self._store.rooms.create_room(room_id, version.identifier, sender, now_ms(), is_public)
        room = await self._store.rooms.get_room(room_id)
        assert room is not None
        return await self._persist(event, room, {}, [], None)

    async def _sign_and_check(self, pdu: dict[str, Any], version: RoomVersion, state: StateMap) -> Event:
        # From v6 other servers would refuse it, or drift; before, the spec says not to enforce it.
        reason = non_canonical_reason(pdu["content"]) if version.strict_canonical_json else None
        if reason is not None:
            raise bad_json(f"Event content is not canonical JSON: {reason}")
        signed = sign_event(pdu, self.server_name, self._key, version)
        if len(encode_canonical_json(signed)) > MAX_PDU_BYTES:
            raise MatrixError(413, "M_TOO_LARGE", f"event is larger than {MAX_PDU_BYTES} bytes")
        event = Event(compute_event_id(signed, version), signed)
        auth_events = await self.get_events(event.auth_event_ids)
        auth_state = {e.key: e for e in auth_events.values()}
        if not version.create_event_in_auth_events and event.type != "m.room.create" and CREATE in state:
            create = await self.get_event(state[CREATE])  # v12: implied by the room ID, not listed
            if create is not None:
                auth_state[CREATE] = create
        try:
            check_auth(event, auth_state, version)
        except AuthError as e:
            raise forbidden(str(e)) from None
        return event

    async def _levels_state(self, state: StateMap) -> dict[StateKey, Event]:
        """The create and power levels events of a state: all that judging a redaction reads."""
        found = await self.get_events(state[k] for k in (CREATE, POWER_LEVELS) if k in state)
        return {k: found[state[k]] for k in (CREATE, POWER_LEVELS) if k in state and state[k] in found}

    async def _check_local_redaction(self, redaction: Event, version: RoomVersion, state: StateMap) -> str:
        """The event a local user's (authorised) redaction redacts: 404 unless it is an event of the
        room, 403 unless it is their own or they have the redact level."""
        target_id = redaction.redaction_target(version)
        assert target_id is not None  # _redacts_where_kept made sure
        target = await self.get_event(target_id)
        if target is None or target.room_id != redaction.room_id or target.rejected \
                or target.unsigned.get("_soft_failed"):
            raise not_found("Event not found")
        if not local_redaction_allowed(redaction, target, await self._levels_state(state), version):
            raise forbidden("Redacting other users' events needs the redact power level")
        return target_id

    async def _judge_received_redaction(self, redaction: Event, version: RoomVersion, state_before: StateMap,
                                        ) -> tuple[str | None, HeldRedaction | None]:
        """What a received (accepted) redaction does: the target it is applied to, if held and the
        rules allow it; else, for a target not held yet, what to check when it arrives. Judged with
        `state_before`, the state before the redaction, rather than its listed auth events, which
        may cite an older power levels event (backfill, where that state is unknown, has only those)."""
        target_id = redaction.redaction_target(version)
        if target_id is None:
            return None, None
        levels = await self._levels_state(state_before)
        target = await self.get_event(target_id)
        if target is None:
            # v1/v2: a redaction from the domain that made the target's ID may apply (the auth rules let it in).
            may_redact = may_redact_any(redaction.sender, levels, version) or (
                version.redaction_auth_rule and same_event_id_domain(redaction.event_id, target_id))
            return None, HeldRedaction(redaction.event_id, target_id, redaction.room_id,
                                       server_of(redaction.sender) if version.same_server_redactions else None,
                                       may_redact)
        if redaction_allowed(redaction, target, levels, version):
            return target_id, None
        log.info("not applying redaction %s of %s by %s: not allowed", redaction.event_id, target_id,
                 redaction.sender)
        return None, None

    async def _replaced_state(self, event: Event, state: StateMap) -> dict[str, Any]:
        """What clients get in `unsigned` about the state event this one replaces."""
        if not event.is_state or event.key not in state:
            return {}
        replaced = await self.get_event(state[event.key])
        if replaced is None:
            return {}
        return {"replaces_state": replaced.event_id, "prev_content": replaced.content,
                "prev_sender": replaced.sender}

    async def _persist(self, event: Event, room: RoomInfo, state: StateMap, prev_ids: list[str],
                       txn: TxnRef | None, extremities: list[str] | None = None,
                       redacts: str | None = None) -> Event:
        unsigned = await self._replaced_state(event, state)
        push = await self.push.evaluate(event, state, room.current_group) if self.push is not None else None
        persisted = await self._store.rooms.persist_event(
            event, state_before=room.current_group, before_map=state, prev_extremities=prev_ids, txn=txn,
            unsigned=unsigned, redacts=redacts, push=push)
        if txn is not None:
            unsigned = {**unsigned, "_txn": [txn.device_id, txn.txn_id]}
        stored = Event(event.event_id, event.pdu, stream=persisted.stream, unsigned=unsigned)
        self._cache(stored)
        self.recent.append(stored, redacts)  # before the notification, which would mark it missing
        if redacts:
            self.forget_cached(redacts)
        if extremities is not None and not self._notifier.shared:
            self._heads[room.room_id] = _Head(
                replace(room, current_group=persisted.state_after, last_stream=persisted.stream),
                [e for e in extremities if e not in prev_ids] + [stored.event_id], persisted.stream)
            self._heads.move_to_end(room.room_id)
            if len(self._heads) > HEADS_CACHE_SIZE:
                self._heads.popitem(last=False)
        # Membership changes must also wake the target, who may not watch the room yet.
        targets = [stored.state_key] if stored.type == "m.room.member" and stored.state_key else []
        await self._notifier.notify(persisted.stream, room.room_id, targets)
        if self.push is not None:
            self.push.stored(stored, push)
        self._stored(stored)
        for hook in self.on_local_event:
            try:
                await hook(stored, persisted.state_after)
            except Exception:
                log.exception("a hook failed for local event %s", stored.event_id)
        await self._run_event_hooks(stored)
        return stored

    async def _run_event_hooks(self, event: Event) -> None:
        for hook in self.on_event:
            try:
                await hook(event)
            except Exception:
                log.exception("a hook failed for event %s", event.event_id)

    async def persist_remote(self, event: Event, state_before: StateMap, soft_failed: bool = False) -> Event:
        """Store an accepted event from another server; the caller holds the room's lock.

        The room's new state is the state after the event when it succeeds every
        forward extremity, else the resolution of both (state resolution v2)."""
        room, version = await self.require_room(event.room_id)
        current = await self._store.rooms.state_map(room.current_group)
        extremities = await self._store.rooms.forward_extremities(event.room_id)
        after = dict(state_before)
        if event.is_state:
            after[event.key] = event.event_id
        new_current: StateMap | None = None
        others = [e for e in extremities if e not in event.prev_event_ids]
        if others and room.current_group is not None and current != after:
            async def get_event(event_id: str) -> Event | None:
                # The event itself is one of the candidates, and it is not stored yet.
                return event if event_id == event.event_id else await self.get_event(event_id)

            new_current = await resolve_state(version, [current, after], get_event)
        before_group = await self._group_for(event.room_id, state_before)
        unsigned = await self._replaced_state(event, state_before)
        redacts, held = await self._judge_received_redaction(event, version, state_before) \
            if event.type == "m.room.redaction" else (None, None)
        push = await self.push.evaluate(event, state_before, before_group) \
            if self.push is not None and not soft_failed else None
        persisted = await self._store.rooms.persist_remote_event(
            event, state_before=before_group, before_map=state_before, current_before=current,
            new_current=new_current, prev_extremities=event.prev_event_ids, unsigned=unsigned,
            redacts=redacts, held=held, push=push)
        if persisted.redacted_by:  # a redaction that came first, and was allowed
            unsigned = {**unsigned, "redacted_by": persisted.redacted_by}
        stored = Event(event.event_id, event.pdu, stream=persisted.stream, unsigned=unsigned)
        self._cache(stored)
        self._heads.pop(event.room_id, None)
        self.recent.append(stored, redacts)  # before the notification, which would mark it missing
        if redacts:
            self.forget_cached(redacts)
        targets = [stored.state_key] if stored.type == "m.room.member" and stored.state_key else []
        if new_current is not None:  # resolution may have changed anyone's membership
            targets += [k[1] for k, v in new_current.items() if k[0] == "m.room.member" and current.get(k) != v]
        await self._notifier.notify(persisted.stream, event.room_id, targets)
        if self.push is not None:
            self.push.stored(stored, push)
        self._stored(stored)
        await self._run_event_hooks(stored)
        return stored

    def _stored(self, event: Event) -> None:
        for hook in self.on_stored:
            try:
                hook(event)
            except Exception:
                log.exception("a hook failed for event %s", event.event_id)

    async def outside_membership(self, room_id: str, user_id: str) -> Event | None:
        """A local user's membership event in a room this server is not in (an invite or a knock)."""
        member = (await self._store.rooms.rooms_for_user(user_id)).get(room_id)
        return await self.get_event(member[1]) if member else None

    async def record_outside_membership(self, event: Event, room_version: str,
                                        unsigned: dict[str, Any] | None = None) -> None:
        """A local user's membership in a room this server is not in (an invite from another
        server, or its rejection): recorded for that user's syncs, who are woken. Never for a room
        this server holds, whose state only takes events that pass the auth rules."""
        room = await self._store.rooms.get_room(event.room_id)
        if room is not None and room.current_group is not None:
            raise forbidden("This server is in that room: its memberships are events of the room")
        # An invite notifies the invitee (.m.rule.invite_for_me); no state of the room is known here.
        push = await self.push.evaluate(event, {}, None) \
            if self.push is not None and event.membership == "invite" else None
        stream = await self._store.rooms.record_invite(event, room_version, now_ms(), unsigned, push=push)
        await self._notifier.notify(stream, event.room_id, [event.state_key] if event.state_key else [])
        if self.push is not None:
            self.push.stored(event, push)
        await self._run_event_hooks(event)

    async def _group_for(self, room_id: str, state: StateMap) -> int | None:
        """A state group holding exactly `state`: the current one when equal, else a new one,
        stored as a delta on the current group when it only adds or replaces slots."""
        if not state:
            return None
        room = await self._store.rooms.get_room(room_id)
        parent = room.current_group if room is not None else None
        current = await self._store.rooms.state_map(parent)
        if parent is not None and current == state:
            return parent
        if parent is not None and set(current) <= set(state):
            delta = {k: v for k, v in state.items() if current.get(k) != v}
            return await self._store.rooms.new_state_group(room_id, parent, current, delta)
        return await self._store.rooms.new_state_group(room_id, None, {}, state)

    async def persist_backfilled(self, event: Event) -> bool:
        """Store an accepted event of the room's history from another server; False if held already.

        The state before a backfilled event is not known: a redaction is judged with its own auth events."""
        redacts, held = None, None
        version = await self.room_version(event.room_id) if event.type == "m.room.redaction" else None
        if version is not None:
            auth = {e.key: e.event_id for e in (await self.get_events(event.auth_event_ids)).values() if e.is_state}
            if not version.create_event_in_auth_events:
                auth[CREATE] = "$" + event.room_id[1:]  # v12: implied by the room ID
            redacts, held = await self._judge_received_redaction(event, version, auth)
        stored = await self._store.rooms.persist_backfilled(event, redacts, held) is not None
        self.forget_cached(event.event_id)
        if redacts:
            self.forget_cached(redacts)
        return stored

    async def persist_outlier(self, event: Event, rejected: str | None = None, soft_failed: bool = False) -> None:
        await self._store.rooms.persist_outlier(event, rejected=rejected, soft_failed=soft_failed)
        self.forget_cached(event.event_id)

    async def persist_rejected(self, event: Event, reason: str, state_before: StateMap) -> None:
        """A received event refused against the state before it: never shown nor built on here, but
        events of other servers may still cite it, and the state after it is the state before it
        (the spec: the state is calculated as if the rejected event did not update it)."""
        group = await self._group_for(event.room_id, state_before)
        await self._store.rooms.persist_outlier(event, rejected=reason, state_groups=(group, group))
        self.forget_cached(event.event_id)

    async def persist_soft_failed(self, event: Event, state_before: StateMap) -> None:
        """A received event that passed the state before it but not the current state: never shown
        nor built on here, but part of the room's graph, so the state before and after it is kept
        for the events that other servers build on it."""
        before = await self._group_for(event.room_id, state_before)
        after = before
        if event.is_state:
            after = await self._store.rooms.new_state_group(event.room_id, before, state_before,
                                                           {event.key: event.event_id})
        await self._store.rooms.persist_outlier(event, soft_failed=True, state_groups=(before, after))
        self.forget_cached(event.event_id)
