"""m.ignored_user_list: whom a user ignores. Their invites, friend requests and timeline events
are hidden from the user's /sync and /messages (the spec's "Ignoring Users").

Read on every sync, so each user's set is cached until the notifier says their account data
(or anything else of theirs) moved. Push evaluation asks, for every event, which members ignore
its sender: the users whose list is not empty are known in every process (loaded once, then told
of each change through the notifier), so that question costs nothing when nobody ignores anyone."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from typing import Any

from homeserver.sync.notifier import Notifier
from storage.store import Store

IGNORED_TYPE = "m.ignored_user_list"
CACHE_SIZE = 20_000


def ignored_users(content: dict[str, Any] | None) -> frozenset[str]:
    """The user IDs of an m.ignored_user_list content ({"ignored_users": {user_id: {}}})."""
    users = (content or {}).get("ignored_users")
    return frozenset(u for u in users if isinstance(u, str)) if isinstance(users, dict) else frozenset()


class IgnoredUsers:
    def __init__(self, store: Store, notifier: Notifier) -> None:
        self._store = store
        self._notifier = notifier
        self._cache: OrderedDict[str, tuple[int, frozenset[str]]] = OrderedDict()
        self._ignorers: set[str] | None = None  # users whose list is not empty (None: not read yet)
        self._heard: dict[str, bool] = {}  # changes heard while the set is being read
        notifier.on_handler("ignored_users", self._on_changed)

    def _on_changed(self, msg: dict[str, Any]) -> None:
        user_id = msg.get("user_id")
        if not isinstance(user_id, str):
            return
        self._cache.pop(user_id, None)
        if self._ignorers is None:
            self._heard[user_id] = bool(msg.get("ignores"))
        elif msg.get("ignores"):
            self._ignorers.add(user_id)
        else:
            self._ignorers.discard(user_id)

    async def account_data_changed(self, user_id: str, room_id: str, data_type: str, content: dict[str, Any]) -> None:
        """RoomData's hook: a user's list was written; every process hears of it."""
        if data_type == IGNORED_TYPE and not room_id:
            await self._notifier.publish("ignored_users", {"user_id": user_id,
                                                           "ignores": bool(ignored_users(content))})

    async def ignoring(self, sender: str, user_ids: Iterable[str]) -> set[str]:
        """Those of `user_ids` who ignore `sender`."""
        if self._ignorers is None:
            self._heard = {}
            found = await self._store.user_data.global_account_data_of_type(IGNORED_TYPE)
            if self._ignorers is None:
                ignorers = {u for u, content in found if ignored_users(content)}
                for user_id, ignores in self._heard.items():  # later than what the read may have seen
                    (ignorers.add if ignores else ignorers.discard)(user_id)
                self._ignorers = ignorers
        if not self._ignorers:
            return set()
        return {u for u in self._ignorers.intersection(user_ids) if sender in await self.of(u)}

    async def of(self, user_id: str) -> frozenset[str]:
        cached = self._cache.get(user_id)
        if cached is not None and not self._notifier.user_changed_since(user_id, cached[0]):
            return cached[1]
        position = self._notifier.position  # read before the query: a later change invalidates it
        found = ignored_users(await self._store.user_data.get_account_data(user_id, "", IGNORED_TYPE))
        self._cache.pop(user_id, None)
        self._cache[user_id] = (position, found)
        if len(self._cache) > CACHE_SIZE:
            self._cache.popitem(last=False)
        return found
