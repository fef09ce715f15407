"""timestamp_to_event: the event of a room nearest a point in time, in one direction.

A user gets the nearest event they may read (members as of their leave); when this server holds
none on that side, the other servers in the room are asked (as Synapse does), since history from
before we joined may be missing here. Another server asking us gets only what we hold.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

from homeserver.errors import invalid_param, missing_param, not_found
from homeserver.rooms.rooms import Rooms
from homeserver.rooms.timeline import Timeline
from storage.store import Store

log = logging.getLogger("whispr.rooms.timestamps")

DIRECTIONS = ("f", "b")
MAX_TS = 2**63 - 1


class RemoteTimestamps(Protocol):
    """Federation's timestamp_to_event: (event ID, origin_server_ts) from the first of `servers` that
    has one, or None."""

    async def timestamp_to_event(self, servers: list[str], room_id: str, ts: int,
                                 direction: str) -> tuple[str, int] | None: ...


def parse_query(ts: str | None, direction: str | None) -> tuple[int, str]:
    if ts is None:
        raise missing_param("ts is required")
    if direction is None:
        raise missing_param("dir is required")
    if not ts.isdigit() or len(ts) > 19 or int(ts) > MAX_TS:
        raise invalid_param("ts must be a timestamp in milliseconds")
    if direction not in DIRECTIONS:
        raise invalid_param("dir must be f or b")
    return int(ts), direction


def _answer(found: tuple[str, int]) -> dict[str, Any]:
    return {"event_id": found[0], "origin_server_ts": found[1]}


class EventsByTime:
    def __init__(self, server_name: str, rooms: Rooms, store: Store, timeline: Timeline) -> None:
        self._server_name = server_name
        self._rooms = rooms
        self._store = store
        self._timeline = timeline
        self.remote: RemoteTimestamps | None = None

    async def for_user(self, user_id: str, room_id: str, ts: int, direction: str) -> dict[str, Any]:
        reading = await self._timeline.reading(room_id, user_id)  # 403 for who may not read the room
        found = await self._store.rooms.event_at_time(room_id, ts, direction == "f",
                                                      None if reading.current else reading.upto)
        if found is None and self.remote is not None and reading.current:
            servers = sorted(s for s in await self._store.rooms.room_servers(room_id) if s != self._server_name)
            found = await self.remote.timestamp_to_event(servers, room_id, ts, direction)
        if found is None:
            raise not_found(f"No event {'at or after' if direction == 'f' else 'at or before'} {ts} in the room")
        return _answer(found)

    async def for_server(self, room_id: str, ts: int, direction: str) -> dict[str, Any]:
        found = await self._store.rooms.event_at_time(room_id, ts, direction == "f")
        if found is None:
            raise not_found("No event there")
        return _answer(found)
