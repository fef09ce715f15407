"""Guests in rooms (`m.room.guest_access`, Client-Server API "Guest access").

A guest may join a room only while its `m.room.guest_access` is `can_join`. When the setting
changes so that it no longer is (by a local or a received event), this server's guests who are
joined leave (and those invited decline): the spec makes each server enforce this for its own
guests, as guests are a local notion other servers know nothing of.
"""

from __future__ import annotations

import asyncio
import logging

from homeserver.errors import MatrixError
from homeserver.events.auth_rules import server_of
from homeserver.events.event import Event
from homeserver.rooms.rooms import Rooms
from storage.store import Store

log = logging.getLogger("whispr.guest_access")

GUEST_ACCESS_TYPE = "m.room.guest_access"
CAN_JOIN = "can_join"


def allows_guests(event: Event | None) -> bool:
    return event is not None and event.content.get("guest_access") == CAN_JOIN


def guest_forbidden(message: str) -> MatrixError:
    return MatrixError(403, "M_GUEST_ACCESS_FORBIDDEN", message)


class GuestEviction:
    """Makes this server's guests leave a room that stops letting guests in."""

    def __init__(self, rooms: Rooms, store: Store) -> None:
        self._rooms = rooms
        self._store = store
        self._tasks: set[asyncio.Task[None]] = set()

    def observe(self, event: Event) -> None:
        """Called for every event stored in a room (the room's lock may be held: work goes to a task)."""
        if event.type != GUEST_ACCESS_TYPE or event.state_key != "" or allows_guests(event):
            return
        task = asyncio.create_task(self._evict(event.room_id))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _evict(self, room_id: str) -> None:
        try:
            state = await self._rooms.current_state(room_id)
            if allows_guests(state.get((GUEST_ACCESS_TYPE, ""))):
                return  # changed back meanwhile
            local = [key[1] for key, ev in state.items() if key[0] == "m.room.member"
                     and ev.membership in ("join", "invite") and server_of(key[1]) == self._rooms.server_name]
            for user_id in await self._store.users.guests_among(local):
                try:
                    await self._rooms.create_event(room_id, user_id, "m.room.member", {"membership": "leave"},
                                                   state_key=user_id)
                    log.info("guest %s left %s: the room no longer lets guests in", user_id, room_id)
                except MatrixError as e:
                    log.warning("guest %s could not leave %s: %s", user_id, room_id, e)
        except Exception:
            log.exception("removing guests from %s failed", room_id)

    async def close(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
