"""Filters (POST/GET /user/{userId}/filter and the `filter` parameter of /sync and /messages)."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import Any

from homeserver.errors import bad_json, not_found
from homeserver.json_input import parse_json
from storage.store import Store

DEFAULT_TIMELINE_LIMIT = 10
MAX_TIMELINE_LIMIT = 1000
# Filter IDs are 64-bit integer columns: a longer ID names no filter (and must not reach SQL).
MAX_FILTER_ID = 2**63 - 1


@dataclass(frozen=True)
class EventFilter:
    limit: int | None = None
    types: tuple[str, ...] | None = None
    not_types: tuple[str, ...] = ()
    senders: tuple[str, ...] | None = None
    not_senders: tuple[str, ...] = ()
    lazy_load_members: bool = False
    include_redundant_members: bool = False
    unread_thread_notifications: bool = False

    def allows_type(self, event_type: str) -> bool:
        if any(fnmatch.fnmatchcase(event_type, p) for p in self.not_types):
            return False
        return self.types is None or any(fnmatch.fnmatchcase(event_type, p) for p in self.types)

    def allows(self, event_type: str, sender: str) -> bool:
        if not self.allows_type(event_type):
            return False
        if sender in self.not_senders:
            return False
        return self.senders is None or sender in self.senders


@dataclass(frozen=True)
class SyncFilter:
    timeline: EventFilter = field(default_factory=EventFilter)
    state: EventFilter = field(default_factory=EventFilter)
    ephemeral: EventFilter = field(default_factory=EventFilter)
    room_account_data: EventFilter = field(default_factory=EventFilter)
    account_data: EventFilter = field(default_factory=EventFilter)
    presence: EventFilter = field(default_factory=EventFilter)
    rooms: tuple[str, ...] | None = None
    not_rooms: tuple[str, ...] = ()
    include_leave: bool = False

    @property
    def timeline_limit(self) -> int:
        return self.timeline.limit if self.timeline.limit is not None else DEFAULT_TIMELINE_LIMIT

    def room_allowed(self, room_id: str) -> bool:
        return room_id not in self.not_rooms and (self.rooms is None or room_id in self.rooms)


def string_list(value: Any, name: str) -> tuple[str, ...] | None:
    """A field that must be a list of strings (filters, search requests); None when absent."""
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise bad_json(f"{name} must be a list of strings")
    return tuple(value)


def parse_event_filter(raw: Any, name: str) -> EventFilter:
    if raw is None:
        return EventFilter()
    if not isinstance(raw, dict):
        raise bad_json(f"{name} must be an object")
    limit = raw.get("limit")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise bad_json(f"{name}.limit must be a non-negative integer")
    for flag in ("lazy_load_members", "include_redundant_members", "unread_thread_notifications"):
        if flag in raw and not isinstance(raw[flag], bool):
            raise bad_json(f"{name}.{flag} must be a boolean")
    return EventFilter(
        limit=min(limit, MAX_TIMELINE_LIMIT) if limit is not None else None,
        types=string_list(raw.get("types"), f"{name}.types"),
        not_types=string_list(raw.get("not_types"), f"{name}.not_types") or (),
        senders=string_list(raw.get("senders"), f"{name}.senders"),
        not_senders=string_list(raw.get("not_senders"), f"{name}.not_senders") or (),
        lazy_load_members=raw.get("lazy_load_members", False),
        include_redundant_members=raw.get("include_redundant_members", False),
        unread_thread_notifications=raw.get("unread_thread_notifications", False))


def parse_sync_filter(raw: Any) -> SyncFilter:
    if not isinstance(raw, dict):
        raise bad_json("filter must be an object")
    room = raw.get("room", {})
    if not isinstance(room, dict):
        raise bad_json("filter.room must be an object")
    if "include_leave" in room and not isinstance(room["include_leave"], bool):
        raise bad_json("room.include_leave must be a boolean")
    return SyncFilter(
        timeline=parse_event_filter(room.get("timeline"), "room.timeline"),
        state=parse_event_filter(room.get("state"), "room.state"),
        ephemeral=parse_event_filter(room.get("ephemeral"), "room.ephemeral"),
        room_account_data=parse_event_filter(room.get("account_data"), "room.account_data"),
        account_data=parse_event_filter(raw.get("account_data"), "account_data"),
        presence=parse_event_filter(raw.get("presence"), "presence"),
        rooms=string_list(room.get("rooms"), "room.rooms"),
        not_rooms=string_list(room.get("not_rooms"), "room.not_rooms") or (),
        include_leave=room.get("include_leave", False))


class Filters:
    def __init__(self, store: Store) -> None:
        self._store = store

    async def create(self, user_id: str, definition: dict[str, Any]) -> str:
        parse_sync_filter(definition)  # refuse what we could not apply later
        return str(await self._store.user_data.add_filter(user_id, definition))

    async def get(self, user_id: str, filter_id: str) -> dict[str, Any]:
        if not (filter_id.isascii() and filter_id.isdigit()) or int(filter_id) > MAX_FILTER_ID:
            raise not_found("Unknown filter")
        definition = await self._store.user_data.get_filter(user_id, int(filter_id))
        if definition is None:
            raise not_found("Unknown filter")
        return definition

    async def resolve(self, user_id: str, param: str | None) -> SyncFilter:
        """The `filter` query parameter: a stored filter's ID or an inline JSON filter."""
        if param is None or param == "":
            return SyncFilter()
        if param.lstrip().startswith("{"):
            return parse_sync_filter(parse_json(param.encode("utf-8", "surrogatepass")))
        return parse_sync_filter(await self.get(user_id, param))
