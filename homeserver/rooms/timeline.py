"""Reading a room's history: /messages, /context, /event, with membership-based visibility."""

from __future__ import annotations

from typing import Any, Protocol

from homeserver.accounts.accounts import Requester
from homeserver.events.client_format import client_event
from homeserver.clock import now_ms
from homeserver.errors import MatrixError, bad_json, forbidden, not_found
from homeserver.events.event import Event, StateKey
from homeserver.sync.filters import EventFilter
from homeserver.sync.ignored import IgnoredUsers
from homeserver.events.room_versions import get_room_version
from homeserver.rooms.rooms import Rooms
from homeserver.sync.sync import SyncToken
from homeserver.rooms.visibility import HistoryVisibility
from storage.store import Store

MAX_LIMIT = 1000
BACKFILL_ROUNDS = 5  # backfill requests one /messages call may make
JOINED = 2**62  # visible_upto for a member who is in the room now: no upper bound


class RemoteHistory(Protocol):
    """Where history from before this server joined a room comes from (federation's backfill)."""

    async def backfill(self, room_id: str, limit: int) -> int: ...


class Timeline:
    def __init__(self, rooms: Rooms, store: Store, current: Any, visibility: HistoryVisibility,
                 ignored: IgnoredUsers) -> None:
        self._rooms = rooms
        self._ignored = ignored
        self._store = store
        self._current = current  # () -> SyncToken
        self.remote: RemoteHistory | None = None
        self._visibility = visibility

    async def visible_upto(self, room_id: str, user_id: str) -> int:
        """The last stream position the user may read in the room (history visibility "shared")."""
        member = await self._rooms.state_event(room_id, "m.room.member", user_id)
        if member is None or await self._rooms.room(room_id) is None:
            raise forbidden("You are not in this room")
        if member.membership == "join":
            return JOINED
        if member.membership in ("leave", "ban"):
            return member.stream
        raise forbidden("You are not joined to this room")

    async def visible_state(self, room_id: str, user_id: str) -> dict[StateKey, str]:
        """The room's state as the user may see it: current if joined, else as of their leaving."""
        upto = await self.visible_upto(room_id, user_id)
        if upto >= JOINED:
            return await self._rooms.current_state_ids(room_id)
        member = await self._rooms.state_event(room_id, "m.room.member", user_id)
        return dict(await self._rooms.state_at_event(member.event_id)) if member else {}

    async def _serialise(self, who: Requester, room_id: str, events: list[Event]) -> list[dict[str, Any]]:
        room = await self._rooms.room(room_id)
        version = get_room_version(room.room_version) if room else None
        redaction_ids = [e.unsigned["redacted_by"] for e in events if e.unsigned.get("redacted_by")]
        redactions = await self._rooms.get_events(redaction_ids) if redaction_ids else {}
        now = now_ms()
        return [client_event(e, version, now, device=(who.user_id, who.device_id),
                             redaction=redactions.get(e.unsigned.get("redacted_by", ""))) for e in events]

    async def _member_state(self, who: Requester, room_id: str, events: list[Event]) -> list[dict[str, Any]]:
        """Lazy-loaded members: the membership of each sender, as of now."""
        state = await self._rooms.current_state_ids(room_id)
        ids = [state[("m.room.member", s)] for s in {e.sender for e in events} if ("m.room.member", s) in state]
        found = await self._rooms.get_events(ids)
        return await self._serialise(who, room_id, [found[i] for i in ids if i in found])

    async def messages(self, who: Requester, room_id: str, from_token: str | None, direction: str,
                       limit: int, filt: EventFilter) -> dict[str, Any]:
        if direction not in ("b", "f"):
            raise MatrixError(400, "M_INVALID_PARAM", "dir must be b or f")
        if limit < 0:
            raise MatrixError(400, "M_INVALID_PARAM", "limit must not be negative")
        limit = min(limit, MAX_LIMIT)
        upto = await self.visible_upto(room_id, who.user_id)
        start = SyncToken.parse(from_token) if from_token else (
            self._current() if direction == "b" else SyncToken(0, 0))
        if direction == "b":
            before = min(start.stream, upto)
            events = await self._store.rooms.room_events(room_id, before=before, limit=limit, backwards=True)
            for _ in range(BACKFILL_ROUNDS):
                # Paged back to the oldest event held: ask the room's other servers for more.
                if len(events) >= limit or self.remote is None or not await self.remote.backfill(room_id, limit):
                    break
                events = await self._store.rooms.room_events(room_id, before=before, limit=limit, backwards=True)
            end = SyncToken(events[-1].stream - 1, start.typing) if len(events) == limit and events else None
        else:
            events = await self._store.rooms.room_events(room_id, after=start.stream, before=upto, limit=limit,
                                                         backwards=False)
            end = SyncToken(events[-1].stream, start.typing) if events else None
        ignored = await self._ignored.of(who.user_id)
        events = await self._visibility.filter(who.user_id, [e for e in events if filt.allows(e.type, e.sender)
                                                             and (e.sender not in ignored or e.is_state)],
                                               joined_now=upto >= JOINED)
        body: dict[str, Any] = {"chunk": await self._serialise(who, room_id, events), "start": str(start)}
        if end is not None:
            body["end"] = str(end)
        if filt.lazy_load_members:
            body["state"] = await self._member_state(who, room_id, events)
        return body

    async def event(self, who: Requester, room_id: str, event_id: str) -> dict[str, Any]:
        ev = await self._rooms.get_event(event_id)
        upto = await self.visible_upto(room_id, who.user_id)
        if ev is None or ev.room_id != room_id or ev.rejected or ev.unsigned.get("_soft_failed") \
                or ev.stream > upto or not await self._visibility.filter(who.user_id, [ev], upto >= JOINED):
            raise not_found("Event not found")
        return (await self._serialise(who, room_id, [ev]))[0]

    async def context(self, who: Requester, room_id: str, event_id: str, limit: int,
                      filt: EventFilter) -> dict[str, Any]:
        if limit < 0:
            raise bad_json("limit must not be negative")
        limit = min(limit, MAX_LIMIT)
        ev = await self._rooms.get_event(event_id)
        upto = await self.visible_upto(room_id, who.user_id)
        if ev is None or ev.room_id != room_id or ev.rejected or ev.unsigned.get("_soft_failed") \
                or ev.stream > upto or not await self._visibility.filter(who.user_id, [ev], upto >= JOINED):
            raise not_found("Event not found")
        before_n, after_n = limit // 2, limit - limit // 2
        before = await self._store.rooms.room_events(room_id, before=ev.stream - 1, limit=before_n, backwards=True)
        after = await self._store.rooms.room_events(room_id, after=ev.stream, before=upto, limit=after_n,
                                                    backwards=False)
        joined_now = upto >= JOINED
        ignored = await self._ignored.of(who.user_id)

        def shown(e: Event) -> bool:
            return filt.allows(e.type, e.sender) and (e.sender not in ignored or e.is_state)

        before = await self._visibility.filter(who.user_id, [e for e in before if shown(e)], joined_now)
        after = await self._visibility.filter(who.user_id, [e for e in after if shown(e)], joined_now)
        state_ids = await self._rooms.state_at_event(event_id)
        if filt.lazy_load_members:
            senders = {e.sender for e in [ev, *before, *after]}
            state_ids = {k: v for k, v in state_ids.items() if k[0] != "m.room.member" or k[1] in senders}
        state = await self._rooms.get_events(state_ids.values())
        typing = self._current().typing
        return {
            "event": (await self._serialise(who, room_id, [ev]))[0],
            "events_before": await self._serialise(who, room_id, before),
            "events_after": await self._serialise(who, room_id, after),
            "state": await self._serialise(who, room_id, sorted(state.values(), key=lambda e: e.stream)),
            "start": str(SyncToken((before[-1].stream if before else ev.stream) - 1, typing)),
            "end": str(SyncToken(after[-1].stream if after else ev.stream, typing)),
        }
