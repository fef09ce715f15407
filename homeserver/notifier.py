"""Wakes waiting /sync and SSE requests when something they watch changes.

Waiters register under keys (room IDs and user IDs); a change wakes only the
waiters of its keys, never a scan over everyone. Two backends share this
interface: in-process (default) and Redis pub/sub, which relays every change
to the other processes sharing the database.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
from collections import defaultdict
from typing import Any, Callable, Iterable

log = logging.getLogger("whispr.notifier")

CHANNEL = "whispr:notify"


class Notifier:
    """In-process notifier. Positions only move forward."""

    def __init__(self) -> None:
        self.position = 0
        self.room_positions: dict[str, int] = {}
        self._waiters: dict[str, set[asyncio.Future[None]]] = defaultdict(set)
        self._handlers: dict[str, Callable[[dict[str, Any]], None]] = {}

    def seed(self, position: int, room_positions: dict[str, int]) -> None:
        self.position = max(self.position, position)
        for room_id, pos in room_positions.items():
            self.room_positions[room_id] = max(pos, self.room_positions.get(room_id, 0))

    def on_handler(self, kind: str, handler: Callable[[dict[str, Any]], None]) -> None:
        """Register the applier for a kind of replicated message (e.g. typing)."""
        self._handlers[kind] = handler

    async def notify(self, stream: int, room_id: str | None = None, user_ids: Iterable[str] = ()) -> None:
        """A new stream position was committed; wake who watches the room or the users."""
        self._apply({"kind": "stream", "stream": stream, "room_id": room_id, "user_ids": list(user_ids)})

    async def publish(self, kind: str, payload: dict[str, Any]) -> None:
        """Apply a replicated message here (and, with Redis, everywhere)."""
        self._apply({**payload, "kind": kind})

    def _apply(self, msg: dict[str, Any]) -> None:
        kind = msg["kind"]
        if kind == "stream":
            stream = int(msg["stream"])
            self.position = max(self.position, stream)
            keys = list(msg.get("user_ids") or [])
            room_id = msg.get("room_id")
            if room_id:
                self.room_positions[room_id] = max(stream, self.room_positions.get(room_id, 0))
                keys.append(room_id)
            self.wake(keys)
        else:
            handler = self._handlers.get(kind)
            if handler is not None:
                handler(msg)

    def wake(self, keys: Iterable[str]) -> None:
        for key in keys:
            waiters = self._waiters.pop(key, None)
            if waiters:
                for fut in waiters:
                    if not fut.done():
                        fut.set_result(None)

    async def wait(self, keys: Iterable[str], timeout: float) -> bool:
        """Sleep until one of the keys is woken or the timeout passes; True if woken."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        keys = list(keys)
        for key in keys:
            self._waiters[key].add(fut)
        try:
            await asyncio.wait_for(fut, timeout)
            return True
        except asyncio.TimeoutError:
            return False
        finally:
            for key in keys:
                waiters = self._waiters.get(key)
                if waiters is not None:
                    waiters.discard(fut)
                    if not waiters:
                        del self._waiters[key]

    def waiting(self) -> int:
        return sum(len(w) for w in self._waiters.values())

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None


class RedisNotifier(Notifier):
    """Applies changes locally at once and relays them to the other processes through Redis."""

    def __init__(self, url: str, channel: str = CHANNEL) -> None:
        super().__init__()
        import redis.asyncio as aioredis

        self._redis = aioredis.from_url(url, decode_responses=True)
        self._channel = channel
        self._origin = secrets.token_hex(8)
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        pubsub = self._redis.pubsub()
        await pubsub.subscribe(self._channel)
        self._task = asyncio.create_task(self._listen(pubsub))

    async def _listen(self, pubsub: Any) -> None:
        try:
            async for message in pubsub.listen():
                if message.get("type") != "message":
                    continue
                try:
                    msg = json.loads(message["data"])
                    if msg.get("origin") != self._origin:
                        self._apply(msg)
                except (ValueError, KeyError):
                    log.warning("ignoring a malformed notifier message")
        finally:
            await pubsub.aclose()

    async def notify(self, stream: int, room_id: str | None = None, user_ids: Iterable[str] = ()) -> None:
        msg = {"kind": "stream", "stream": stream, "room_id": room_id, "user_ids": list(user_ids)}
        self._apply(msg)
        await self._redis.publish(self._channel, json.dumps({**msg, "origin": self._origin}))

    async def publish(self, kind: str, payload: dict[str, Any]) -> None:
        msg = {**payload, "kind": kind}
        self._apply(msg)
        await self._redis.publish(self._channel, json.dumps({**msg, "origin": self._origin}))

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
        await self._redis.aclose()


def make_notifier(redis_url: str, channel: str = CHANNEL) -> Notifier:
    return RedisNotifier(redis_url, channel) if redis_url else Notifier()
