"""History visibility: which events of a room's history a member may read.

The spec's rules (Client-Server API, "History visibility"), decided per event from the
room's state around it: `world_readable` events are visible to all; an event is visible to
a user joined to the room at that event (after it, so people see their own join);
`shared` history is visible to anyone joined now; `invited` also to a user invited at
that event; `joined` to nobody else. A change of visibility is judged by the more
permissive of the settings before and after it, so people see the change itself.
Events held without state (backfilled history) count as `shared`: the server we got them
from has already applied its own rules for this server.
"""

from __future__ import annotations

from homeserver.events import Event
from homeserver.rooms import Rooms
from storage.rooms import StateMap
from storage.store import Store

# Most permissive first.
LEVELS = ("world_readable", "shared", "invited", "joined")
DEFAULT = "shared"
HISTORY_VISIBILITY = ("m.room.history_visibility", "")


class HistoryVisibility:
    def __init__(self, rooms: Rooms, store: Store) -> None:
        self._rooms = rooms
        self._store = store

    async def filter(self, user_id: str, events: list[Event], joined_now: bool) -> list[Event]:
        """The events (of one room) the user may read, in the same order."""
        if not events:
            return events
        groups = await self._store.rooms.state_groups_of([e.event_id for e in events])
        settings: dict[int | None, str] = {}
        memberships: dict[int | None, str | None] = {}

        async def setting(group: int | None) -> str:
            if group not in settings:
                ev = await self._state_event(await self._store.rooms.state_map(group), HISTORY_VISIBILITY)
                value = ev.content.get("history_visibility") if ev is not None else None
                settings[group] = value if value in LEVELS else DEFAULT
            return settings[group]

        async def membership(group: int | None) -> str | None:
            if group not in memberships:
                state = await self._store.rooms.state_map(group)
                ev = await self._state_event(state, ("m.room.member", user_id))
                memberships[group] = ev.membership if ev is not None else None
            return memberships[group]

        visible = []
        for event in events:
            before, after = groups.get(event.event_id, (None, None))
            if before is None and after is None:
                level = DEFAULT  # held without state: backfilled history
                member = None
            else:
                level = await setting(before)
                if event.type == HISTORY_VISIBILITY[0] and event.state_key == "":
                    level = min(level, await setting(after), key=LEVELS.index)
                member = await membership(after)
            if (level == "world_readable" or member == "join" or (level == "shared" and joined_now)
                    or (level == "invited" and member == "invite")):
                visible.append(event)
        return visible

    async def _state_event(self, state: StateMap, key: tuple[str, str]) -> Event | None:
        event_id = state.get(key)
        return None if event_id is None else await self._rooms.get_event(event_id)
