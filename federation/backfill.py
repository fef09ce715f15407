"""Backfill: a room's history from before this server joined, fetched when a client pages back to it.

The events come from `/_matrix/federation/v1/backfill` of another server in the room and go
through the same checks as any PDU that can be checked without the state before it: format,
signatures (else dropped), content hash (else redacted), auth against the event's own auth
events (else stored as rejected, never shown). Accepted ones join the timeline below
everything held (see RoomStore.persist_backfilled), newest first.
"""

from __future__ import annotations

import logging
import time
from typing import Any
from urllib.parse import quote

from homeserver.events.auth_rules import server_of
from homeserver.events.event import Event
from homeserver.rooms.rooms import Rooms
from federation.ingest import FederationRequests, Ingester, PduRejected
from storage.store import Store

log = logging.getLogger("whispr.federation.backfill")

MAX_BACKFILL = 100
SERVERS_TO_TRY = 3
# After a backfill that brought nothing, the same room is not asked again for this long.
FRUITLESS_RETRY_S = 60.0


class Backfiller:
    def __init__(self, server_name: str, rooms: Rooms, store: Store, ingester: Ingester,
                 client: FederationRequests) -> None:
        self._server_name = server_name
        self._rooms = rooms
        self._store = store
        self._ingester = ingester
        self._client = client
        self._fruitless: dict[str, tuple[str, float]] = {}  # room -> (earliest event then, when)

    async def backfill(self, room_id: str, limit: int) -> int:
        """Fetch up to `limit` events of history older than the oldest held; how many were new."""
        version = await self._rooms.room_version(room_id)
        earliest = await self._store.rooms.earliest_timeline_event(room_id)
        if version is None or earliest is None or earliest.type == "m.room.create":
            return 0  # unknown room, or its whole history is here
        tried = self._fruitless.get(room_id)
        if tried is not None and tried[0] == earliest.event_id and time.monotonic() - tried[1] < FRUITLESS_RETRY_S:
            return 0
        servers = await self._store.rooms.room_servers(room_id)
        servers.discard(self._server_name)
        # The sender's server surely holds what came before its own event; then the others.
        first = server_of(earliest.sender)
        ordered = ([first] if first in servers else []) + sorted(servers - {first})
        stored = 0
        for server in ordered[:SERVERS_TO_TRY]:
            try:
                body = await self._client.get_json(
                    server, f"/_matrix/federation/v1/backfill/{quote(room_id, safe='')}",
                    {"v": earliest.event_id, "limit": str(min(max(limit, 1), MAX_BACKFILL))})
            except Exception as e:
                log.info("backfill of %s from %s failed: %s", room_id, server, e)
                continue
            pdus = body.get("pdus") if isinstance(body, dict) else None
            if not isinstance(pdus, list):
                log.warning("backfill of %s from %s: no pdus list", room_id, server)
                continue
            async with self._rooms.lock(room_id):
                stored = await self._store_history(server, room_id, pdus[:MAX_BACKFILL], version)
            if stored:
                break
        if stored:
            self._fruitless.pop(room_id, None)
        else:
            self._fruitless[room_id] = (earliest.event_id, time.monotonic())
        return stored

    async def _store_history(self, origin: str, room_id: str, pdus: list[Any], version: Any) -> int:
        events: list[Event] = []
        for pdu in pdus:
            if not isinstance(pdu, dict) or pdu.get("room_id") != room_id:
                log.warning("backfill from %s: dropped a PDU of another room or of no shape", origin)
                continue
            try:
                events.append(await self._ingester.verified_event(pdu, version))
            except PduRejected as e:
                log.warning("backfill from %s: dropped a PDU: %s", origin, e)
        # Oldest first for the auth checks (an event's auth events may be in the same batch);
        # the positions then go newest first, so that older events sort below newer ones.
        accepted: list[Event] = []
        for event in sorted(events, key=lambda e: e.depth):
            known = await self._rooms.get_event(event.event_id)
            if known is not None and not known.unsigned.get("_outlier"):
                continue  # in the timeline already (or rejected or soft-failed here)
            reason = await self._ingester.check_own_auth(origin, event, version)
            if reason is not None:
                log.warning("backfill from %s: rejected %s: %s", origin, event.event_id, reason)
                if known is None:
                    await self._rooms.persist_outlier(event, rejected=reason)
                continue
            if known is None:
                # Held first as an outlier so that later events of the batch can name it in their
                # auth events; it joins the timeline below.
                await self._rooms.persist_outlier(event)
            accepted.append(event)
        stored = 0
        for event in sorted(accepted, key=lambda e: e.depth, reverse=True):
            if await self._rooms.persist_backfilled(event):
                stored += 1
        return stored
