"""Who must hear that a user's devices changed, and what each user hears.

Every change (a device's keys uploaded, a device deleted, cross-signing keys or signatures, a
remote server's update) takes a position on the sync stream; the local users who share a room
with the user are woken under their own IDs, and other servers in those rooms get an
m.device_list_update (local users only) through the `DeviceListPublisher`. A user hears, in /sync
and /keys/changes, of users whose devices changed and who share a room with them, of users who
just came to share one (`changed`: their keys are new to this user), and of users who no longer
share any (`left`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from homeserver.events.auth_rules import server_of
from homeserver.sync.notifier import Notifier
from storage.store import Store


class DeviceListPublisher(Protocol):
    """Tells other servers (federation wires it in)."""

    async def devices_changed(self, user_id: str, device_ids: Sequence[str], stream: int, deleted: bool) -> None: ...

    async def signing_keys_changed(self, user_id: str) -> None: ...


@dataclass(frozen=True)
class ListChanges:
    changed: list[str]
    left: list[str]


class DeviceLists:
    def __init__(self, server_name: str, store: Store, notifier: Notifier) -> None:
        self._server_name = server_name
        self._store = store
        self._notifier = notifier
        self.remote: DeviceListPublisher | None = None
        # user -> the last stream position at which a change was announced to them (every process
        # hears it through the notifier, before the position itself), so a sync asks the database
        # only when there is something to find.
        self._heard: dict[str, int] = {}
        # Told, in every process, of the user whose devices or keys changed (caches of keys forget them).
        self.on_keys_changed: list[Callable[[str], None]] = []
        notifier.on_handler("device_lists", self._on_heard)

    def _on_heard(self, msg: dict[str, Any]) -> None:
        stream = int(msg["stream"])
        for user_id in msg.get("user_ids", []):
            self._heard[user_id] = max(stream, self._heard.get(user_id, 0))
        changed = msg.get("changed")
        if isinstance(changed, str):
            for forget in self.on_keys_changed:
                forget(changed)

    def heard_since(self, user_id: str, stream: int) -> bool:
        return self._heard.get(user_id, self._notifier.start_position) > stream

    def is_local(self, user_id: str) -> bool:
        return server_of(user_id) == self._server_name

    async def announce(self, user_id: str, stream: int, device_ids: Sequence[str] = (), deleted: bool = False,
                       signing_keys: bool = False) -> None:
        """A change committed at `stream`: wake the local users who share a room, tell other servers."""
        interested = await self._store.e2ee.users_sharing_rooms(user_id)
        local = [u for u in interested if self.is_local(u)]
        await self._notifier.publish("device_lists", {"user_ids": local, "stream": stream, "changed": user_id})
        await self._notifier.notify(stream, wake_only=local)
        if self.remote is not None and self.is_local(user_id):
            if device_ids:
                await self.remote.devices_changed(user_id, device_ids, stream, deleted)
            if signing_keys:
                await self.remote.signing_keys_changed(user_id)

    async def keys_changed_quietly(self, user_id: str) -> None:
        """A change only the user's own clients see (their user-signing key): caches forget it, nobody is woken."""
        await self._notifier.publish("device_lists", {"user_ids": [], "stream": 0, "changed": user_id})

    async def changes(self, user_id: str, after: int, upto: int, rooms: Sequence[str],
                      with_changes: bool = True) -> ListChanges:
        """What `user_id` hears for (after, upto]; `rooms`: the rooms whose membership may have moved;
        `with_changes` False when the notifier says no device list change woke the user."""
        changed = await self._store.e2ee.changed_users(user_id, after, upto) if with_changes else set()
        candidates_left: set[str] = set()
        if rooms:
            members = await self._store.e2ee.member_events_in(rooms, after, upto)
            by_room: dict[str, set[str]] = {}
            for room_id, member in members:
                by_room.setdefault(room_id, set()).add(member)
            for room_id, moved in by_room.items():
                present = {**await self._store.rooms.members(room_id, "join"),
                           **await self._store.rooms.members(room_id, "invite")}
                if user_id not in present:
                    candidates_left |= set(present) | moved  # a room left may have been the last shared
                    continue
                if user_id in moved:
                    changed |= set(present)  # a room just joined: all its members' keys are news
                changed |= {m for m in moved if m in present}
                candidates_left |= {m for m in moved if m not in present}
        candidates_left.discard(user_id)
        left: set[str] = set()
        if candidates_left:
            left = candidates_left - await self._store.e2ee.shared_with(user_id, sorted(candidates_left))
        return ListChanges(sorted(changed - left), sorted(left))
