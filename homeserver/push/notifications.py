"""Evaluating every timeline event for the room's local users, and what the results feed.

Rooms calls `evaluate` before it stores an event (local or received over federation): the rows
it returns are written in the event's own transaction, so a notification exists exactly when its
event does and nothing is lost in a crash. The room's side of the work (its local members, their
display names, the member count, the power levels) is kept per state group, which a message does
not change: evaluating a message costs no query. The results of recent events stay in memory too,
so /sync can carry its counts forward without asking the database.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from homeserver.clock import now_ms
from homeserver.events.auth_rules import user_power_level
from homeserver.events.event import Event, StateKey
from homeserver.push.conditions import EventFacts, Member
from homeserver.push.evaluator import CompiledRules, Outcome
from homeserver.push.push_rules import PushRules
from homeserver.rooms.rooms import Rooms
from homeserver.sync.ignored import IgnoredUsers
from storage.push import EventPush, Notification, PushGroup
from storage.rooms import StateMap
from storage.store import Store

log = logging.getLogger("whispr.push")

CONTEXT_CACHE_SIZE = 2_048
RESULTS_CACHE_SIZE = 4_096
# Groups this small are kept as a dict of their own (cheaper than the shared-set form).
SMALL_GROUP = 8
CREATE: StateKey = ("m.room.create", "")
POWER_LEVELS: StateKey = ("m.room.power_levels", "")
MAIN_THREAD = "main"
# Bits of a user's result for one event, as kept in memory for /sync.
NOTIFY, HIGHLIGHT = 1, 2


@dataclass(frozen=True)
class RoomContext:
    """What evaluation needs of a room's state."""

    members: tuple[Member, ...]  # local joined users
    joined: int
    auth_state: dict[StateKey, Event]  # create and power levels
    member_ids: frozenset[str] = frozenset()


@dataclass
class Result:
    """Whom an event notified, kept in memory for /sync: `bits` for every user of `everyone` (the
    room context's own set, shared by all its events) but `sender`, else what `others` says."""

    others: dict[str, int]
    everyone: frozenset[str] | None = None
    sender: str = ""
    bits: int = 0

    def get(self, user_id: str, default: int = 0) -> int:
        found = self.others.get(user_id)
        if found is not None:
            return found
        if self.everyone is not None and user_id in self.everyone and user_id != self.sender:
            return self.bits
        return default


@dataclass
class ThreadCounts:
    """A user's counts in a room per thread ("main" for the rest) as of `upto`, each thread's
    counted after max(`base`, its own receipt); `base` is the latest receipt without a thread,
    or the join."""

    upto: int
    fallback: int
    base: int
    receipts: dict[str, int]
    counts: dict[str, list[int]] = field(default_factory=dict)  # thread -> [notifications, highlights]

    def threshold(self, thread_id: str) -> int:
        return max(self.base, self.receipts.get(thread_id, 0))

    def add(self, thread_id: str, bits: int) -> None:
        entry = self.counts.setdefault(thread_id, [0, 0])
        entry[0] += 1 if bits & NOTIFY else 0
        entry[1] += 1 if bits & HIGHLIGHT else 0

    def sections(self) -> tuple[dict[str, int], dict[str, dict[str, int]]]:
        """unread_notifications (the main timeline) and unread_thread_notifications."""
        def as_json(c: list[int]) -> dict[str, int]:
            return {"notification_count": c[0], "highlight_count": c[1]}
        threads = {t: as_json(c) for t, c in self.counts.items() if t != MAIN_THREAD and c[0]}
        return as_json(self.counts.get(MAIN_THREAD, [0, 0])), threads


def thread_of(event: Event) -> str:
    relates = event.content.get("m.relates_to")
    if isinstance(relates, dict) and relates.get("rel_type") == "m.thread" and isinstance(relates.get("event_id"), str):
        return str(relates["event_id"])
    return MAIN_THREAD


def _member(user_id: str, event: Event) -> Member:
    name = event.content.get("displayname")
    return Member(user_id, user_id[1:].split(":", 1)[0], name if isinstance(name, str) else None)


class Notifications:
    def __init__(self, server_name: str, rules: PushRules, rooms: Rooms, store: Store,
                 ignored: IgnoredUsers | None = None) -> None:
        self._suffix = ":" + server_name
        self._rules = rules
        self._rooms = rooms
        self._store = store
        self._ignored = ignored
        self._contexts: OrderedDict[int, RoomContext] = OrderedDict()
        self._results: OrderedDict[str, Result] = OrderedDict()
        # Told about each stored event's notifications (pushers wake on them).
        self.on_stored: list[Callable[[EventPush], None]] = []

    # --- evaluation (Rooms' push hook) -------------------------------------------------

    async def _context(self, state: StateMap, group: int | None) -> RoomContext:
        if group is not None:
            cached = self._contexts.get(group)
            if cached is not None:
                self._contexts.move_to_end(group)
                return cached
        member_ids = [eid for (etype, _), eid in state.items() if etype == "m.room.member"]
        wanted = [eid for key, eid in state.items() if key in (CREATE, POWER_LEVELS)]
        events = await self._rooms.get_events([*member_ids, *wanted])
        members, joined = [], 0
        for eid in member_ids:
            ev = events.get(eid)
            if ev is None or ev.membership != "join" or not ev.state_key:
                continue
            joined += 1
            if ev.state_key.endswith(self._suffix):
                members.append(_member(ev.state_key, ev))
        auth = {k: events[state[k]] for k in (CREATE, POWER_LEVELS) if k in state and state[k] in events}
        context = RoomContext(tuple(members), joined, auth, frozenset(m.user_id for m in members))
        if group is not None:
            self._contexts[group] = context
            if len(self._contexts) > CONTEXT_CACHE_SIZE:
                self._contexts.popitem(last=False)
        return context

    async def evaluate(self, event: Event, state: StateMap, group: int | None) -> EventPush | None:
        """The notifications of a timeline event for the local users of its room: those joined
        (state before it) and, for an invite, the invitee. None when nobody is notified."""
        try:
            return await self._evaluate(event, state, group)
        except Exception:  # a bug here must not stop the event
            log.exception("push evaluation failed for %s", event.event_id)
            return None

    async def _evaluate(self, event: Event, state: StateMap, group: int | None) -> EventPush | None:
        context = await self._context(state, group)
        members = [m for m in context.members if m.user_id != event.sender]
        in_context = len(members)
        if self._ignored is not None and members:
            # The spec: events from ignored users must not trigger notifications.
            ignoring = await self._ignored.ignoring(event.sender, context.member_ids)
            if ignoring:
                members = [m for m in members if m.user_id not in ignoring]
                in_context = -1  # the room's own member set is no longer the answer
        if event.type == "m.room.member" and event.state_key and event.state_key.endswith(self._suffix) \
                and event.membership == "invite" and event.state_key != event.sender \
                and not any(m.user_id == event.state_key for m in members):
            members.append(_member(event.state_key, event))
        if not members:
            self._keep(event.event_id, Result({}))
            return None
        version = await self._rooms.room_version(event.room_id)
        power = user_power_level(event.sender, context.auth_state, version) if version is not None else 0
        levels_ev = context.auth_state.get(POWER_LEVELS)
        notif_levels = levels_ev.content.get("notifications") if levels_ev is not None else None
        facts = EventFacts.of(event.pdu, context.joined, int(power) if power != float("inf") else 2**53,
                              notif_levels if isinstance(notif_levels, dict) else {})
        compiled = await self._rules.compiled([m.user_id for m in members])
        by_rules: dict[int, tuple[CompiledRules, list[Member]]] = {}
        for m in members:
            rules = compiled[m.user_id]
            entry = by_rules.get(id(rules))
            if entry is None:
                by_rules[id(rules)] = (rules, [m])
            else:
                entry[1].append(m)
        notified: dict[Outcome, list[str]] = {}
        for rules, users in by_rules.values():
            for outcome, user_ids in rules.assign(rules.candidates(facts), facts, users).items():
                if outcome.notify:
                    notified.setdefault(outcome, []).extend(user_ids)
        result = Result({})
        for outcome, user_ids in notified.items():
            bits = NOTIFY | (HIGHLIGHT if outcome.highlight else 0)
            if len(user_ids) == in_context == len(members) and result.everyone is None \
                    and len(user_ids) > SMALL_GROUP:
                # every local member but the sender (the usual message): the room's own set, not a copy
                result = Result(result.others, context.member_ids, event.sender, bits)
            else:
                result.others.update(dict.fromkeys(user_ids, bits))
        self._keep(event.event_id, result)
        if not notified:
            return None
        groups = tuple(PushGroup(o.actions_json, o.highlight, tuple(u)) for o, u in notified.items())
        return EventPush(event.event_id, event.room_id, thread_of(event), now_ms(), groups)

    def _keep(self, event_id: str, result: Result) -> None:
        self._results[event_id] = result
        if len(self._results) > RESULTS_CACHE_SIZE:
            self._results.popitem(last=False)

    def stored(self, event: Event, push: EventPush | None) -> None:
        if push is None:
            return
        for hook in self.on_stored:
            try:
                hook(push)
            except Exception:
                log.exception("a push hook failed for %s", event.event_id)

    def result(self, event_id: str) -> Result | None:
        """The users an event this process evaluated notified (bits NOTIFY, HIGHLIGHT); None if unknown."""
        return self._results.get(event_id)

    # --- reading -----------------------------------------------------------------------

    async def counts(self, user_id: str, room_id: str, fallback: int, upto: int) -> tuple[int, int, int]:
        return await self._store.push.counts(user_id, room_id, fallback, upto)

    async def thread_counts(self, user_id: str, room_id: str, fallback: int, upto: int) -> ThreadCounts:
        """The main timeline's counts and each thread's, each after its own read receipt (a
        receipt without a thread counts for all of them)."""
        receipts = await self._store.push.receipt_streams(user_id, room_id)
        base = max([fallback, *(s for _, t, s in receipts if t == "")])
        counts = ThreadCounts(upto, fallback, base, {t: s for _, t, s in receipts if t})
        start = min([base, *counts.receipts.values()])
        for thread_id, stream, highlight in await self._store.push.thread_rows(user_id, room_id, start, upto):
            if stream > counts.threshold(thread_id):
                counts.add(thread_id, NOTIFY | (HIGHLIGHT if highlight else 0))
        return counts

    async def page(self, user_id: str, before: int | None, limit: int, only_highlight: bool
                   ) -> tuple[list[tuple[Notification, bool]], int | None]:
        """GET /notifications: (notification, read) newest first, and the token of the next page."""
        rows = await self._store.push.notifications(user_id, before, limit, only_highlight)
        read: dict[str, int] = {}
        for room_id, _, stream in await self._store.push.receipt_streams(user_id):
            read[room_id] = max(read.get(room_id, 0), stream)
        page = [(n, n.stream <= read.get(n.room_id, 0)) for n in rows]
        return page, (rows[-1].stream if len(rows) == limit else None)

    async def unread_totals(self, user_id: str) -> tuple[int, int]:
        return await self._store.push.unread_totals(user_id)
