"""Room aliases, the public room directory, and the user directory."""

from __future__ import annotations

from typing import Any, Protocol

from homeserver.events.auth_rules import CREATE_KEY, POWER_LEVELS_KEY, level_to_send, user_power_level
from homeserver.errors import MatrixError, bad_json, forbidden, not_found
from homeserver.rooms.rooms import Rooms
from storage.store import Store

MAX_ALIAS_LENGTH = 255
DEFAULT_USER_SEARCH_LIMIT = 10  # the spec's default
MAX_USER_SEARCH_LIMIT = 50


class RemoteAliases(Protocol):
    """Aliases of other servers (federation's /query/directory): (room ID, servers); raises MatrixError."""

    async def resolve_alias(self, alias: str) -> tuple[str, list[str]]: ...


class RemotePublicRooms(Protocol):
    """Another server's published room directory (federation's /publicRooms), given the
    request's limit, since, filter and network choice; raises MatrixError."""

    async def public_rooms(self, server: str, query: dict[str, Any]) -> dict[str, Any]: ...


class Directory:
    def __init__(self, rooms: Rooms, store: Store, server_name: str, search_all_users: bool = False) -> None:
        self._rooms = rooms
        self._store = store
        self._server_name = server_name
        self.remote: RemoteAliases | None = None
        self.remote_public_rooms: RemotePublicRooms | None = None
        self._search_all_users = search_all_users

    def _check_alias(self, alias: str) -> None:
        if not alias.startswith("#") or ":" not in alias or len(alias) > MAX_ALIAS_LENGTH \
                or any(c.isspace() for c in alias):
            raise MatrixError(400, "M_INVALID_PARAM", "not a room alias")

    async def create_alias(self, user_id: str, alias: str, room_id: object) -> None:
        self._check_alias(alias)
        if not isinstance(room_id, str):
            raise bad_json("room_id must be a string")
        if not alias.endswith(":" + self._server_name):
            raise MatrixError(400, "M_INVALID_PARAM", "Aliases must be on this server")
        await self._rooms.require_joined(room_id, user_id)
        if not await self._store.rooms.create_alias(alias, room_id, user_id):
            raise MatrixError(409, "M_UNKNOWN", "Room alias already exists")

    async def resolve(self, alias: str) -> dict[str, Any]:
        """Any alias: ours from the database, another server's over federation."""
        self._check_alias(alias)
        if not alias.endswith(":" + self._server_name):
            if self.remote is None:
                raise not_found("Room alias not found")
            room_id, servers = await self.remote.resolve_alias(alias)
            return {"room_id": room_id, "servers": servers}
        return await self.resolve_local(alias)

    async def resolve_local(self, alias: str) -> dict[str, Any]:
        """One of this server's aliases (what other servers may ask us)."""
        self._check_alias(alias)
        found = await self._store.rooms.get_alias(alias)
        if found is None:
            raise not_found("Room alias not found")
        return {"room_id": found[0], "servers": [self._server_name]}

    async def delete_alias(self, user_id: str, alias: str) -> None:
        self._check_alias(alias)
        found = await self._store.rooms.get_alias(alias)
        if found is None:
            raise not_found("Room alias not found")
        room_id, creator = found
        if creator != user_id and not await self._may_manage(room_id, user_id):
            raise forbidden("You may not remove this alias")
        await self._store.rooms.delete_alias(alias)

    async def _may_manage(self, room_id: str, user_id: str) -> bool:
        """A joined member who may set the canonical alias, by the room version's power rules (so a
        v12 creator, who has no entry in the power levels, outranks everyone)."""
        version = await self._rooms.room_version(room_id)
        if version is None or await self._rooms.membership(room_id, user_id) != "join":
            return False
        auth_state = {}
        for key in (CREATE_KEY, POWER_LEVELS_KEY):
            event = await self._rooms.state_event(room_id, key[0], key[1])
            if event is not None:
                auth_state[key] = event
        mine = user_power_level(user_id, auth_state, version)
        return mine >= level_to_send("m.room.canonical_alias", True, auth_state)

    async def aliases(self, user_id: str, room_id: str) -> list[str]:
        await self._rooms.require_joined(room_id, user_id)
        return await self._store.rooms.aliases_for_room(room_id)

    async def set_visibility(self, user_id: str, room_id: str, visibility: object) -> None:
        if visibility not in ("public", "private"):
            raise bad_json("visibility must be public or private")
        if not await self._may_manage(room_id, user_id):
            raise forbidden("You may not change this room's visibility")
        await self._store.rooms.set_public(room_id, visibility == "public")

    async def visibility(self, room_id: str) -> str:
        room = await self._rooms.room(room_id)
        if room is None:
            raise not_found("Unknown room")
        return "public" if room.is_public else "private"

    async def public_rooms(self, limit: int | None, since: str | None, term: str | None,
                           room_types: list[str | None] | None = None,
                           federating_only: bool = False) -> dict[str, Any]:
        """The rooms published in this server's directory, most members first. `room_types`, when
        given, keeps the rooms of those types (None: rooms without a type); `federating_only` (for
        other servers) leaves out the rooms created with `m.federate: false`."""
        chunk = []
        for room in await self._store.rooms.public_rooms():
            state = await self._rooms.current_state(room.room_id)
            joined = await self._store.rooms.members(room.room_id, "join")

            def get(t: str, key: str) -> Any:
                ev = state.get((t, ""))  # noqa: B023 (called in this pass only)
                return ev.content.get(key) if ev is not None else None

            entry = {"room_id": room.room_id, "num_joined_members": len(joined),
                     "world_readable": get("m.room.history_visibility", "history_visibility") == "world_readable",
                     "guest_can_join": get("m.room.guest_access", "guest_access") == "can_join",
                     "join_rule": get("m.room.join_rules", "join_rule") or "invite"}
            for key, (t, field) in {"name": ("m.room.name", "name"), "topic": ("m.room.topic", "topic"),
                                    "avatar_url": ("m.room.avatar", "url"),
                                    "canonical_alias": ("m.room.canonical_alias", "alias")}.items():
                value = get(t, field)
                if isinstance(value, str):
                    entry[key] = value
            create = state.get(CREATE_KEY)
            if federating_only and create is not None and create.content.get("m.federate") is False:
                continue
            room_type = create.content.get("type") if create is not None else None
            if isinstance(room_type, str):
                entry["room_type"] = room_type
            if room_types is not None and entry.get("room_type") not in room_types:
                continue
            if term and not any(term.lower() in str(entry.get(k, "")).lower()
                                for k in ("name", "topic", "canonical_alias")):
                continue
            chunk.append(entry)
        chunk.sort(key=lambda e: -e["num_joined_members"])
        offset = int(since) if since and since.isdigit() else 0
        page = chunk[offset:offset + limit] if limit else chunk[offset:]
        body: dict[str, Any] = {"chunk": page, "total_room_count_estimate": len(chunk)}
        if limit and offset + limit < len(chunk):
            body["next_batch"] = str(offset + limit)
        if offset:
            body["prev_batch"] = str(max(0, offset - (limit or 0)))
        return body

    async def other_servers_rooms(self, server: str, query: dict[str, Any]) -> dict[str, Any]:
        """The directory of another server, for a client exploring it (`?server=`)."""
        if self.remote_public_rooms is None:
            raise not_found("This server does not federate: no other server's directory can be read")
        return await self.remote_public_rooms.public_rooms(server, query)

    async def search_users(self, user_id: str, term: object, limit: object) -> dict[str, Any]:
        if not isinstance(term, str):
            raise bad_json("search_term must be a string")
        if limit is None:
            limit = DEFAULT_USER_SEARCH_LIMIT
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
            raise bad_json("limit must be a non-negative integer")
        limit = min(limit, MAX_USER_SEARCH_LIMIT)
        # One row more than asked tells whether the results were cut short.
        rows = await self._store.rooms.search_users(term, limit + 1,
                                                    None if self._search_all_users else user_id)
        # The spec types display_name and avatar_url as strings: absent, not null, when unset.
        results = [{"user_id": r["user_id"], **{k: v for k, v in (("display_name", r["displayname"]),
                                                                   ("avatar_url", r["avatar_url"])) if v is not None}}
                   for r in rows]
        return {"results": results[:limit], "limited": len(results) > limit}
