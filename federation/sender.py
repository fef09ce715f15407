"""Outbound federation: a persisted queue per destination, one transaction in flight each.

Everything to send is written to the outbox first, so a restart loses nothing;
a destination's worker drains it in order, at most 50 PDUs and 100 EDUs per
transaction, backing off exponentially on failure (capped), and starts again
at once when that server contacts us.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from typing import Any, Iterable, Protocol

from homeserver.clock import now_ms
from homeserver.events.event import Event
from storage.store import Store

log = logging.getLogger("whispr.federation.sender")

MAX_PDUS = 50
MAX_EDUS = 100


class TransactionSender(Protocol):
    async def put_json(self, destination: str, path: str, body: Any) -> Any: ...


class FederationSender:
    def __init__(self, server_name: str, store: Store, client: TransactionSender,
                 min_retry_ms: int = 2_000, max_retry_ms: int = 3_600_000) -> None:
        self._server_name = server_name
        self._store = store
        self._client = client
        self._min_retry_ms = min_retry_ms
        self._max_retry_ms = max_retry_ms
        self._workers: dict[str, asyncio.Task[None]] = {}
        self._wakeups: dict[str, asyncio.Event] = {}
        self._closing = False

    async def start(self) -> None:
        for destination in await self._store.federation.destinations_with_pending():
            self._kick(destination)

    async def close(self) -> None:
        self._closing = True
        for task in self._workers.values():
            task.cancel()
        for task in list(self._workers.values()):
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass

    async def destinations_for(self, event: Event, servers: Iterable[str] | None = None) -> list[str]:
        """Other servers to send an event to: those in `servers` (the room's joined servers
        after the event, when the caller knows them) or else in the room's current state."""
        servers = set(servers) if servers is not None else await self._store.rooms.room_servers(event.room_id)
        if event.type == "m.room.member" and event.state_key and ":" in event.state_key:
            servers.add(event.state_key.split(":", 1)[1])  # a kicked or banned user's server hears of it
        servers.discard(self._server_name)
        return sorted(servers)

    async def send_event(self, event: Event, exclude: str | None = None,
                         servers: Iterable[str] | None = None) -> None:
        """Queue an event for every other server in its room (but `exclude`, which sent it to us)."""
        destinations = [d for d in await self.destinations_for(event, servers) if d != exclude]
        if not destinations:
            return
        await self._store.federation.enqueue(destinations, "pdu", event.pdu, now_ms())
        for destination in destinations:
            self._kick(destination)

    async def send_edu(self, destinations: Iterable[str], edu_type: str, content: dict[str, Any]) -> None:
        targets = sorted(set(destinations) - {self._server_name})
        if not targets:
            return
        await self._store.federation.enqueue(targets, "edu", {"edu_type": edu_type, "content": content}, now_ms())
        for destination in targets:
            self._kick(destination)

    async def peer_contacted(self, destination: str) -> None:
        """The peer is up: forget the backoff and send what waits for it now."""
        state = await self._store.federation.destination(destination)
        if state.retry_at_ts > now_ms() or state.retry_interval_ms:
            await self._store.federation.set_retry(destination, 0, 0, None)
            wake = self._wakeups.get(destination)
            if wake is not None:
                wake.set()
            else:
                self._kick(destination)

    def _kick(self, destination: str) -> None:
        if self._closing:
            return
        wake = self._wakeups.setdefault(destination, asyncio.Event())
        wake.set()
        task = self._workers.get(destination)
        if task is None or task.done():
            self._workers[destination] = asyncio.create_task(self._run(destination))

    async def _run(self, destination: str) -> None:
        wake = self._wakeups[destination]
        while not self._closing:
            state = await self._store.federation.destination(destination)
            delay = (state.retry_at_ts - now_ms()) / 1000
            if delay > 0:
                wake.clear()
                try:
                    await asyncio.wait_for(wake.wait(), delay)
                except asyncio.TimeoutError:
                    pass
                continue
            wake.clear()
            pdus = await self._store.federation.pending(destination, "pdu", MAX_PDUS)
            edus = await self._store.federation.pending(destination, "edu", MAX_EDUS)
            if not pdus and not edus:
                if not wake.is_set():
                    self._workers.pop(destination, None)
                    return
                continue
            ids = [i.id for i in pdus + edus]
            # The same batch always gets the same ID, so a retry is idempotent at the receiver.
            txn_id = hashlib.sha256(",".join(map(str, ids)).encode()).hexdigest()[:24]
            body = {"origin": self._server_name, "origin_server_ts": now_ms(),
                    "pdus": [i.body for i in pdus], "edus": [i.body for i in edus]}
            try:
                result = await self._client.put_json(destination, f"/_matrix/federation/v1/send/{txn_id}", body)
            except Exception as e:
                status = getattr(e, "status", 0)
                if 400 <= status < 500 and status != 429:
                    # The peer refuses this transaction as such: retrying it would block the queue for good.
                    log.warning("%s refused a transaction (%s); dropping its %d items", destination, e, len(ids))
                    await self._store.federation.remove(ids)
                    continue
                interval = min(max(state.retry_interval_ms * 2, self._min_retry_ms), self._max_retry_ms)
                log.info("sending to %s failed (%s); retrying in %d s", destination, e, interval // 1000)
                await self._store.federation.set_retry(destination, interval, now_ms() + interval, None)
                continue
            for event_id, outcome in (result or {}).get("pdus", {}).items():
                if isinstance(outcome, dict) and outcome.get("error"):
                    log.warning("%s refused %s: %s", destination, event_id, outcome["error"])
            await self._store.federation.remove(ids)
            if state.retry_interval_ms or state.retry_at_ts:
                await self._store.federation.set_retry(destination, 0, 0, now_ms())
