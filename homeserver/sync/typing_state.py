"""Typing notifications: who is typing in which room, expiring on their own.

The typing "serial" is the millisecond time of the room's last change, so that
every process (fed by the notifier) agrees on it without coordination.
"""

from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Callable

from homeserver.clock import now_ms
from homeserver.sync.notifier import Notifier

MAX_TIMEOUT_MS = 120_000


class Typing:
    def __init__(self, notifier: Notifier) -> None:
        self._notifier = notifier
        # room -> user -> expiry (ms)
        self._typing: dict[str, dict[str, int]] = {}
        self._serials: dict[str, int] = {}
        self._timers: dict[tuple[str, str], asyncio.TimerHandle] = {}
        self.serial = 0
        self.on_local_change: list[Callable[[str, str, bool, int], Awaitable[None]]] = []
        notifier.on_handler("typing", self._apply)

    async def set(self, room_id: str, user_id: str, typing: bool, timeout_ms: int, local: bool = True) -> None:
        """Record a typing change; a local user's change is also passed to `on_local_change` (federation)."""
        expires = now_ms() + min(max(timeout_ms, 0), MAX_TIMEOUT_MS) if typing else 0
        await self._notifier.publish("typing", {"room_id": room_id, "user_id": user_id, "expires": expires})
        if local:
            for hook in self.on_local_change:
                await hook(room_id, user_id, typing, timeout_ms)

    def _apply(self, msg: dict[str, Any]) -> None:
        room_id, user_id, expires = msg["room_id"], msg["user_id"], int(msg["expires"])
        users = self._typing.setdefault(room_id, {})
        timer = self._timers.pop((room_id, user_id), None)
        if timer is not None:
            timer.cancel()
        was_typing = user_id in users
        if expires > now_ms():
            users[user_id] = expires
            loop = asyncio.get_running_loop()
            self._timers[(room_id, user_id)] = loop.call_later(
                (expires - now_ms()) / 1000, self._expire, room_id, user_id, expires)
        else:
            users.pop(user_id, None)
            if not was_typing:
                return
        self._changed(room_id)

    def _expire(self, room_id: str, user_id: str, expires: int) -> None:
        users = self._typing.get(room_id, {})
        if users.get(user_id) == expires:
            del users[user_id]
            self._timers.pop((room_id, user_id), None)
            self._changed(room_id)

    def _changed(self, room_id: str) -> None:
        serial = max(now_ms(), self.serial + 1)
        self.serial = serial
        self._serials[room_id] = serial
        self._notifier.wake([room_id])

    def changed_since(self, room_id: str, serial: int) -> bool:
        return self._serials.get(room_id, 0) > serial

    def users(self, room_id: str) -> list[str]:
        return sorted(self._typing.get(room_id, {}))

    def close(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
