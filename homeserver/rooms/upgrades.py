"""Room upgrades (the spec's "Room Upgrades" server behaviour).

A replacement room of the new version is made by the upgrading user, with `predecessor` in its
create event and the old room's transferable state copied; the old room's local aliases move to
it (and its directory entry), a tombstone naming it is left in the old room, whose power levels
then keep ordinary members from speaking or inviting. Members of other servers follow the
tombstone and join the new room themselves.
"""

from __future__ import annotations

import asyncio
import logging
import math
from typing import Any

from homeserver.errors import MatrixError, bad_json, forbidden
from homeserver.events.auth_rules import (CREATE_KEY, POWER_LEVELS_KEY, creators, level_to_send,
                                          user_power_level)
from homeserver.events.event import Event, StateKey
from homeserver.events.ids import parse_user_id
from homeserver.events.room_versions import KNOWN_ROOM_VERSIONS, RoomVersion, get_room_version
from homeserver.rooms.membership import Membership
from homeserver.rooms.rooms import POWER_LEVEL_INT_KEYS, Rooms
from storage.store import Store

log = logging.getLogger("whispr.rooms.upgrades")

TOMBSTONE = "m.room.tombstone"
# The state the spec recommends to carry over (power levels and aliases are handled on their own).
TRANSFERABLE = ("m.room.join_rules", "m.room.history_visibility", "m.room.guest_access", "m.room.name",
                "m.room.topic", "m.room.avatar", "m.room.encryption", "m.room.server_acl")
SPACE_CHILD = "m.space.child"  # a space keeps its children
CANONICAL_ALIAS = "m.room.canonical_alias"
TOP_LEVEL = 100  # what a creator gets where creators are listed in the power levels


def _as_int(value: Any) -> Any:
    """Levels written as strings (room versions 1-9) as integers, which v10+ demand."""
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            return value
    if isinstance(value, float) and math.isfinite(value):
        return int(value)
    return value


def _normalised_levels(content: dict[str, Any]) -> dict[str, Any]:
    levels = {k: _as_int(v) if k in POWER_LEVEL_INT_KEYS else v for k, v in content.items()}
    for key in ("events", "users", "notifications"):
        if isinstance(levels.get(key), dict):
            levels[key] = {k: _as_int(v) for k, v in levels[key].items()}
    return levels


def _highest_level(levels: dict[str, Any]) -> int:
    """The level that can send every event the power levels name (what copying state needs)."""
    values = [levels.get(k) for k in POWER_LEVEL_INT_KEYS if k != "users_default"]
    values += list((levels.get("events") or {}).values())
    return max([TOP_LEVEL, *(v for v in values if isinstance(v, int) and not isinstance(v, bool))])


def _join_rules_for(content: dict[str, Any], version: RoomVersion) -> dict[str, Any]:
    """Join rules the new version knows: those it does not fall back to invite-only."""
    rule = content.get("join_rule")
    supported = {"knock": version.knock_join_rule, "restricted": version.restricted_join_rule,
                 "knock_restricted": version.knock_restricted_join_rule}
    if supported.get(rule, True) if isinstance(rule, str) else False:
        return content
    return {"join_rule": "invite"}


def restricted_old_levels(levels: dict[str, Any]) -> dict[str, Any] | None:
    """The old room's power levels once ordinary users may no longer send or invite (None: they
    cannot already): events_default and invite raised to max(50, users_default + 1)."""
    users_default = levels.get("users_default", 0)
    floor = max(50, (users_default if isinstance(users_default, int) else 0) + 1)
    changed = dict(levels)
    for key in ("events_default", "invite"):
        value = levels.get(key, 0)
        if not isinstance(value, int) or value < floor:
            changed[key] = floor
    return changed if changed != levels else None


def _additional_creators(raw: object, version: RoomVersion) -> list[str]:
    if raw is None or not version.creators_have_infinite_power:
        return []  # the spec: ignored by room versions without additional creators
    if not isinstance(raw, list) or not all(isinstance(u, str) for u in raw):
        raise bad_json("additional_creators must be a list of user IDs")
    for user_id in raw:
        parse_user_id(user_id)
    return list(dict.fromkeys(raw))


class RoomUpgrades:
    def __init__(self, rooms: Rooms, membership: Membership, store: Store) -> None:
        self._rooms = rooms
        self._membership = membership
        self._store = store
        # One upgrade of a room at a time in this process: a second one waits, and replaces the
        # room the first left behind rather than interleaving with it.
        self._upgrading: dict[str, asyncio.Lock] = {}

    async def upgrade(self, user_id: str, room_id: str, new_version: object,
                      additional_creators: object = None) -> str:
        version = get_room_version(new_version) if isinstance(new_version, str) else None
        if version is None:
            raise MatrixError(400, "M_UNSUPPORTED_ROOM_VERSION", f"room version {new_version!r} is not supported; "
                              f"try one of {', '.join(KNOWN_ROOM_VERSIONS)}")
        extra_creators = _additional_creators(additional_creators, version)
        await self._rooms.require_joined(room_id, user_id)
        lock = self._upgrading.setdefault(room_id, asyncio.Lock())
        async with lock:
            return await self._upgrade(user_id, room_id, version, extra_creators)

    async def _upgrade(self, user_id: str, room_id: str, version: RoomVersion, extra_creators: list[str]) -> str:
        old_room, old_version = await self._rooms.require_room(room_id)
        state = await self._rooms.current_state(room_id)
        auth_state = {k: state[k] for k in (CREATE_KEY, POWER_LEVELS_KEY) if k in state}
        mine = user_power_level(user_id, auth_state, old_version)
        if mine < level_to_send(TOMBSTONE, True, auth_state):
            raise forbidden("You need the power to send m.room.tombstone to upgrade this room")

        new_room_id = await self._create_replacement(user_id, room_id, state, old_version, version, extra_creators)
        await self._move_aliases(user_id, room_id, new_room_id, state)
        if old_room.is_public:
            await self._store.rooms.set_public(new_room_id, True)
            await self._store.rooms.set_public(room_id, False)
        await self._rooms.create_event(room_id, user_id, TOMBSTONE,
                                       {"body": "This room has been replaced", "replacement_room": new_room_id},
                                       state_key="")
        await self._restrict_old_room(user_id, room_id)
        return new_room_id

    async def _create_replacement(self, user_id: str, old_room_id: str, state: dict[StateKey, Event],
                                  old_version: RoomVersion, version: RoomVersion, extra_creators: list[str]) -> str:
        old_create = state.get(CREATE_KEY)
        predecessor: dict[str, Any] = {"room_id": old_room_id}
        if not version.room_id_from_create_event:  # v12 may leave the event out (spec 1.16)
            latest = await self._store.rooms.room_events(old_room_id, limit=1)
            if latest:
                predecessor["event_id"] = latest[0].event_id
        content: dict[str, Any] = {"room_version": version.identifier, "predecessor": predecessor}
        for key in ("type", "m.federate"):
            if old_create is not None and key in old_create.content:
                content[key] = old_create.content[key]
        if version.creator_in_create_content:
            content["creator"] = user_id
        if extra_creators:
            content["additional_creators"] = extra_creators
        create = await self._rooms.create_room_event(version, user_id, content, False)
        room_id = create.room_id
        send = self._rooms.create_event
        await send(room_id, user_id, "m.room.member",
                   {"membership": "join", **await self._membership.profile_content(user_id)}, state_key=user_id)

        levels, first_levels = self._new_power_levels(user_id, state, old_version, version, create)
        await send(room_id, user_id, "m.room.power_levels", first_levels, state_key="")
        for event_type in TRANSFERABLE:
            event = state.get((event_type, ""))
            if event is None or not event.content:
                continue
            content = _join_rules_for(event.content, version) if event_type == "m.room.join_rules" \
                else event.content
            await self._copy(room_id, user_id, event_type, content, "")
        for (event_type, key), event in state.items():
            if event_type == SPACE_CHILD and event.content:
                await self._copy(room_id, user_id, event_type, event.content, key)
        for (event_type, key), event in state.items():
            if event_type == "m.room.member" and event.membership == "ban":
                reason = event.content.get("reason")
                await self._copy(room_id, user_id, "m.room.member",
                                 {"membership": "ban", **({"reason": reason} if isinstance(reason, str) else {})},
                                 key)
        if levels != first_levels:
            await send(room_id, user_id, "m.room.power_levels", levels, state_key="")
        return room_id

    def _new_power_levels(self, user_id: str, state: dict[StateKey, Event], old_version: RoomVersion,
                          version: RoomVersion, create: Event) -> tuple[dict[str, Any], dict[str, Any]]:
        """The new room's power levels, and those to send first when the upgrader needs more power
        than they keep to copy the state (restored once it is copied, as Synapse does)."""
        old_levels = state.get(POWER_LEVELS_KEY)
        levels = _normalised_levels(dict(old_levels.content)) if old_levels is not None else {}
        users = dict(levels.get("users") or {})
        old_create = state.get(CREATE_KEY)
        if old_create is not None and old_version.creators_have_infinite_power:
            top = _highest_level(levels)  # they had infinite power: the most a number gives
            for creator in creators(old_create, old_version):
                users[creator] = top
        if old_levels is None:
            users.setdefault(user_id, TOP_LEVEL)
        if version.creators_have_infinite_power:
            for creator in creators(create, version):  # v12: creators may not be listed
                users.pop(creator, None)
        levels["users"] = users
        if version.creators_have_infinite_power:
            return levels, levels
        needed = _highest_level(levels)
        mine = users.get(user_id, levels.get("users_default", 0))
        if isinstance(mine, int) and mine >= needed:
            return levels, levels
        return levels, {**levels, "users": {**users, user_id: needed}}

    async def _copy(self, room_id: str, user_id: str, event_type: str, content: dict[str, Any],
                    state_key: str) -> None:
        """One piece of state into the new room; what the new version refuses (content that is
        not canonical JSON from an old version, a ban of a creator) is left behind."""
        try:
            await self._rooms.create_event(room_id, user_id, event_type, content, state_key=state_key)
        except MatrixError as e:
            log.info("upgrade into %s: %s %r not copied: %s", room_id, event_type, state_key, e.error)

    async def _move_aliases(self, user_id: str, old_room_id: str, new_room_id: str,
                            state: dict[StateKey, Event]) -> None:
        """Local aliases now point at the new room, which takes the canonical alias; the old room's
        canonical alias event keeps only the aliases of other servers."""
        local = set(await self._store.rooms.aliases_for_room(old_room_id))
        await self._store.rooms.move_aliases(old_room_id, new_room_id)
        event = state.get((CANONICAL_ALIAS, ""))
        if event is None or not event.content:
            return
        await self._copy(new_room_id, user_id, CANONICAL_ALIAS, event.content, "")
        kept = dict(event.content)
        if kept.get("alias") in local:
            kept.pop("alias")
        alt = kept.get("alt_aliases")
        if isinstance(alt, list):
            kept["alt_aliases"] = [a for a in alt if a not in local]
            if not kept["alt_aliases"]:
                kept.pop("alt_aliases")
        if kept != event.content:
            await self._copy(old_room_id, user_id, CANONICAL_ALIAS, kept, "")

    async def _restrict_old_room(self, user_id: str, room_id: str) -> None:
        """If the upgrader may change them, the old room's power levels stop ordinary members."""
        event = await self._rooms.state_event(room_id, "m.room.power_levels")
        if event is None:
            return
        restricted = restricted_old_levels(dict(event.content))
        if restricted is not None:
            await self._copy(room_id, user_id, "m.room.power_levels", restricted, "")
