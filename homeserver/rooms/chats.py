"""Whispr chats on top of rooms: direct chats are tracked in m.direct for both people."""

from __future__ import annotations

from typing import Any

from homeserver.rooms.membership import Membership
from homeserver.rooms.creation import RoomCreator
from homeserver.rooms.room_data import RoomData
from homeserver.rooms.rooms import Rooms


class Chats:
    def __init__(self, rooms: Rooms, membership: Membership, creator: RoomCreator, room_data: RoomData) -> None:
        self._rooms = rooms
        self._membership = membership
        self._creator = creator
        self._room_data = room_data

    async def create(self, user_id: str, body: dict[str, Any]) -> str:
        room_id, req = await self._creator.create(user_id, body)
        if req.is_direct:
            for other in req.invite:
                await self._room_data.add_direct_room(user_id, other, room_id)
        return room_id

    async def join(self, room_id_or_alias: str, user_id: str, reason: object = None,
                   via: list[str] | None = None, guest: bool = False) -> str:
        room_id, servers = await self._membership.resolve_room(room_id_or_alias)
        invite = None
        if await self._rooms.room(room_id) is not None:
            invite = await self._rooms.state_event(room_id, "m.room.member", user_id)
            if invite is None:  # an invite from another server, for a room we are not in yet
                member = (await self._membership.rooms_of(user_id)).get(room_id)
                invite = await self._rooms.get_event(member[1]) if member else None
        joined = await self._membership.join(room_id, user_id, reason, via=[*(via or []), *servers], guest=guest)
        if invite is not None and invite.membership == "invite" and invite.content.get("is_direct") is True:
            await self._room_data.add_direct_room(user_id, invite.sender, room_id)
        await self._follow_upgrade(user_id, joined)
        return joined

    async def _follow_upgrade(self, user_id: str, room_id: str) -> None:
        """Joining the replacement of a room the user was in carries their tags and m.direct over."""
        create = await self._rooms.state_event(room_id, "m.room.create")
        predecessor = create.content.get("predecessor") if create is not None else None
        old = predecessor.get("room_id") if isinstance(predecessor, dict) else None
        if isinstance(old, str) and old != room_id and old in await self._membership.rooms_of(user_id):
            await self._room_data.follow_upgrade(user_id, old, room_id)
