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
GAP_TIMEOUT_S = 2.0


def _stream_message(stream: int, room_id: str | None, user_ids: Iterable[str], receipt: bool,
                    wake_only: Iterable[str]) -> dict[str, Any]:
    msg: dict[str, Any] = {"kind": "stream", "stream": stream, "room_id": room_id, "user_ids": list(user_ids),
                           "receipt": receipt}
    if wake_only:
        msg["wake_only"] = list(wake_only)
    return msg


class Notifier:
    """In-process notifier. Positions only move forward."""

    # Whether other processes write to the same database (they tell us through Redis).
    shared = False

    def __init__(self) -> None:
        self.position = 0
        # Everything at or below the start position may have changed before we
        # started watching; above it, these maps know each room's and user's last change.
        self.start_position = 0
        self.room_positions: dict[str, int] = {}
        self.user_positions: dict[str, int] = {}
        self.receipt_positions: dict[str, int] = {}
        self._waiters: dict[str, set[asyncio.Future[None]]] = defaultdict(set)
        self._handlers: dict[str, Callable[[dict[str, Any]], None]] = {}
        self._pending: dict[int, list[str]] = {}
        self._gap_timer: asyncio.TimerHandle | None = None
        # Positions up to here may include a change nobody heard of (a gap given up on).
        self.gap_floor = 0
        # Called with (stream, room_id, receipt) for every stream change applied here, local or relayed.
        self.on_stream: list[Callable[[int, str | None, bool], None]] = []

    def seed(self, position: int, room_positions: dict[str, int]) -> None:
        self.position = max(self.position, position)
        self.start_position = self.position
        for room_id, pos in room_positions.items():
            self.room_positions[room_id] = max(pos, self.room_positions.get(room_id, 0))

    def on_handler(self, kind: str, handler: Callable[[dict[str, Any]], None]) -> None:
        """Register the applier for a kind of replicated message (e.g. typing)."""
        self._handlers[kind] = handler

    async def notify(self, stream: int, room_id: str | None = None, user_ids: Iterable[str] = (),
                     receipt: bool = False, wake_only: Iterable[str] = ()) -> None:
        """A new stream position was committed; wake who watches the room or the users. `wake_only`:
        users woken whose memberships and account data did not change (what did, to-device messages
        or device lists, keeps its own record of who it concerns), so their syncs need not read those."""
        self._apply(_stream_message(stream, room_id, user_ids, receipt, wake_only))

    async def publish(self, kind: str, payload: dict[str, Any]) -> None:
        """Apply a replicated message here (and, with Redis, everywhere)."""
        self._apply({**payload, "kind": kind})

    def _apply(self, msg: dict[str, Any]) -> None:
        kind = msg["kind"]
        if kind == "stream":
            stream = int(msg["stream"])
            keys = list(msg.get("user_ids") or [])
            for user_id in keys:
                self.user_positions[user_id] = max(stream, self.user_positions.get(user_id, 0))
            keys += msg.get("wake_only") or []
            room_id = msg.get("room_id")
            for observer in self.on_stream:
                observer(stream, room_id or None, bool(msg.get("receipt")))
            if room_id:
                self.room_positions[room_id] = max(stream, self.room_positions.get(room_id, 0))
                if msg.get("receipt"):
                    self.receipt_positions[room_id] = max(stream, self.receipt_positions.get(room_id, 0))
                keys.append(room_id)
            self._advance(stream, keys)
        else:
            handler = self._handlers.get(kind)
            if handler is not None:
                handler(msg)

    def _advance(self, stream: int, keys: list[str]) -> None:
        """Move the position only over contiguous streams.

        Positions are allocated without gaps (the counter rolls back with its
        transaction), but notifications from several writers can arrive out of
        order: a sync must never pass a position whose change it has not heard
        of, or it would skip it for good. A gap left by a writer that died
        between commit and notify is given up after GAP_TIMEOUT_S.
        """
        if stream <= self.position:
            self.wake(keys)
            return
        self._pending[stream] = self._pending.get(stream, []) + keys
        woken: list[str] = []
        while self.position + 1 in self._pending:
            self.position += 1
            woken += self._pending.pop(self.position)
        if woken:
            self.wake(woken)
        if self._pending and self._gap_timer is None:
            self._gap_timer = asyncio.get_running_loop().call_later(GAP_TIMEOUT_S, self._skip_gap)

    def _skip_gap(self) -> None:
        self._gap_timer = None
        if not self._pending:
            return
        log.warning("no notification for stream %d..%d; moving on", self.position + 1, min(self._pending) - 1)
        self.position = min(self._pending) - 1
        self.gap_floor = self.position
        self._advance(self.position + 1, self._pending.pop(self.position + 1))

    def user_changed_since(self, user_id: str, stream: int) -> bool:
        """Whether the user's own data (memberships, account data) may have changed after `stream`."""
        return self.user_positions.get(user_id, self.start_position) > stream

    def receipts_changed_since(self, room_id: str, stream: int) -> bool:
        return self.receipt_positions.get(room_id, self.start_position) > stream

    def room_changed_since(self, room_id: str, stream: int) -> bool:
        return self.room_positions.get(room_id, self.start_position) > stream

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
        if self._gap_timer is not None:
            self._gap_timer.cancel()


class RedisNotifier(Notifier):
    """Applies changes locally at once and relays them to the other processes through Redis."""

    shared = True

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

    async def notify(self, stream: int, room_id: str | None = None, user_ids: Iterable[str] = (),
                     receipt: bool = False, wake_only: Iterable[str] = ()) -> None:
        msg = _stream_message(stream, room_id, user_ids, receipt, wake_only)
        self._apply(msg)
        await self._redis.publish(self._channel, json.dumps({**msg, "origin": self._origin}))

    async def publish(self, kind: str, payload: dict[str, Any]) -> None:
        msg = {**payload, "kind": kind}
        self._apply(msg)
        await self._redis.publish(self._channel, json.dumps({**msg, "origin": self._origin}))

    async def close(self) -> None:
        await super().close()
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
        await self._redis.aclose()


def make_notifier(redis_url: str, channel: str = CHANNEL) -> Notifier:
    return RedisNotifier(redis_url, channel) if redis_url else Notifier()
