"""Receipts, read markers and account data (global and per room, including m.direct)."""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Awaitable, Callable, Iterable

from homeserver.clock import now_ms
from homeserver.errors import MatrixError, bad_json, forbidden, not_found
from homeserver.sync.notifier import Notifier
from homeserver.rooms.rooms import Rooms
from storage.store import Store
from storage.user_data import Receipt

RECEIPT_TYPES = ("m.read", "m.read.private")
MAX_ACCOUNT_DATA_BYTES = 65_536
# Types the server manages itself; clients use the dedicated endpoints.
SERVER_MANAGED = ("m.fully_read", "m.push_rules")
# Room tags live in the room account data of this type, as {"tags": {tag: {"order": n}}}.
TAG_TYPE = "m.tag"
MAX_TAG_BYTES = 255


def receipt_event(receipts: Iterable[Receipt], viewer: str) -> dict[str, Any] | None:
    """One room's receipts as the m.receipt event `viewer` may see (others' private ones left out)."""
    content: dict[str, dict[str, dict[str, Any]]] = defaultdict(lambda: defaultdict(dict))
    for r in receipts:
        if r.receipt_type == "m.read.private" and r.user_id != viewer:
            continue
        data: dict[str, Any] = {"ts": r.ts}
        if r.thread_id:
            data["thread_id"] = r.thread_id
        content[r.event_id][r.receipt_type][r.user_id] = data
    if not content:
        return None
    return {"type": "m.receipt", "content": {k: dict(v) for k, v in content.items()}}


class RoomData:
    def __init__(self, rooms: Rooms, store: Store, notifier: Notifier) -> None:
        self._rooms = rooms
        self._store = store
        self._notifier = notifier
        # Called with (room_id, receipt_type, user_id, event_id, ts) for local users' receipts.
        self.on_local_receipt: list[Callable[[str, str, str, str, int], Awaitable[None]]] = []
        # Called with (user_id, room_id, type, content) once a user's account data is written.
        self.on_account_data: list[Callable[[str, str, str, dict[str, Any]], Awaitable[None]]] = []

    async def receipt(self, user_id: str, room_id: str, receipt_type: str, event_id: str,
                      thread_id: object = None, local: bool = True) -> None:
        if receipt_type == "m.fully_read":
            await self.read_markers(user_id, room_id, {"m.fully_read": event_id})
            return
        if receipt_type not in RECEIPT_TYPES:
            raise MatrixError(400, "M_INVALID_PARAM", f"receipt type must be one of {', '.join(RECEIPT_TYPES)}")
        if thread_id is not None and not isinstance(thread_id, str):
            raise bad_json("thread_id must be a string")
        await self._rooms.require_joined(room_id, user_id)
        ev = await self._rooms.get_event(event_id)
        if ev is None or ev.room_id != room_id:
            raise not_found("Event not found in this room")
        ts = now_ms()
        stream = await self._store.user_data.put_receipt(room_id, receipt_type, user_id, thread_id or "",
                                                         event_id, ts)
        await self._notifier.notify(stream, room_id, receipt=True)
        if local:
            for hook in self.on_local_receipt:
                await hook(room_id, receipt_type, user_id, event_id, ts)

    async def read_markers(self, user_id: str, room_id: str, body: dict[str, Any]) -> None:
        await self._rooms.require_joined(room_id, user_id)
        for key in ("m.fully_read", "m.read", "m.read.private"):
            if key in body and not isinstance(body[key], str):
                raise bad_json(f"{key} must be an event ID")
        fully_read = body.get("m.fully_read")
        if fully_read is not None:
            ev = await self._rooms.get_event(fully_read)
            if ev is None or ev.room_id != room_id:
                raise not_found("Event not found in this room")
            await self._put(user_id, room_id, "m.fully_read", {"event_id": fully_read})
        for key in ("m.read", "m.read.private"):
            if body.get(key):
                await self.receipt(user_id, room_id, key, body[key])

    async def set_account_data(self, requester: str, user_id: str, room_id: str, data_type: str,
                               content: dict[str, Any]) -> None:
        if requester != user_id:
            raise forbidden("You cannot set another user's account data")
        if data_type in SERVER_MANAGED:
            raise MatrixError(405, "M_BAD_JSON", f"{data_type} is managed by the server")
        if len(str(content)) > MAX_ACCOUNT_DATA_BYTES:
            raise MatrixError(413, "M_TOO_LARGE", "account data is too large")
        if room_id and await self._rooms.room(room_id) is None:
            raise MatrixError(400, "M_INVALID_PARAM", "Unknown room")
        await self._put(user_id, room_id, data_type, content)

    async def get_account_data(self, requester: str, user_id: str, room_id: str, data_type: str) -> dict[str, Any]:
        if requester != user_id:
            raise forbidden("You cannot read another user's account data")
        content = await self._store.user_data.get_account_data(user_id, room_id, data_type)
        if content is None:
            raise not_found("No account data of that type")
        return content

    async def tags(self, requester: str, user_id: str, room_id: str) -> dict[str, Any]:
        if requester != user_id:
            raise forbidden("You cannot read another user's tags")
        content = await self._store.user_data.get_account_data(user_id, room_id, TAG_TYPE) or {}
        tags = content.get("tags")
        return {"tags": tags if isinstance(tags, dict) else {}}

    async def set_tag(self, requester: str, user_id: str, room_id: str, tag: str, info: dict[str, Any]) -> None:
        if requester != user_id:
            raise forbidden("You cannot tag rooms for another user")
        if len(tag.encode()) > MAX_TAG_BYTES:
            raise MatrixError(400, "M_INVALID_PARAM", f"A tag is at most {MAX_TAG_BYTES} bytes")
        order = info.get("order")
        if order is not None and (isinstance(order, bool) or not isinstance(order, (int, float))):
            raise bad_json("order must be a number")
        if len(str(info)) > MAX_ACCOUNT_DATA_BYTES:
            raise MatrixError(413, "M_TOO_LARGE", "tag is too large")
        if await self._rooms.room(room_id) is None:
            raise MatrixError(400, "M_INVALID_PARAM", "Unknown room")
        await self._update_tags(user_id, room_id, lambda tags: {**tags, tag: info})

    async def remove_tag(self, requester: str, user_id: str, room_id: str, tag: str) -> None:
        if requester != user_id:
            raise forbidden("You cannot untag rooms for another user")
        if tag in (await self.tags(requester, user_id, room_id))["tags"]:
            await self._update_tags(user_id, room_id, lambda tags: {k: v for k, v in tags.items() if k != tag})

    async def _update_tags(self, user_id: str, room_id: str,
                           change: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
        """Read-modify-write of m.tag in one transaction: concurrent changes (Element moves a room
        between tags with a DELETE and a PUT at once) are all kept."""
        def apply(content: dict[str, Any] | None) -> dict[str, Any]:
            tags = (content or {}).get("tags")
            return {**(content or {}), "tags": change(tags if isinstance(tags, dict) else {})}

        stream = await self._store.user_data.update_account_data(user_id, room_id, TAG_TYPE, apply)
        await self._notifier.notify(stream, None, [user_id])

    async def add_direct_room(self, user_id: str, other: str, room_id: str) -> None:
        """Record a DM in m.direct (Whispr keeps it for its users; clients may too)."""
        current = await self._store.user_data.get_account_data(user_id, "", "m.direct") or {}
        rooms = list(current.get(other, []))
        if room_id in rooms:
            return
        await self._put(user_id, "", "m.direct", {**current, other: rooms + [room_id]})

    async def follow_upgrade(self, user_id: str, old_room_id: str, new_room_id: str) -> None:
        """A user who joins the replacement of a room they were in keeps its tags, and the new room
        joins the old one in their m.direct (as the spec's upgrades ask and Synapse does)."""
        old_tags = (await self._store.user_data.get_account_data(user_id, old_room_id, TAG_TYPE) or {}).get("tags")
        if isinstance(old_tags, dict) and old_tags:
            await self._update_tags(user_id, new_room_id, lambda tags: {**old_tags, **tags})
        direct = await self._store.user_data.get_account_data(user_id, "", "m.direct") or {}
        changed = {other: [*rooms, new_room_id] for other, rooms in direct.items()
                   if isinstance(rooms, list) and old_room_id in rooms and new_room_id not in rooms}
        if changed:
            await self._put(user_id, "", "m.direct", {**direct, **changed})

    async def _put(self, user_id: str, room_id: str, data_type: str, content: dict[str, Any]) -> None:
        stream = await self._store.user_data.put_account_data(user_id, room_id, data_type, content)
        await self._notifier.notify(stream, None, [user_id])
        for hook in self.on_account_data:
            await hook(user_id, room_id, data_type, content)
