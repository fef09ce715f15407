"""m.ignored_user_list: whom a user ignores. Their invites, friend requests and timeline events
are hidden from the user's /sync and /messages (the spec's "Ignoring Users").

Read on every sync, so each user's set is cached until the notifier says their account data
(or anything else of theirs) moved."""

from __future__ import annotations

from collections import OrderedDict
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
