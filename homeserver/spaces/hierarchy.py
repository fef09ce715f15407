"""Space hierarchies and room summaries.

A hierarchy is a depth-first walk of `m.space.child` events from a room, each child before its
siblings' children, in the spec's child order. A room is shown only to a user who could join it,
knock on it or peek into it (joined or invited, public, knockable, world-readable, restricted to a
room they are in); rooms this server does not hold are asked of the servers in the child event's
`via` (federation's hierarchy endpoint), and filtered the same way from what they answer. A page
that stops before the walk's end leaves the walk's queue behind a `next_batch` token for a while.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Any, Protocol

from homeserver.ephemeral import Ephemeral
from homeserver.errors import MatrixError, forbidden, invalid_param, not_found
from homeserver.events.auth_rules import server_of
from homeserver.events.room_versions import RoomVersion
from homeserver.rooms.membership import Membership
from homeserver.rooms.rooms import Rooms
from homeserver.spaces.summary import (State, allowed_room_ids, children, children_state, has_server_member,
                                       open_to_all, summary)
from storage.store import Store

DEFAULT_LIMIT = 50
MAX_LIMIT = 100
MAX_DEPTH = 50  # default and most of `max_depth`
MAX_QUEUE = 1_000  # rooms a walk keeps waiting: beyond, a space's further children are dropped
SESSION_TTL_S = 300.0
_OPEN_RULES = ("public", "knock", "knock_restricted")


class RemoteHierarchy(Protocol):
    """Federation's `GET /hierarchy/{roomId}`: the answer of the first of `servers` that gives one,
    {room, children, inaccessible_children} as the spec shapes them (sanitised), or None."""

    async def hierarchy(self, servers: list[str], room_id: str, suggested_only: bool) -> dict[str, Any] | None: ...


@dataclass
class _Room:
    """What a walk knows of a room: its summary and its child events (stripped)."""

    summary: dict[str, Any]
    children_state: list[dict[str, Any]] = field(default_factory=list)
    # False for a child described in its parent's answer, whose own children may be missing.
    complete: bool = True


def _without_children(entry: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in entry.items() if k != "children_state"}


class Spaces:
    def __init__(self, server_name: str, rooms: Rooms, membership: Membership, store: Store,
                 ephemeral: Ephemeral) -> None:
        self._server_name = server_name
        self._rooms = rooms
        self._membership = membership
        self._store = store
        self._ephemeral = ephemeral
        self.remote: RemoteHierarchy | None = None

    # --- what each room looks like, and to whom --------------------------------------------

    async def _held(self, room_id: str) -> tuple[State, RoomVersion] | None:
        """The current state of a room this server is in."""
        room = await self._rooms.room(room_id)
        version = await self._rooms.room_version(room_id) if room is not None else None
        if room is None or room.current_group is None or version is None:
            return None
        return await self._rooms.current_state(room_id), version

    async def _local_room(self, room_id: str, state: State, version: RoomVersion) -> _Room:
        joined = len(await self._store.rooms.members(room_id, "join"))
        return _Room(summary(room_id, state, version, joined), children_state(state))

    async def _joined_any(self, user_id: str, room_ids: list[str]) -> bool:
        for room_id in room_ids:
            if await self._rooms.membership(room_id, user_id) == "join":
                return True
        return False

    async def _user_may_see_held(self, user_id: str, room_id: str, state: State, version: RoomVersion) -> bool:
        member = state.get(("m.room.member", user_id))
        if member is not None and member.membership in ("join", "invite"):
            return True
        return open_to_all(state, version) or await self._joined_any(user_id, allowed_room_ids(state, version))

    async def _user_may_see_remote(self, user_id: str, entry: dict[str, Any]) -> bool:
        """Judged from another server's summary: open to all, or an invite held here, or restricted
        to a room the user is joined to."""
        if entry.get("join_rule") in _OPEN_RULES or entry.get("world_readable") is True:
            return True
        member = await self._rooms.outside_membership(entry["room_id"], user_id)
        if member is not None and member.membership == "invite":
            return True
        allowed = entry.get("allowed_room_ids")
        return entry.get("join_rule") in ("restricted", "knock_restricted") and isinstance(allowed, list) \
            and await self._joined_any(user_id, [r for r in allowed if isinstance(r, str)])

    async def _server_may_see(self, origin: str, state: State, version: RoomVersion) -> bool:
        """What another server may learn of a room: open to all, or one of its users is in it (or
        invited), or it is restricted to a room one of its users is joined to."""
        if open_to_all(state, version) or has_server_member(state, origin):
            return True
        for allowed in allowed_room_ids(state, version):
            held = await self._held(allowed)
            if held is not None and has_server_member(held[0], origin):
                return True
        return False

    def _servers(self, room_id: str, via: list[str]) -> list[str]:
        candidates = [*via, *([server_of(room_id)] if ":" in room_id else [])]
        return [s for s in dict.fromkeys(candidates) if s and s != self._server_name]

    async def _room_for_user(self, user_id: str, room_id: str, via: list[str], suggested_only: bool,
                             remote_cache: dict[str, _Room]) -> _Room | None:
        """The room as `user_id` may see it, or None when they may not (or nobody can tell us)."""
        held = await self._held(room_id)
        if held is not None:
            state, version = held
            if not await self._user_may_see_held(user_id, room_id, state, version):
                return None
            return await self._local_room(room_id, state, version)
        room = remote_cache.get(room_id)
        if (room is None or not room.complete) and self.remote is not None:
            answer = await self.remote.hierarchy(self._servers(room_id, via), room_id, suggested_only)
            if answer is not None and answer["room"].get("room_id") == room_id:
                room = _Room(_without_children(answer["room"]), answer["room"].get("children_state", []))
                for child in answer["children"]:
                    remote_cache.setdefault(child["room_id"], _Room(_without_children(child),
                                                                    child.get("children_state", []), False))
                remote_cache[room_id] = room
        if room is None or not await self._user_may_see_remote(user_id, room.summary):
            return None
        return room

    # --- the Client-Server endpoints ---------------------------------------------------------

    async def hierarchy(self, user_id: str, room_id: str, suggested_only: bool = False,
                        limit: int | None = None, max_depth: int | None = None,
                        from_token: str | None = None) -> dict[str, Any]:
        if limit is not None and limit < 1:
            raise invalid_param("limit must be greater than zero")
        if max_depth is not None and max_depth < 0:
            raise invalid_param("max_depth must not be negative")
        limit = min(limit or DEFAULT_LIMIT, MAX_LIMIT)
        depth_limit = MAX_DEPTH if max_depth is None else min(max_depth, MAX_DEPTH)
        remote_cache: dict[str, _Room] = {}
        if from_token is not None:
            session = await self._ephemeral.get(f"hierarchy:{from_token}")
            if session is None or session.get("user_id") != user_id or session.get("room_id") != room_id:
                raise invalid_param("Unknown pagination token")
            if session.get("suggested_only") != suggested_only or session.get("max_depth") != depth_limit:
                raise invalid_param("suggested_only and max_depth cannot change on paginated requests")
            queue: list[list[Any]] = session["queue"]
            processed: set[str] = set(session["processed"])
        else:
            if await self._room_for_user(user_id, room_id, [], suggested_only, remote_cache) is None:
                raise forbidden("You may not view this room")
            queue, processed = [[room_id, 0, []]], set()

        rooms: list[dict[str, Any]] = []
        while queue and len(rooms) < limit:
            current, depth, via = queue.pop()
            if current in processed:
                continue
            processed.add(current)
            room = await self._room_for_user(user_id, current, via, suggested_only, remote_cache)
            if room is None:
                continue
            rooms.append({**room.summary, "children_state": room.children_state})
            if depth >= depth_limit:
                continue
            kids = [c for c in room.children_state if c["state_key"] not in processed
                    and (not suggested_only or c["content"].get("suggested") is True)]
            room_left = MAX_QUEUE - len(queue)
            queue.extend([c["state_key"], depth + 1, c["content"]["via"]] for c in reversed(kids[:max(room_left, 0)]))

        body: dict[str, Any] = {"rooms": rooms}
        if queue:
            token = secrets.token_urlsafe(18)
            await self._ephemeral.put(f"hierarchy:{token}", {
                "user_id": user_id, "room_id": room_id, "suggested_only": suggested_only, "max_depth": depth_limit,
                "queue": queue, "processed": sorted(processed)}, SESSION_TTL_S)
            body["next_batch"] = token
        return body

    async def room_summary(self, user_id: str, room_id_or_alias: str, via: list[str]) -> dict[str, Any]:
        try:
            room_id, servers = await self._membership.resolve_room(room_id_or_alias)
        except MatrixError as e:
            if e.status == 400:
                raise
            raise not_found("Room not found") from None
        room = await self._room_for_user(user_id, room_id, [*via, *servers], False, {})
        if room is None:
            raise not_found("Room not found, or you may not see it")
        entry = dict(room.summary)
        membership = await self._rooms.membership(room_id, user_id) if await self._held(room_id) is not None \
            else None
        if membership is None:
            outside = await self._rooms.outside_membership(room_id, user_id)
            membership = outside.membership if outside is not None else None
        entry["membership"] = membership or "leave"
        return entry

    # --- the Server-Server endpoint ------------------------------------------------------------

    async def for_server(self, origin: str, room_id: str, suggested_only: bool) -> dict[str, Any]:
        """A room and its children as `origin` may see them (404 when it may see none of it);
        children this server does not hold are left out, those it may not see listed as inaccessible."""
        held = await self._held(room_id)
        if held is None or not await self._server_may_see(origin, *held):
            raise not_found("Room not found, or your server may not see it")
        state, version = held
        room = await self._local_room(room_id, state, version)
        found: list[dict[str, Any]] = []
        inaccessible: list[str] = []
        for child in children(state, suggested_only):
            child_id = child.state_key or ""
            child_held = await self._held(child_id)
            if child_held is None:
                continue
            if await self._server_may_see(origin, *child_held):
                child_room = await self._local_room(child_id, *child_held)
                found.append({**child_room.summary, "children_state": child_room.children_state})
            else:
                inaccessible.append(child_id)
        return {"room": {**room.summary, "children_state": room.children_state}, "children": found,
                "inaccessible_children": inaccessible}
