"""Rooms as a server admin sees them: list, details, members, state; shutting a room down.

A shutdown makes every local member leave (invites are rejected), drops the room's local aliases and
its directory entry, blocks it when asked (no local user may join it again) and, unless told not to,
purges it: every event, state group, receipt and room account data row goes. It runs in the background;
its status is kept a day (in the ephemeral store, so every worker can answer for it).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from dataclasses import dataclass
from typing import Any

from homeserver.admin.users import page_bounds
from homeserver.clock import now_ms
from homeserver.ephemeral import Ephemeral
from homeserver.errors import MatrixError, bad_json, invalid_param, not_found
from homeserver.events.client_format import client_event
from homeserver.events.event import Event
from homeserver.events.ids import parse_user_id
from homeserver.rooms.creation import RoomCreator
from homeserver.rooms.membership import Membership
from homeserver.rooms.rooms import Rooms
from storage.store import Store

log = logging.getLogger("whispr.admin")

DELETE_STATUS_TTL_S = 86_400
MAX_ID_LENGTH = 255  # the spec's limit on room and user IDs
# order_by values of the room list; the numeric ones sort largest first, as Synapse's.
_TEXT_ORDER = ("name", "canonical_alias", "creator", "encryption", "join_rules", "guest_access",
               "history_visibility")
_LARGEST_FIRST = ("joined_members", "joined_local_members", "version", "state_events", "federatable", "public")
_ALIASES = {"alphabetical": "name", "size": "joined_members"}
ROOM_ORDER = (*_TEXT_ORDER, *_LARGEST_FIRST, *_ALIASES)
# Memberships that a shutdown ends with a leave.
_IN_ROOM = ("join", "invite", "knock")


# What the room made for the members of a shut-down room says, unless the admin words it.
DEFAULT_NEW_ROOM_NAME = "Room closed by the server's administrators"
DEFAULT_NEW_ROOM_MESSAGE = "The room you were in was shut down for breaking this server's rules."
NEW_ROOM_USERS_DEFAULT = -10  # its members may read, not speak


@dataclass(frozen=True)
class DeleteRequest:
    block: bool
    purge: bool
    force_purge: bool
    # Synapse's Delete Room API: a new room made by this (local) user, into which the old room's
    # local members are moved, with its name and a first message.
    new_room_user_id: str | None = None
    room_name: str = DEFAULT_NEW_ROOM_NAME
    message: str = DEFAULT_NEW_ROOM_MESSAGE

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> "DeleteRequest":
        for flag in ("block", "purge", "force_purge"):
            if flag in body and not isinstance(body[flag], bool):
                raise bad_json(f"{flag} must be a boolean")
        for text in ("new_room_user_id", "room_name", "message"):
            if body.get(text) is not None and not isinstance(body[text], str):
                raise bad_json(f"{text} must be a string")
        new_room_user_id = body.get("new_room_user_id")
        if new_room_user_id is not None:
            parse_user_id(new_room_user_id)
        return cls(body.get("block", False), body.get("purge", True), body.get("force_purge", False),
                   new_room_user_id, body.get("room_name") or DEFAULT_NEW_ROOM_NAME,
                   body.get("message") or DEFAULT_NEW_ROOM_MESSAGE)


def check_room_id(room_id: str) -> str:
    """400 for what cannot be a room ID (so that no store is asked about it)."""
    if not room_id.startswith("!") or len(room_id) > MAX_ID_LENGTH or "\x00" in room_id:
        raise invalid_param(f"{room_id[:MAX_ID_LENGTH]!r} is not a room ID")
    return room_id


def _content(state: dict[str, Event], event_type: str, key: str) -> Any:
    ev = state.get(event_type)
    return None if ev is None else ev.content.get(key)


class AdminRooms:
    def __init__(self, server_name: str, rooms: Rooms, membership: Membership, store: Store,
                 ephemeral: Ephemeral, creator: RoomCreator) -> None:
        self._server_name = server_name
        self._creator = creator
        self._rooms = rooms
        self._membership = membership
        self._store = store
        self._ephemeral = ephemeral
        self._tasks: set[asyncio.Task[None]] = set()

    def _local(self, user_id: str) -> bool:
        return user_id.endswith(":" + self._server_name)

    async def _summaries(self, room_id: str | None = None) -> list[dict[str, Any]]:
        """Synapse's room summary of every room we hold (or of one), from a few queries in all."""
        admin = self._store.admin
        rows = await admin.rooms(room_id)
        state_rows = await admin.summary_state(room_id)
        events = await self._rooms.get_events([r["event_id"] for r in state_rows])
        state: dict[str, dict[str, Event]] = {}
        for r in state_rows:
            ev = events.get(r["event_id"])
            if ev is not None:
                state.setdefault(r["room_id"], {})[r["type"]] = ev
        counts = await admin.state_counts(room_id)
        joined: dict[str, list[str]] = {}
        for r in await admin.joined_members(room_id):
            joined.setdefault(r["room_id"], []).append(r["user_id"])
        out = []
        for row in rows:
            rid = row["room_id"]
            s = state.get(rid, {})
            members = joined.get(rid, [])
            create = s.get("m.room.create")
            tombstone = s.get("m.room.tombstone")
            out.append({
                "room_id": rid,
                "name": _content(s, "m.room.name", "name"),
                "topic": _content(s, "m.room.topic", "topic"),
                "avatar": _content(s, "m.room.avatar", "url"),
                "canonical_alias": _content(s, "m.room.canonical_alias", "alias"),
                "joined_members": len(members),
                "joined_local_members": sum(1 for m in members if self._local(m)),
                "version": row["room_version"],
                "creator": create.sender if create is not None else row["creator"],
                "encryption": _content(s, "m.room.encryption", "algorithm"),
                "federatable": create is None or create.content.get("m.federate", True) is not False,
                "public": bool(row["is_public"]),
                "join_rules": _content(s, "m.room.join_rules", "join_rule"),
                "guest_access": _content(s, "m.room.guest_access", "guest_access"),
                "history_visibility": _content(s, "m.room.history_visibility", "history_visibility"),
                "state_events": counts.get(rid, 0),
                "room_type": create.content.get("type") if create is not None else None,
                "tombstoned": tombstone is not None,
                "replacement_room": tombstone.content.get("replacement_room") if tombstone is not None else None,
            })
        return out

    async def list_rooms(self, *, offset: int, limit: int, order_by: str, backwards: bool, search_term: str | None,
                         public: bool | None, empty: bool | None) -> dict[str, Any]:
        if order_by not in ROOM_ORDER:
            raise invalid_param(f"order_by must be one of {', '.join(ROOM_ORDER)}")
        offset, limit = page_bounds(offset, limit)
        order_by = _ALIASES.get(order_by, order_by)
        rooms = await self._summaries()
        if search_term:
            term = search_term.lower()
            rooms = [r for r in rooms if term in (r["name"] or "").lower() or search_term in r["room_id"]
                     or term in (r["canonical_alias"] or "").split(":", 1)[0].lower()]
        if public is not None:
            rooms = [r for r in rooms if r["public"] is public]
        if empty is not None:
            rooms = [r for r in rooms if (r["joined_members"] == 0) is empty]
        rooms.sort(key=lambda r: r["room_id"])
        present = [r for r in rooms if r[order_by] is not None]
        absent = [r for r in rooms if r[order_by] is None]
        present.sort(key=lambda r: r[order_by], reverse=(order_by in _LARGEST_FIRST) != backwards)
        rooms = present + absent
        page = rooms[offset:offset + limit]
        body: dict[str, Any] = {"rooms": page, "offset": offset, "total_rooms": len(rooms)}
        if offset + len(page) < len(rooms):
            body["next_batch"] = offset + len(page)
        if offset > 0:
            body["prev_batch"] = max(0, offset - limit)
        return body

    async def details(self, room_id: str) -> dict[str, Any]:
        found = await self._summaries(check_room_id(room_id))
        if not found:
            raise not_found("Room not found")
        room = found[0]
        members = await self._store.rooms.members(room_id)
        local = [u for u in members if self._local(u)]
        joined_local = [u for u, _ in (await self._store.rooms.members(room_id, "join")).items() if self._local(u)]
        return {**room, "joined_local_devices": await self._store.admin.device_count(joined_local),
                "forgotten": await self._store.admin.forgotten_by_all(room_id, local)}

    async def members(self, room_id: str) -> dict[str, Any]:
        await self._require(room_id)
        joined = sorted(await self._store.rooms.members(room_id, "join"))
        return {"members": joined, "total": len(joined)}

    async def state(self, room_id: str, event_type: str | None) -> dict[str, Any]:
        await self._require(room_id)
        version = await self._rooms.room_version(room_id)
        now = now_ms()
        events = [ev for key, ev in sorted((await self._rooms.current_state(room_id)).items())
                  if event_type is None or key[0] == event_type]
        return {"state": [client_event(ev, version, now) for ev in events]}

    async def _require(self, room_id: str) -> None:
        room = await self._rooms.room(check_room_id(room_id))
        if room is None or room.current_group is None:
            raise not_found("Room not found")

    # --- blocking -----------------------------------------------------------

    async def blocked(self, room_id: str) -> dict[str, Any]:
        by = await self._store.admin.room_blocked_by(check_room_id(room_id))
        return {"block": True, "user_id": by} if by is not None else {"block": False}

    async def set_blocked(self, room_id: str, block: object, admin_id: str) -> None:
        if not isinstance(block, bool):
            raise bad_json("block must be a boolean")
        check_room_id(room_id)
        if block:
            await self._store.admin.block_room(room_id, admin_id, now_ms())
        else:
            await self._store.admin.unblock_room(room_id)

    # --- shutdown -------------------------------------------------------------

    async def start_delete(self, room_id: str, admin_id: str, request: DeleteRequest) -> str:
        """Begin shutting a room down in the background; the delete ID to ask for its status."""
        await self._known_or_blockable(room_id, request)
        ids = await self._room_delete_ids(room_id)
        for other in ids:
            status = await self._ephemeral.get(f"admin-delete:{other}")
            if status is not None and status["status"] in ("scheduled", "active"):
                raise MatrixError(400, "M_UNKNOWN", f"Deletion of {room_id} is already in progress")
        delete_id = secrets.token_urlsafe(12)
        await self._save(_new_status(delete_id, room_id))
        await self._ephemeral.put(f"admin-delete-room:{room_id}", {"ids": [*ids, delete_id]}, DELETE_STATUS_TTL_S)
        task = asyncio.get_running_loop().create_task(self._delete(delete_id, room_id, admin_id, request))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return delete_id

    async def delete_now(self, room_id: str, admin_id: str, request: DeleteRequest) -> dict[str, Any]:
        """The v1 API (and the command line): shut the room down and answer when done."""
        await self._known_or_blockable(room_id, request)
        status = _new_status(secrets.token_urlsafe(12), room_id)
        await self._shutdown(status, admin_id, request)
        if status["status"] == "failed":
            raise MatrixError(400, "M_UNKNOWN", f"The room could not be deleted: {status['error']}")
        result: dict[str, Any] = status["shutdown_room"]
        return result

    async def _known_or_blockable(self, room_id: str, request: DeleteRequest) -> None:
        check_room_id(room_id)
        if request.new_room_user_id is not None and not self._local(request.new_room_user_id):
            raise invalid_param("new_room_user_id must be a user of this server")
        if await self._rooms.room(room_id) is None and not request.block:
            raise not_found("Room not found")

    async def _room_delete_ids(self, room_id: str) -> list[str]:
        index = await self._ephemeral.get(f"admin-delete-room:{room_id}")
        return list(index["ids"]) if index else []

    async def _save(self, status: dict[str, Any]) -> None:
        await self._ephemeral.put(f"admin-delete:{status['delete_id']}", status, DELETE_STATUS_TTL_S)

    async def _delete(self, delete_id: str, room_id: str, admin_id: str, request: DeleteRequest) -> None:
        status = _new_status(delete_id, room_id)
        await self._shutdown(status, admin_id, request)

    async def _shutdown(self, status: dict[str, Any], admin_id: str, request: DeleteRequest) -> None:
        room_id = status["room_id"]
        result = status["shutdown_room"]
        status["status"] = "active"
        await self._save(status)
        try:
            if request.block:
                await self._store.admin.block_room(room_id, admin_id, now_ms())
            new_room_id = await self._new_room(request) if request.new_room_user_id is not None else None
            result["new_room_id"] = new_room_id
            members = await self._store.rooms.members(room_id)
            for user_id in sorted(members):
                if not self._local(user_id):
                    continue
                membership = (await self._store.rooms.rooms_for_user(user_id)).get(room_id, ("", ""))[0]
                if membership not in _IN_ROOM:
                    continue
                try:
                    await self._membership.leave(room_id, user_id)
                    await self._store.rooms.forget(user_id, room_id)
                    result["kicked_users"].append(user_id)
                except Exception:  # one member must not keep the others in the room
                    log.exception("shutdown of %s: %s could not leave", room_id, user_id)
                    result["failed_to_kick_users"].append(user_id)
                    continue
                if new_room_id is not None and membership == "join":
                    try:
                        await self._membership.join(new_room_id, user_id)
                    except Exception:
                        log.exception("shutdown of %s: %s could not join %s", room_id, user_id, new_room_id)
            await self._save(status)
            for alias in await self._store.rooms.aliases_for_room(room_id):
                result["local_aliases"].append(alias)
                if new_room_id is None:
                    await self._store.rooms.delete_alias(alias)
            if new_room_id is not None:
                await self._store.rooms.move_aliases(room_id, new_room_id)  # as Synapse: aliases lead there
            if await self._rooms.room(room_id) is not None:
                await self._store.rooms.set_public(room_id, False)
            if request.purge:
                still = [u for u in await self._store.rooms.members(room_id, "join") if self._local(u)]
                if still and not request.force_purge:
                    raise RuntimeError(f"local users are still joined: {', '.join(still)}")
                await self._store.admin.purge_room(room_id)
                self._rooms.forget_room(room_id)
            status["status"] = "complete"
            log.info("room %s shut down by %s (%s)", room_id, admin_id,
                     ", ".join(w for w, on in (("blocked", request.block), ("purged", request.purge)) if on) or
                     "members removed")
        except Exception as e:
            log.exception("shutdown of %s failed", room_id)
            status["status"] = "failed"
            status["error"] = str(e)
        await self._save(status)

    async def _new_room(self, request: DeleteRequest) -> str:
        """The room the old room's local members are moved to: public, read-only for them."""
        creator = request.new_room_user_id
        assert creator is not None
        room_id, _ = await self._creator.create(creator, {
            "preset": "public_chat", "name": request.room_name,
            "power_level_content_override": {"users_default": NEW_ROOM_USERS_DEFAULT}})
        await self._rooms.create_event(room_id, creator, "m.room.message", {"msgtype": "m.text",
                                                                            "body": request.message})
        return room_id

    async def delete_status(self, delete_id: str) -> dict[str, Any]:
        status = await self._ephemeral.get(f"admin-delete:{delete_id}")
        if status is None:
            raise not_found("delete id not found")
        return status

    async def room_delete_statuses(self, room_id: str) -> dict[str, Any]:
        check_room_id(room_id)
        results = []
        for delete_id in await self._room_delete_ids(room_id):
            status = await self._ephemeral.get(f"admin-delete:{delete_id}")
            if status is not None:
                results.append(status)
        if not results:
            raise not_found(f"No delete task for room_id '{room_id}' found")
        return {"results": results}

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


def _new_status(delete_id: str, room_id: str) -> dict[str, Any]:
    return {"delete_id": delete_id, "room_id": room_id, "status": "scheduled",
            "shutdown_room": {"kicked_users": [], "failed_to_kick_users": [], "local_aliases": [],
                              "new_room_id": None}}

