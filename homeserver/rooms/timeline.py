"""Reading a room's history: /messages, /context, /event, /initialSync, with membership-based visibility.

Who may read at all: a member (joined: up to now; left or banned: up to the leave), and anyone
while the room is `world_readable` (peeking, the spec's room previews), who then reads only the
events the room had made world-readable, and the current state. Others get 403 M_FORBIDDEN.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Protocol

from homeserver.accounts.accounts import Requester
from homeserver.events.client_format import client_event
from homeserver.clock import now_ms
from homeserver.errors import MatrixError, bad_json, forbidden, not_found
from homeserver.events.event import Event, StateKey
from homeserver.sync.filters import EventFilter
from homeserver.sync.ignored import IgnoredUsers
from homeserver.events.room_versions import get_room_version
from homeserver.relations.aggregations import Aggregations, attach
from homeserver.rooms.rooms import Rooms
from homeserver.rooms.room_data import receipt_event
from homeserver.sync.sync import SyncToken
from homeserver.rooms.visibility import HistoryVisibility
from storage.store import Store

MAX_LIMIT = 1000
BACKFILL_ROUNDS = 5  # backfill requests one /messages call may make
JOINED = 2**62  # visible_upto with no upper bound: a member in the room now, or a peeker
INITIAL_SYNC_LIMIT = 10  # the messages /initialSync gives unless `limit` says otherwise
WORLD_READABLE = "world_readable"


@dataclass(frozen=True)
class Reading:
    """How a user may read a room: the last stream position, and whether as a joined member."""

    upto: int
    joined: bool
    membership: str | None  # the user's membership now (None: never a member)
    member_event_id: str | None

    @property
    def current(self) -> bool:
        """Reads the room as it is now (joined, or peeking), not as of a leave."""
        return self.upto >= JOINED


class RemoteHistory(Protocol):
    """Where history from before this server joined a room comes from (federation's backfill)."""

    async def backfill(self, room_id: str, limit: int) -> int: ...


class Timeline:
    def __init__(self, rooms: Rooms, store: Store, current: Any, visibility: HistoryVisibility,
                 ignored: IgnoredUsers, aggregations: Aggregations) -> None:
        self._rooms = rooms
        self._aggregations = aggregations
        self._ignored = ignored
        self._store = store
        self._current = current  # () -> SyncToken
        self.remote: RemoteHistory | None = None
        # The m.presence events of these users who are not offline (homeserver/presence), wired by the server.
        self.presence: Callable[[list[str]], list[dict[str, Any]]] | None = None
        self._visibility = visibility

    async def reading(self, room_id: str, user_id: str) -> Reading:
        """How the user may read the room; 403 M_FORBIDDEN if not at all."""
        room = await self._rooms.room(room_id)
        state = await self._store.rooms.state_map(room.current_group) if room is not None else {}
        if not state:
            raise forbidden("You are not in this room")  # unknown rooms look the same
        member_id = state.get(("m.room.member", user_id))
        member = await self._rooms.get_event(member_id) if member_id else None
        membership = member.membership if member is not None else None
        if member is not None and membership == "join":
            return Reading(JOINED, True, membership, member.event_id)
        if member is not None and membership in ("leave", "ban"):
            return Reading(member.stream, False, membership, member.event_id)
        setting_id = state.get(("m.room.history_visibility", ""))
        setting = await self._rooms.get_event(setting_id) if setting_id else None
        if setting is not None and setting.content.get("history_visibility") == WORLD_READABLE:
            return Reading(JOINED, False, membership, member.event_id if member else None)
        raise forbidden("You are not in this room" if member is None else "You are not joined to this room")

    async def visible_upto(self, room_id: str, user_id: str) -> int:
        """The last stream position the user may read in the room (history visibility "shared")."""
        return (await self.reading(room_id, user_id)).upto

    async def visible_state(self, room_id: str, user_id: str) -> dict[StateKey, str]:
        """The room's state as the user may see it: current if joined or peeking, else as of their leaving."""
        return await self._state_for(room_id, await self.reading(room_id, user_id))

    async def _state_for(self, room_id: str, reading: Reading) -> dict[StateKey, str]:
        if reading.current or reading.member_event_id is None:
            return await self._rooms.current_state_ids(room_id)
        return dict(await self._rooms.state_at_event(reading.member_event_id))

    async def serialise(self, who: Requester, room_id: str, events: list[Event],
                        bundle_upto: int | None = None) -> list[dict[str, Any]]:
        """Client events; with `bundle_upto` (how far the user reads), with their bundled
        aggregations (one lookup for the page)."""
        room = await self._rooms.room(room_id)
        version = get_room_version(room.room_version) if room else None
        redaction_ids = [e.unsigned["redacted_by"] for e in events if e.unsigned.get("redacted_by")]
        redactions = await self._rooms.get_events(redaction_ids) if redaction_ids else {}
        now = now_ms()
        out = [client_event(e, version, now, device=(who.user_id, who.device_id),
                            redaction=redactions.get(e.unsigned.get("redacted_by", ""))) for e in events]
        if bundle_upto is None:
            return out
        return attach(out, await self._aggregations.bundles(who.user_id, events, now, bundle_upto))

    async def _member_state(self, who: Requester, room_id: str, events: list[Event]) -> list[dict[str, Any]]:
        """Lazy-loaded members: the membership of each sender, as of now."""
        state = await self._rooms.current_state_ids(room_id)
        ids = [state[("m.room.member", s)] for s in {e.sender for e in events} if ("m.room.member", s) in state]
        found = await self._rooms.get_events(ids)
        return await self.serialise(who, room_id, [found[i] for i in ids if i in found])

    async def messages(self, who: Requester, room_id: str, from_token: str | None, direction: str,
                       limit: int, filt: EventFilter) -> dict[str, Any]:
        if direction not in ("b", "f"):
            raise MatrixError(400, "M_INVALID_PARAM", "dir must be b or f")
        if limit < 0:
            raise MatrixError(400, "M_INVALID_PARAM", "limit must not be negative")
        limit = min(limit, MAX_LIMIT)
        reading = await self.reading(room_id, who.user_id)
        upto = reading.upto
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
                                               joined_now=reading.joined)
        body: dict[str, Any] = {"chunk": await self.serialise(who, room_id, events, bundle_upto=upto),
                                "start": str(start)}
        if end is not None:
            body["end"] = str(end)
        if filt.lazy_load_members:
            body["state"] = await self._member_state(who, room_id, events)
        return body

    async def visible_event(self, who: Requester, room_id: str, event_id: str) -> tuple[Event, Reading]:
        """An event of the room the user may read, and how they read the room: 403 if they may not
        read it at all, 404 for an event they may not see (or not in the room)."""
        ev = await self._rooms.get_event(event_id)
        reading = await self.reading(room_id, who.user_id)
        if ev is None or ev.room_id != room_id or ev.rejected or ev.unsigned.get("_soft_failed") \
                or ev.stream > reading.upto or not await self._visibility.filter(who.user_id, [ev], reading.joined):
            raise not_found("Event not found")
        return ev, reading

    async def event(self, who: Requester, room_id: str, event_id: str) -> dict[str, Any]:
        """One event, or 404 (the spec's answer also for a room the user may not read: no 403 that
        would tell an existing room or event from an unknown one)."""
        try:
            ev, reading = await self.visible_event(who, room_id, event_id)
        except MatrixError as e:
            if e.status == 403:
                raise not_found("Event not found") from None
            raise
        return (await self.serialise(who, room_id, [ev], bundle_upto=reading.upto))[0]

    async def event_anywhere(self, who: Requester, event_id: str) -> dict[str, Any]:
        """GET /events/{eventId} (deprecated): the event of whichever room holds it, if the user may
        read it there; 404 otherwise, so that a room the user is not in shows nothing."""
        ev = await self._rooms.get_event(event_id)
        if ev is None:
            raise not_found("Event not found")
        return await self.event(who, ev.room_id, event_id)

    async def context(self, who: Requester, room_id: str, event_id: str, limit: int,
                      filt: EventFilter) -> dict[str, Any]:
        if limit < 0:
            raise bad_json("limit must not be negative")
        limit = min(limit, MAX_LIMIT)
        ev = await self._rooms.get_event(event_id)
        reading = await self.reading(room_id, who.user_id)
        upto = reading.upto
        if ev is None or ev.room_id != room_id or ev.rejected or ev.unsigned.get("_soft_failed") \
                or ev.stream > upto or not await self._visibility.filter(who.user_id, [ev], reading.joined):
            raise not_found("Event not found")
        before_n, after_n = limit // 2, limit - limit // 2
        before = await self._store.rooms.room_events(room_id, before=ev.stream - 1, limit=before_n, backwards=True)
        after = await self._store.rooms.room_events(room_id, after=ev.stream, before=upto, limit=after_n,
                                                    backwards=False)
        joined_now = reading.joined
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
        bundles = await self._aggregations.bundles(who.user_id, [ev, *before, *after], now_ms(), upto)
        return {
            "event": attach(await self.serialise(who, room_id, [ev]), bundles)[0],
            "events_before": attach(await self.serialise(who, room_id, before), bundles),
            "events_after": attach(await self.serialise(who, room_id, after), bundles),
            "state": await self.serialise(who, room_id, sorted(state.values(), key=lambda e: e.stream)),
            "start": str(SyncToken((before[-1].stream if before else ev.stream) - 1, typing)),
            "end": str(SyncToken(after[-1].stream if after else ev.stream, typing)),
        }

    async def initial_sync(self, who: Requester, room_id: str, limit: int) -> dict[str, Any]:
        """A snapshot of the room (GET /rooms/{roomId}/initialSync): its state and latest messages,
        as of now for members and peekers, as of the leave for those who left."""
        if limit < 0:
            raise MatrixError(400, "M_INVALID_PARAM", "limit must not be negative")
        limit = min(limit, MAX_LIMIT)
        reading = await self.reading(room_id, who.user_id)
        room, _ = await self._rooms.require_room(room_id)
        now = self._current()
        before = min(now.stream, reading.upto)
        held = await self._store.rooms.room_events(room_id, before=before, limit=limit, backwards=True)
        start = SyncToken((held[-1].stream if held else before + 1) - 1, now.typing)
        end = now if reading.current else SyncToken(before, now.typing)
        chunk = await self._visibility.filter(who.user_id, held[::-1], joined_now=reading.joined)
        state_ids = await self._state_for(room_id, reading)
        state = await self._rooms.get_events(state_ids.values())
        body: dict[str, Any] = {
            "room_id": room_id,
            "messages": {"chunk": await self.serialise(who, room_id, chunk), "start": str(start), "end": str(end)},
            "state": await self.serialise(who, room_id, sorted(state.values(), key=lambda e: e.stream)),
            "visibility": "public" if room.is_public else "private",
            "account_data": [],
            "presence": [],
            "receipts": [],
        }
        if reading.joined and reading.current and self.presence is not None:  # for members only, as of now
            body["presence"] = self.presence([e.state_key for e in state.values() if e.type == "m.room.member"
                                              and e.membership == "join" and e.state_key])
        if reading.current:  # receipts as of now; none for those who left
            receipts = receipt_event(await self._store.user_data.receipts([room_id], 0, now.stream), who.user_id)
            body["receipts"] = [{**receipts, "room_id": room_id}] if receipts else []
        if reading.membership is not None:
            body["membership"] = reading.membership
            body["account_data"] = [{"type": d.type, "content": d.content}
                                    for d in await self._store.user_data.room_account_data(who.user_id, room_id)]
        return body

    async def global_initial_sync(self, who: Requester, limit: int, archived: bool) -> dict[str, Any]:
        """GET /initialSync (deprecated, superseded by /sync): each joined room's snapshot as
        /rooms/{roomId}/initialSync gives it (and the rooms left, with `archived`), the invites, and
        the global account data. One snapshot per room: only old clients call this, once."""
        now = self._current()
        rooms: list[dict[str, Any]] = []
        for room_id, (membership, _) in sorted((await self._store.rooms.rooms_for_user(who.user_id)).items()):
            if membership == "invite":
                rooms.append({"room_id": room_id, "membership": "invite"})
            elif membership == "join" or (archived and membership in ("leave", "ban")):
                rooms.append(await self.initial_sync(who, room_id, limit))
        account_data = [{"type": d.type, "content": d.content}  # global account data: room ""
                        for d in await self._store.user_data.room_account_data(who.user_id, "")]
        return {"end": str(now), "rooms": rooms, "presence": [], "account_data": account_data}
