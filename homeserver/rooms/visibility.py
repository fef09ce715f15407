"""History visibility: which events of a room's history a member, or another server, may read.

The spec's rules (Client-Server API, "History visibility"), decided per event from the
room's state around it: `world_readable` events are visible to all; an event is visible to
a user joined to the room at that event (after it, so people see their own join);
`shared` history is visible to anyone joined now; `invited` also to a user invited at
that event; `joined` to nobody else. A change of visibility is judged by the more
permissive of the settings before and after it, so people see the change itself.
Events held without state (history backfilled from before this server joined) are judged
by the setting the room had when this server joined: the sending server has redacted what
this server may not see, and under `invited` or `joined` none of our users was there.

Another server sees `shared` and `world_readable` history, and otherwise what one of its
users could see at the time; the rest it gets redacted, so that the room's graph stays whole.
"""

from __future__ import annotations

from typing import Any

from homeserver.events.auth_rules import server_of
from homeserver.events.event import Event
from homeserver.events.redaction import redact
from homeserver.events.room_versions import RoomVersion
from homeserver.rooms.rooms import Rooms
from storage.store import Store

# Most permissive first.
LEVELS = ("world_readable", "shared", "invited", "joined")
DEFAULT = "shared"
HISTORY_VISIBILITY = ("m.room.history_visibility", "")


class _AtEvents:
    """The visibility setting and memberships around a batch of events, each group read once."""

    def __init__(self, rooms: Rooms, store: Store, room_id: str,
                 groups: dict[str, tuple[int | None, int | None]]) -> None:
        self._rooms = rooms
        self._store = store
        self._room_id = room_id
        self._groups = groups
        self._settings: dict[int | None, str] = {}
        self._members: dict[tuple[int | None, str], set[str]] = {}

    def has_state(self, event: Event) -> bool:
        return self._groups.get(event.event_id, (None, None)) != (None, None)

    async def level(self, event: Event) -> str:
        """The setting that governs the event."""
        before, after = self._groups.get(event.event_id, (None, None))
        if before is None and after is None:
            return await self._setting(await self._store.rooms.first_state_group(self._room_id))
        level = await self._setting(before)
        if event.type == HISTORY_VISIBILITY[0] and event.state_key == "":
            level = min(level, await self._setting(after), key=LEVELS.index)
        return level

    async def memberships(self, event: Event, whose: str) -> set[str]:
        """Memberships just after the event of the user `whose`, or (a server name) of its users."""
        after = self._groups.get(event.event_id, (None, None))[1]
        key = (after, whose)
        if key not in self._members:
            state = await self._store.rooms.state_map(after)
            if whose.startswith("@"):
                ids = [state[("m.room.member", whose)]] if ("m.room.member", whose) in state else []
            else:
                ids = [v for (t, k), v in state.items() if t == "m.room.member" and server_of(k) == whose]
            found = await self._rooms.get_events(ids)
            self._members[key] = {e.membership for e in found.values() if e.membership}
        return self._members[key]

    async def _setting(self, group: int | None) -> str:
        if group not in self._settings:
            event_id = (await self._store.rooms.state_map(group)).get(HISTORY_VISIBILITY)
            ev = await self._rooms.get_event(event_id) if event_id else None
            value = ev.content.get("history_visibility") if ev is not None else None
            self._settings[group] = value if value in LEVELS else DEFAULT
        return self._settings[group]


class HistoryVisibility:
    def __init__(self, rooms: Rooms, store: Store) -> None:
        self._rooms = rooms
        self._store = store

    async def _at(self, events: list[Event]) -> _AtEvents:
        groups = await self._store.rooms.state_groups_of([e.event_id for e in events])
        return _AtEvents(self._rooms, self._store, events[0].room_id, groups)

    async def filter(self, user_id: str, events: list[Event], joined_now: bool) -> list[Event]:
        """The events (of one room) the user may read, in the same order."""
        if not events:
            return events
        at = await self._at(events)
        visible = []
        for event in events:
            level = await at.level(event)
            if level == "world_readable" or (level == "shared" and joined_now):
                visible.append(event)
                continue
            member = await at.memberships(event, user_id) if at.has_state(event) else set()
            if "join" in member or (level == "invited" and "invite" in member):
                visible.append(event)
        return visible

    async def for_server(self, server_name: str, events: list[Event], version: RoomVersion) -> list[dict[str, Any]]:
        """The PDUs of events (of one room) as another server may have them: redacted where
        none of its users could see them."""
        if not events:
            return []
        at = await self._at(events)
        pdus = []
        for event in events:
            level = await at.level(event)
            allowed = level in ("world_readable", "shared")
            if not allowed:
                member = await at.memberships(event, server_name)
                allowed = "join" in member or (level == "invited" and "invite" in member)
            pdus.append(event.pdu if allowed else redact(event.pdu, version))
        return pdus
