"""/sync: what changed for a user since a token, waiting for news when there is none.

Tokens are ``s<stream>_<typing>``: every event, receipt and account-data change
takes one position on a single stream; typing has its own serial, and so has
presence (a ``_p<serial>`` suffix once there was any). A waiting sync sleeps on
the notifier under its user ID and its rooms' IDs only.
"""

from __future__ import annotations

import asyncio
import re
from collections import OrderedDict
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from homeserver.accounts.accounts import Requester
from homeserver.events.client_format import client_event, stripped_from_json, stripped_state
from homeserver.clock import now_ms
from homeserver.errors import MatrixError
from homeserver.events.event import Event
from homeserver.sync.filters import SyncFilter
from homeserver.sync.ignored import IgnoredUsers
from homeserver.push.notifications import Notifications, ThreadCounts, thread_of
from homeserver.push.push_rules import PushRules
from homeserver.sync.notifier import Notifier
from homeserver.relations.aggregations import Aggregations, attach
from homeserver.rooms.room_data import receipt_event
from homeserver.rooms.rooms import Rooms
from homeserver.rooms.visibility import HistoryVisibility
from homeserver.sync.typing_state import Typing
from storage.store import Store
from storage.user_data import AccountData

if TYPE_CHECKING:
    from homeserver.e2ee.sync_section import E2eeSync
    from homeserver.presence.presence import Presence

MAX_TIMEOUT_MS = 300_000
MEMBERSHIP_CACHE_SIZE = 10_000
UNREAD_CACHE_SIZE = 50_000
# (user, device, room) entries remembering whose member events a lazy-loading client has been sent;
# an evicted entry only makes the next sync send some members again, which the spec allows.
LAZY_MEMBERS_CACHE_SIZE = 20_000
MAX_HEROES = 5
FRIENDS_SECTION = "org.whispr.friends"
INVITE_STATE_TYPES = ("m.room.create", "m.room.join_rules", "m.room.name", "m.room.avatar",
                      "m.room.canonical_alias", "m.room.encryption", "m.room.topic")
# Positions below zero are history fetched later (backfill); /messages pages down into them.
# An optional third part is the to-device cursor, when more messages waited than one sync carries;
# the presence serial comes last.
_TOKEN = re.compile(r"^s(-?\d+)_(\d+)(?:_(\d+))?(?:_p(\d+))?$")


@dataclass(frozen=True)
class SyncToken:
    stream: int
    typing: int
    to_device: int | None = None
    presence: int = 0

    def __str__(self) -> str:
        token = f"s{self.stream}_{self.typing}"
        if self.to_device is not None:
            token += f"_{self.to_device}"
        return token + f"_p{self.presence}" if self.presence else token

    @classmethod
    def parse(cls, raw: str) -> "SyncToken":
        m = _TOKEN.match(raw)
        if m is None:
            raise MatrixError(400, "M_INVALID_PARAM", "Unknown sync token")
        to_device = int(m.group(3)) if m.group(3) is not None else None
        if to_device is not None and to_device >= int(m.group(1)):
            to_device = None
        return cls(int(m.group(1)), int(m.group(2)), to_device, int(m.group(4) or 0))


@dataclass(frozen=True)
class _Unread:
    """A user's notification and highlight counts in a room as of `upto`, counting events above
    `threshold`."""

    upto: int
    fallback: int
    threshold: int
    count: int
    highlights: int


@dataclass(frozen=True)
class SyncResult:
    body: dict[str, Any]
    next_batch: SyncToken
    empty: bool
    joined_rooms: list[str]


class SyncService:
    def __init__(self, rooms: Rooms, store: Store, notifier: Notifier, typing: Typing,
                 visibility: HistoryVisibility, ignored: IgnoredUsers, aggregations: Aggregations) -> None:
        self._rooms = rooms
        self._aggregations = aggregations
        self._ignored = ignored
        self._store = store
        self._notifier = notifier
        self._typing = typing
        self._visibility = visibility
        self._membership_cache: dict[str, tuple[int, dict[str, tuple[str, str]]]] = {}
        self._unread_cache: dict[tuple[str, str], _Unread] = {}
        self._thread_cache: dict[tuple[str, str], ThreadCounts] = {}
        self._lazy_sent: OrderedDict[tuple[str, str, str], set[str]] = OrderedDict()
        # Push evaluation (its results are the counts) and the users' push rules; wired by the HomeServer.
        self.notifications: Notifications | None = None
        self.push_rules: PushRules | None = None
        # To-device messages, device lists and key counts (homeserver/e2ee), wired in by the server.
        self.e2ee: E2eeSync | None = None
        # Presence (homeserver/presence), wired in by the server.
        self.presence: Presence | None = None

    def current_token(self) -> SyncToken:
        presence = self.presence.serial if self.presence is not None else 0
        return SyncToken(self._notifier.position, self._typing.serial, presence=presence)

    async def sync(self, who: Requester, since: SyncToken | None, timeout_ms: int, full_state: bool,
                   filt: SyncFilter) -> SyncResult:
        if since is not None and since.stream < 0:
            raise MatrixError(400, "M_INVALID_PARAM", "Unknown sync token")  # a /messages token
        if since is not None and since.stream > self._notifier.position:
            since = SyncToken(self._notifier.position, since.typing, presence=since.presence)  # from the future
        deadline = asyncio.get_running_loop().time() + min(max(timeout_ms, 0), MAX_TIMEOUT_MS) / 1000
        while True:
            # Read the position before the rooms: anything committed later is seen next round.
            upto = self.current_token()
            result = await self._compute(who, since, upto, full_state, filt)
            remaining = deadline - asyncio.get_running_loop().time()
            if not result.empty or since is None or full_state or remaining <= 0:
                return result
            if self.current_token() != upto:
                continue
            keys = [who.user_id, *result.joined_rooms]
            if self.presence is not None and filt.presence.limit != 0 and filt.presence.allows_type("m.presence"):
                keys += self.presence.wait_keys(who.user_id, result.joined_rooms)
            await self._notifier.wait(keys, remaining)

    async def _compute(self, who: Requester, since: SyncToken | None, upto: SyncToken, full_state: bool,
                       filt: SyncFilter) -> SyncResult:
        user_id = who.user_id
        s = since.stream if since else 0
        memberships = await self._memberships(user_id)
        # The user's memberships and account data are read only when the notifier says they moved.
        user_changed = since is None or self._notifier.user_changed_since(user_id, s)
        changes: dict[str, Event] = {}
        if since is not None and user_changed:
            for ev in await self._store.rooms.membership_changes(user_id, s, upto.stream):
                changes[ev.room_id] = ev  # the last change in the range wins
        data = await self._store.user_data.account_data_since(user_id, s, upto.stream) if user_changed else []
        # Room account data (tags, ...) alone is a change of the room for this user.
        rooms_with_data = {d.room_id for d in data if d.room_id}
        forgotten = await self._store.rooms.forgotten(user_id) if since is None or changes else set()
        ignored = await self._ignored.of(user_id)
        joined, invited, left, knocked = {}, {}, {}, {}
        now = now_ms()
        timelines: list[tuple[list[dict[str, Any]], list[Event]]] = []  # bundled at the end, in one lookup

        for room_id, (membership, member_event_id) in memberships.items():
            if not filt.room_allowed(room_id):
                continue
            if membership == "join":
                newly = since is None or room_id in changes
                if (not newly and not full_state and room_id not in rooms_with_data
                        and not self._room_changed(room_id, since)):
                    continue
                room_data = [d for d in data if d.room_id == room_id]
                room_body = await self._joined_room(who, room_id, member_event_id, since, upto,
                                                    newly or full_state, filt, now, room_data, ignored, timelines)
                if room_body is not None:
                    joined[room_id] = room_body
            elif membership == "invite" and (since is None or room_id in changes):
                invite = await self._invite(room_id, member_event_id, ignored)
                if invite is not None:
                    invited[room_id] = invite
            elif membership == "knock" and (since is None or room_id in changes):
                knock = await self._invite(room_id, member_event_id, frozenset(), "knock_room_state")
                if knock is not None:
                    knocked[room_id] = {"knock_state": knock["invite_state"]}
            elif membership in ("leave", "ban") and room_id not in forgotten and (
                    (since is not None and room_id in changes) or (since is None and filt.include_leave)):
                leave_ev = changes.get(room_id) or await self._rooms.get_event(member_event_id)
                left[room_id] = await self._left_room(who, room_id, since, leave_ev, filt, now, ignored)

        await self._bundle(user_id, timelines, now, upto.stream)
        account_data = [{"type": d.type, "content": d.content} for d in data
                        if d.room_id == "" and filt.account_data.allows(d.type, user_id)]
        # Whispr's friend events (requests, accepts, ...): a namespaced section stock clients skip.
        friend_events = [{"type": e.type, "content": e.content, "origin_server_ts": e.ts}
                         for e in await self._store.friends.events_since(user_id, s, upto.stream)
                         if e.content.get("user_id") not in ignored] if since is not None and user_changed else []
        if self.push_rules is not None and filt.account_data.allows("m.push_rules", user_id) and (
                since is None or any(d["type"] == "m.push_rules" for d in account_data)):
            # Always the rules as they are now, and in every initial sync even if never changed.
            account_data = [d for d in account_data if d["type"] != "m.push_rules"]
            account_data.append({"type": "m.push_rules",
                                 "content": {"global": await self.push_rules.ruleset(user_id)}})
        presence = await self._presence_events(user_id, since, memberships, filt)
        body: dict[str, Any] = {
            "next_batch": str(upto),
            "rooms": {"join": joined, "invite": invited, "leave": left, "knock": knocked},
            "account_data": {"events": account_data},
            "presence": {"events": presence},
            "to_device": {"events": []},
            "device_lists": {"changed": [], "left": []},
            "device_one_time_keys_count": {},
            **({FRIENDS_SECTION: {"events": friend_events}} if friend_events else {}),
        }
        empty = not (joined or invited or left or knocked or account_data or friend_events or presence)
        next_batch = upto
        if self.e2ee is not None:
            next_batch, e2ee_empty = await self._e2ee_section(who, since, upto, _membership_moved(joined, left), body)
            empty = empty and e2ee_empty
        return SyncResult(body, next_batch, empty, [r for r, (m, _) in memberships.items() if m == "join"])

    async def _presence_events(self, user_id: str, since: SyncToken | None,
                               memberships: dict[str, tuple[str, str]], filt: SyncFilter) -> list[dict[str, Any]]:
        """`m.presence` of the users sharing a joined room with the user (and the user's own): what
        changed after the token, or everyone not offline in an initial sync."""
        presence = self.presence
        if presence is None or not presence.enabled:
            return []
        if since is not None and not presence.changed_since(since.presence):
            return []  # the common case: one comparison
        if filt.presence.limit == 0 or not filt.presence.allows_type("m.presence"):
            return []
        if since is None:
            states = presence.known(await self._store.presence.users_sharing_rooms(user_id) | {user_id})
        else:
            mine = {r for r, (m, _) in memberships.items() if m == "join"}
            states = []
            for p in presence.changes_since(since.presence):
                if p.user_id != user_id:
                    theirs = await self._memberships(p.user_id)  # cached like the user's own
                    if not any(theirs.get(r, ("", ""))[0] == "join" for r in mine):
                        continue
                states.append(p)
        now = now_ms()
        events = [{"type": "m.presence", "sender": p.user_id, "content": p.content(now)} for p in states
                  if filt.presence.allows("m.presence", p.user_id)]
        return events[:filt.presence.limit] if filt.presence.limit is not None else events

    async def _e2ee_section(self, who: Requester, since: SyncToken | None, upto: SyncToken, rooms: list[str],
                            body: dict[str, Any]) -> tuple[SyncToken, bool]:
        """Fill in the encryption fields; the next token (its to-device cursor when more wait)."""
        assert self.e2ee is not None
        section = await self.e2ee.section(who.user_id, who.device_id, since.stream if since else None,
                                          since.to_device if since else None, upto.stream, rooms)
        body.update(section.fields)
        if section.to_device_upto is None:
            return upto, section.empty
        next_batch = replace(upto, to_device=section.to_device_upto)
        body["next_batch"] = str(next_batch)
        return next_batch, False

    async def _memberships(self, user_id: str) -> dict[str, tuple[str, str]]:
        """The user's rooms, cached until the notifier reports a change for the user."""
        cached = self._membership_cache.get(user_id)
        if cached is not None and not self._notifier.user_changed_since(user_id, cached[0]):
            return cached[1]
        position = self._notifier.position  # read before the query: a later change invalidates it
        rooms = await self._store.rooms.rooms_for_user(user_id)
        if len(self._membership_cache) >= MEMBERSHIP_CACHE_SIZE:
            self._membership_cache.pop(next(iter(self._membership_cache)))
        self._membership_cache[user_id] = (position, rooms)
        return rooms

    def _room_changed(self, room_id: str, since: SyncToken | None) -> bool:
        if since is None:
            return True
        return (self._notifier.room_changed_since(room_id, since.stream)
                or self._typing.changed_since(room_id, since.typing))

    async def _joined_room(self, who: Requester, room_id: str, member_event_id: str, since: SyncToken | None,
                           upto: SyncToken, with_full_state: bool, filt: SyncFilter, now: int,
                           data: list[AccountData], ignored: frozenset[str],
                           timelines: list[tuple[list[dict[str, Any]], list[Event]]]) -> dict[str, Any] | None:
        version = await self._rooms.room_version(room_id)
        s = since.stream if since and not with_full_state else None
        limit = filt.timeline_limit
        timeline_events, limited = await self._timeline(room_id, s, upto.stream, limit, filt, ignored)
        if since is None or with_full_state:
            # A room new to this sync may show history from before the user joined: the room's
            # history visibility decides (later syncs only carry events from while joined).
            timeline_events = await self._visibility.filter(who.user_id, timeline_events, joined_now=True)
        state = await self._state_section(room_id, since, timeline_events, limited, with_full_state, filt,
                                          who.user_id, upto.stream)
        if filt.state.lazy_load_members:
            state = await self._lazy_members(who, room_id, timeline_events, state, since is None or with_full_state,
                                             filt.state.include_redundant_members)
        ephemeral = self._typing_events(room_id, since) + await self._receipt_events(who, room_id, since, upto)
        room_data = [{"type": d.type, "content": d.content} for d in data
                     if filt.room_account_data.allows(d.type, who.user_id)]
        if since is not None and not with_full_state and not (timeline_events or state or ephemeral or room_data):
            return None
        unread, threads = await self._unread(room_id, who.user_id, member_event_id, upto.stream,
                                             filt.timeline.unread_thread_notifications)
        prev_batch = SyncToken(timeline_events[0].stream - 1, upto.typing) if timeline_events else upto
        redactions = await self._redactions(timeline_events)
        device = (who.user_id, who.device_id)
        room: dict[str, Any] = {
            "timeline": {"events": [client_event(e, version, now, device=device,
                                                 redaction=redactions.get(e.event_id)) for e in timeline_events],
                         "limited": limited, "prev_batch": str(prev_batch)},
            "state": {"events": [client_event(e, version, now) for e in state]},
            "ephemeral": {"events": ephemeral},
            "account_data": {"events": room_data},
            "unread_notifications": unread,
            "summary": await self._summary(room_id, who.user_id) if with_full_state or state else {},
        }
        if threads is not None:
            room["unread_thread_notifications"] = threads
        if timeline_events:
            timelines.append((room["timeline"]["events"], timeline_events))
        return room

    async def _bundle(self, user_id: str, timelines: list[tuple[list[dict[str, Any]], list[Event]]],
                      now: int, upto: int) -> None:
        """Bundled aggregations for every room's timeline, in one lookup; none at all when the
        recent events show that no event of any page has children."""
        floor = self._notifier.gap_floor
        pages = [(out, events) for out, events in timelines
                 if self._rooms.recent.may_have_children(events[0].room_id, events, floor)]
        if not pages:
            return
        bundles = await self._aggregations.bundles(user_id, [e for _, events in pages for e in events], now, upto)
        for out, _ in pages:
            attach(out, bundles)

    def _recent(self, room_id: str, after: int | None, upto: int, limit: int | None) -> list[Event] | None:
        """Timeline events in (after, upto], newest first, from memory; None when it may lack some."""
        if upto > self._notifier.position:
            return None  # the notifier has not heard of everything up to there yet
        return self._rooms.recent.between(room_id, after, upto, limit, self._notifier.gap_floor)

    async def _timeline(self, room_id: str, after: int | None, upto: int, limit: int,
                        filt: SyncFilter, ignored: frozenset[str] = frozenset()) -> tuple[list[Event], bool]:
        events = self._recent(room_id, after, upto, limit + 1)
        if events is None:
            events = await self._store.rooms.room_events(room_id, after=after, before=upto, limit=limit + 1)
        limited = len(events) > limit
        # Ignored users' messages are hidden; their state events stay (the room's state is everyone's).
        events = [e for e in reversed(events[:limit]) if filt.timeline.allows(e.type, e.sender)
                  and (e.sender not in ignored or e.is_state)]
        return events, limited

    async def _state_section(self, room_id: str, since: SyncToken | None, timeline: list[Event], limited: bool,
                             full: bool, filt: SyncFilter, user_id: str, upto: int) -> list[Event]:
        """State at the start of the timeline (full) or what changed in the gap before it (limited)."""
        if not full and not (limited and since is not None):
            return []
        if timeline:
            start_state = await self._rooms.state_at_event(timeline[0].event_id, after=False)
        else:
            start_state = await self._rooms.current_state_ids(room_id)
        timeline_ids = {e.event_id for e in timeline}
        if full:
            wanted = dict(start_state)
        else:
            assert since is not None
            group = await self._store.rooms.group_at_stream(room_id, since.stream)
            before = await self._store.rooms.state_map(group)
            wanted = {k: v for k, v in start_state.items() if before.get(k) != v}
        if filt.state.lazy_load_members:
            senders = {e.sender for e in timeline} | {user_id}
            wanted = {k: v for k, v in wanted.items() if k[0] != "m.room.member" or k[1] in senders}
        wanted = {k: v for k, v in wanted.items()
                  if v not in timeline_ids and filt.state.allows(k[0], "")}
        events = await self._rooms.get_events(wanted.values())
        return sorted((events[v] for v in wanted.values() if v in events), key=lambda e: e.stream)

    def _typing_events(self, room_id: str, since: SyncToken | None) -> list[dict[str, Any]]:
        if since is not None and not self._typing.changed_since(room_id, since.typing):
            return []
        users = self._typing.users(room_id)
        if since is None and not users:
            return []
        return [{"type": "m.typing", "content": {"user_ids": users}}]

    async def _receipt_events(self, who: Requester, room_id: str, since: SyncToken | None,
                              upto: SyncToken) -> list[dict[str, Any]]:
        if since is not None and not self._notifier.receipts_changed_since(room_id, since.stream):
            return []
        receipts = await self._store.user_data.receipts([room_id], since.stream if since else 0, upto.stream)
        event = receipt_event(receipts, who.user_id)
        return [] if event is None else [event]

    async def _redactions(self, events: list[Event]) -> dict[str, Event]:
        ids = {e.event_id: e.unsigned["redacted_by"] for e in events if e.unsigned.get("redacted_by")}
        if not ids:
            return {}
        found = await self._rooms.get_events(ids.values())
        return {target: found[r] for target, r in ids.items() if r in found}

    async def _unread(self, room_id: str, user_id: str, member_event_id: str, upto: int, threaded: bool
                      ) -> tuple[dict[str, int], dict[str, dict[str, int]] | None]:
        """The user's notification and highlight counts (push rule results) after their read
        receipt (or their join, without one), up to `upto`; with `threaded`, the main timeline's
        and each thread's apart (unread_thread_notifications).

        Counted once, then carried forward over the new events with the evaluation results this
        process kept, while no receipt in the room and no redaction moved; anything unsure asks
        the database again."""
        member = await self._rooms.get_event(member_event_id)
        fallback = member.stream if member else 0
        notifications = self.notifications
        if notifications is None:
            return {"notification_count": 0, "highlight_count": 0}, ({} if threaded else None)
        key = (user_id, room_id)
        if threaded:
            return await self._thread_unread(notifications, key, fallback, upto)
        cached = self._unread_cache.get(key)
        if (cached is not None and cached.fallback == fallback and cached.upto <= upto
                and not self._notifier.receipts_changed_since(room_id, cached.upto)):
            new = self._recent(room_id, cached.upto, upto, None)
            if new is not None and not any(e.type == "m.room.redaction" for e in new):
                count, highlights = cached.count, cached.highlights
                for e in new:
                    if e.stream <= cached.threshold or e.sender == user_id or e.unsigned.get("redacted_by"):
                        continue
                    result = notifications.result(e.event_id)
                    if result is None:
                        break  # not evaluated here (or forgotten): ask the database
                    bits = result.get(user_id, 0)
                    count += bits & 1
                    highlights += (bits >> 1) & 1
                else:
                    self._unread_cache[key] = _Unread(upto, fallback, cached.threshold, count, highlights)
                    return {"notification_count": count, "highlight_count": highlights}, None
        count, highlights, threshold = await notifications.counts(user_id, room_id, fallback, upto)
        if threshold >= 0:  # a receipt on an outlier would let negative positions count
            if key not in self._unread_cache and len(self._unread_cache) >= UNREAD_CACHE_SIZE:
                self._unread_cache.pop(next(iter(self._unread_cache)))
            self._unread_cache[key] = _Unread(upto, fallback, threshold, count, highlights)
        return {"notification_count": count, "highlight_count": highlights}, None

    async def _thread_unread(self, notifications: Notifications, key: tuple[str, str], fallback: int, upto: int
                             ) -> tuple[dict[str, int], dict[str, dict[str, int]]]:
        """_unread per thread, carried forward the same way (Element asks for thread counts)."""
        user_id, room_id = key
        cached = self._thread_cache.get(key)
        if (cached is not None and cached.fallback == fallback and cached.upto <= upto
                and not self._notifier.receipts_changed_since(room_id, cached.upto)):
            new = self._recent(room_id, cached.upto, upto, None)
            if new is not None and not any(e.type == "m.room.redaction" for e in new):
                found = [(e, notifications.result(e.event_id)) for e in new
                         if e.sender != user_id and not e.unsigned.get("redacted_by")]
                if all(bits is not None for _, bits in found):
                    for e, bits in found:
                        mine = bits.get(user_id, 0) if bits else 0
                        if mine and e.stream > cached.threshold(thread_of(e)):
                            cached.add(thread_of(e), mine)
                    cached.upto = upto
                    return cached.sections()
        counts = await notifications.thread_counts(user_id, room_id, fallback, upto)
        if counts.base >= 0:
            if key not in self._thread_cache and len(self._thread_cache) >= UNREAD_CACHE_SIZE:
                self._thread_cache.pop(next(iter(self._thread_cache)))
            self._thread_cache[key] = counts
        return counts.sections()

    async def _summary(self, room_id: str, user_id: str) -> dict[str, Any]:
        """Counts, and heroes: the first members (joined or invited, else those who left) but the user."""
        counts = await self._store.rooms.member_counts(room_id)
        heroes = await self._store.rooms.first_members(room_id, ("join", "invite"), user_id, MAX_HEROES)
        if not heroes:
            heroes = await self._store.rooms.first_members(room_id, ("leave", "ban"), user_id, MAX_HEROES)
        return {"m.joined_member_count": counts.get("join", 0), "m.invited_member_count": counts.get("invite", 0),
                "m.heroes": heroes}

    async def _lazy_members(self, who: Requester, room_id: str, timeline: list[Event], state: list[Event],
                            fresh: bool, redundant: bool) -> list[Event]:
        """Add the member events of timeline senders this device has not been sent (all of them if
        `redundant`), and remember what it now has. `fresh`: a full sync, which starts over."""
        key = (who.user_id, who.device_id or "", room_id)
        sent: set[str | None] = set() if fresh else set(self._lazy_sent.pop(key, set()))
        have = {e.state_key for e in state if e.type == "m.room.member"}
        have |= {e.state_key for e in timeline if e.type == "m.room.member"}
        missing = {e.sender for e in timeline} - have
        if not redundant:
            missing -= sent
        if missing and timeline:
            start = await self._rooms.state_at_event(timeline[0].event_id, after=False)
            ids = [start[("m.room.member", u)] for u in missing if ("m.room.member", u) in start]
            found = await self._rooms.get_events(ids)
            state = sorted([*state, *found.values()], key=lambda e: e.stream)
        sent |= have | missing
        sent.discard("")
        self._lazy_sent[key] = {u for u in sent if u is not None}
        if len(self._lazy_sent) > LAZY_MEMBERS_CACHE_SIZE:
            self._lazy_sent.popitem(last=False)
        return state

    async def _invite(self, room_id: str, member_event_id: str, ignored: frozenset[str],
                      received_key: str = "invite_room_state") -> dict[str, Any] | None:
        """The invite (or knock) section of a room: its state, or for a room this server is not in,
        what the other server sent with it (`received_key`); None for an invite from an ignored user."""
        invite = await self._rooms.get_event(member_event_id)
        if invite is not None and invite.sender in ignored:
            return None  # an invite from an ignored user is not shown
        state = await self._rooms.current_state(room_id)
        events = [stripped_state(e) for k, e in state.items() if k[0] in INVITE_STATE_TYPES]
        if not state and invite is not None:
            # A room this server is not in: the state the inviting server sent with the invite.
            received = invite.unsigned.get(received_key)
            events = [e for e in map(stripped_from_json, received if isinstance(received, list) else [])
                      if e is not None]
        if invite is not None:
            events.append(stripped_state(invite))
        return {"invite_state": {"events": events}}

    async def _left_room(self, who: Requester, room_id: str, since: SyncToken | None, leave_ev: Event | None,
                         filt: SyncFilter, now: int, ignored: frozenset[str]) -> dict[str, Any]:
        version = await self._rooms.room_version(room_id)
        upto = leave_ev.stream if leave_ev else 0
        events, limited = await self._timeline(room_id, since.stream if since else None, upto,
                                               filt.timeline_limit, filt, ignored)
        state: list[Event] = []
        if since is None or limited:
            state = await self._state_section(room_id, since, events, limited, since is None, filt, who.user_id,
                                              upto)
        prev_batch = SyncToken(events[0].stream - 1, 0) if events else SyncToken(upto, 0)
        # No bundles here: the user sees none of the children sent since the leave, which a
        # left room's page would need a bound of its own for.
        serialised = [client_event(e, version, now, device=(who.user_id, who.device_id)) for e in events]
        return {"timeline": {"events": serialised, "limited": limited, "prev_batch": str(prev_batch)},
                "state": {"events": [client_event(e, version, now) for e in state]},
                "account_data": {"events": []}}


def _membership_moved(joined: dict[str, Any], left: dict[str, Any]) -> list[str]:
    """Rooms whose membership may have moved in this sync (for the device list changes): the rooms
    left, and joined rooms with a member event in their timeline or state, or a gap before it."""
    moved = list(left)
    for room_id, room in joined.items():
        timeline = room.get("timeline", {})
        events = [*timeline.get("events", []), *room.get("state", {}).get("events", [])]
        if timeline.get("limited") or any(e.get("type") == "m.room.member" for e in events):
            moved.append(room_id)
    return moved
