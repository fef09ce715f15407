"""Room previews: GET /events?room_id=, how a client follows a room it peeks into (after its
/initialSync) or is in: the room's new events after `from`, with its receipts and typing, waiting
up to `timeout` for something to happen. Who may read, and which events, is the timeline's rule
(world_readable rooms for anyone, members as for /messages).
"""

from __future__ import annotations

import asyncio
from typing import Any

from homeserver.accounts.accounts import Requester
from homeserver.errors import MatrixError
from homeserver.rooms.room_data import receipt_event
from homeserver.rooms.timeline import Timeline
from homeserver.rooms.visibility import HistoryVisibility
from homeserver.sync.notifier import Notifier
from homeserver.sync.sync import SyncToken
from homeserver.sync.typing_state import Typing
from storage.store import Store

PEEK_EVENTS_LIMIT = 100  # timeline events one answer carries at most
MAX_PEEK_TIMEOUT_MS = 300_000


class RoomPreviews:
    def __init__(self, timeline: Timeline, visibility: HistoryVisibility, store: Store, notifier: Notifier,
                 typing: Typing) -> None:
        self._timeline = timeline
        self._visibility = visibility
        self._store = store
        self._notifier = notifier
        self._typing = typing

    def _now(self) -> SyncToken:
        return SyncToken(self._notifier.position, self._typing.serial)

    async def events(self, who: Requester, room_id: str, from_token: str | None, timeout_ms: int) -> dict[str, Any]:
        reading = await self._timeline.reading(room_id, who.user_id)
        start = SyncToken.parse(from_token) if from_token else self._now()
        if start.stream < 0:
            raise MatrixError(400, "M_INVALID_PARAM", "from is not a token of this stream")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + min(max(timeout_ms, 0), MAX_PEEK_TIMEOUT_MS) / 1000
        after = start.stream
        while True:
            # Read the position before the room: anything committed later is seen next round.
            now = self._now()
            upto = min(now.stream, reading.upto)
            held = await self._store.rooms.room_events(room_id, after=after, before=upto, limit=PEEK_EVENTS_LIMIT,
                                                       backwards=False)
            read_to = held[-1].stream if len(held) == PEEK_EVENTS_LIMIT else max(after, upto)
            visible = await self._visibility.filter(who.user_id, held, joined_now=reading.joined)
            chunk = await self._timeline.serialise(who, room_id, visible)
            if reading.current:  # ephemeral news only while the user reads the room as it is now
                chunk += await self._receipts(who, room_id, after, read_to)
                if self._typing.changed_since(room_id, start.typing):
                    chunk.append({"type": "m.typing", "room_id": room_id,
                                  "content": {"user_ids": self._typing.users(room_id)}})
            after = read_to
            remaining = deadline - loop.time()
            if chunk or remaining <= 0 or (not reading.current and upto >= reading.upto):
                return {"chunk": chunk, "start": str(start), "end": str(SyncToken(after, now.typing))}
            if held or self._now() != now:
                continue
            await self._notifier.wait([room_id], remaining)

    async def _receipts(self, who: Requester, room_id: str, after: int, upto: int) -> list[dict[str, Any]]:
        if not self._notifier.receipts_changed_since(room_id, after):
            return []
        event = receipt_event(await self._store.user_data.receipts([room_id], after, upto), who.user_id)
        return [{**event, "room_id": room_id}] if event else []
