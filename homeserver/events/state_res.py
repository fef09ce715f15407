"""State resolution v2 (room versions 2 to 11) and v2.1 (room version 12); `resolve_state` picks the
algorithm of a room version (v1's is in state_res_v1).

Given several state maps (one per forward extremity), pick one event per (type, state_key):
  1. split into unconflicted state and conflicted events; add the auth difference
     (and, for v2.1, the conflicted state subgraph) to get the full conflicted set;
  2. replay its power events (plus their conflicted auth ancestors) in reverse topological
     power order through the auth rules, starting from the unconflicted state (v2.1: empty);
  3. replay the remaining events in mainline order on top of that partial state;
  4. re-apply the unconflicted state.
Events and auth chains are memoised per call, so a resolution touches each event once.
"""

from __future__ import annotations

import heapq
import math
from typing import Awaitable, Callable, Collection, Mapping, Sequence

from homeserver.events.auth_rules import (
    CREATE_KEY, POWER_LEVELS_KEY, AuthError, PowerLevel, auth_types_for_event, check_auth,
    user_power_level,
)
from homeserver.events.event import Event, StateKey
from homeserver.events.room_versions import RoomVersion, StateResAlgorithm
from homeserver.events.state_res_v1 import resolve_state_v1

GetEvent = Callable[[str], Awaitable[Event | None]]
# Returns the auth chain (not including the given events themselves) of a set of events.
GetAuthChain = Callable[[Collection[str]], Awaitable[Collection[str]]]


class AuthGraphCycleError(ValueError):
    """The auth_events graph loops, which only corrupt storage or a broken get_event can produce."""


def is_power_event(event: Event) -> bool:
    """Events that may take abilities away: power levels, join rules, kicks and bans."""
    if not event.is_state:
        return False
    if event.type in ("m.room.power_levels", "m.room.join_rules"):
        return True
    return (event.type == "m.room.member" and event.membership in ("leave", "ban")
            and event.sender != event.state_key)


async def resolve_state(
    room_version: RoomVersion,
    state_sets: Sequence[Mapping[StateKey, str]],
    get_event: GetEvent,
    get_auth_chain: GetAuthChain | None = None,
) -> dict[StateKey, str]:
    """Resolve `state_sets` with the room version's algorithm."""
    if room_version.state_res is StateResAlgorithm.V1:
        return await resolve_state_v1(room_version, state_sets, get_event)
    return await resolve_state_v2(room_version, state_sets, get_event, get_auth_chain)


async def resolve_state_v2(
    room_version: RoomVersion,
    state_sets: Sequence[Mapping[StateKey, str]],
    get_event: GetEvent,
    get_auth_chain: GetAuthChain | None = None,
) -> dict[StateKey, str]:
    """Resolve `state_sets` into one state map (values are event IDs).

    `get_event` returns None for unknown events, which are then left out. `get_auth_chain`, if
    given, lets storage answer the per-state-set auth chains from an index instead of walking
    events; per-event chains are still walked (and memoised) here.
    """
    if not state_sets:
        return {}
    if len(state_sets) == 1:
        return dict(state_sets[0])
    return await _Resolver(room_version, get_event, get_auth_chain).resolve(state_sets)


def split_state(state_sets: Sequence[Mapping[StateKey, str]]) -> tuple[dict[StateKey, str], set[str]]:
    """(unconflicted state map, conflicted state set of event IDs)."""
    unconflicted: dict[StateKey, str] = {}
    conflicted: set[str] = set()
    keys = set().union(*(s.keys() for s in state_sets))
    for key in keys:
        values = {s.get(key) for s in state_sets}
        if len(values) == 1 and None not in values:
            unconflicted[key] = state_sets[0][key]
        else:
            conflicted.update(v for v in values if v is not None)
    return unconflicted, conflicted


class _Resolver:
    def __init__(self, room_version: RoomVersion, get_event: GetEvent,
                 get_auth_chain: GetAuthChain | None) -> None:
        self.room_version = room_version
        self._get_event = get_event
        self._get_auth_chain = get_auth_chain
        self._events: dict[str, Event | None] = {}
        self._chains: dict[str, frozenset[str]] = {}
        self._pl_parent: dict[str, str | None] = {}

    # ---- the algorithm ----

    async def resolve(self, state_sets: Sequence[Mapping[StateKey, str]]) -> dict[StateKey, str]:
        unconflicted, conflicted = split_state(state_sets)
        if not conflicted:
            return unconflicted
        full = conflicted | await self._auth_difference(state_sets)
        if self.room_version.state_res is StateResAlgorithm.V2_1:
            full |= await self._conflicted_subgraph(conflicted)
        full = {e for e in full if await self._state_event(e) is not None}

        power_events = {e for e in full if is_power_event(self._loaded(e))}
        selected = set(power_events)
        for event_id in power_events:
            selected |= await self.auth_chain(event_id) & full
        power_order = await self._reverse_topological_power_order(selected)

        start = {} if self.room_version.state_res is StateResAlgorithm.V2_1 else dict(unconflicted)
        partial = await self._iterative_auth_checks(power_order, start)

        mainline_order = await self._mainline_order(full - selected, partial.get(POWER_LEVELS_KEY))
        resolved = await self._iterative_auth_checks(mainline_order, partial)
        resolved.update(unconflicted)
        return resolved

    async def _auth_difference(self, state_sets: Sequence[Mapping[StateKey, str]]) -> set[str]:
        chains = [await self._state_set_chain(s) for s in state_sets]
        return set[str]().union(*chains) - set[str].intersection(*chains)

    async def _state_set_chain(self, state_set: Mapping[StateKey, str]) -> set[str]:
        # A set's own events count as reachable from it. This only changes the full conflicted set
        # by keeping out unconflicted events (state in every set), which step 5 restores anyway.
        ids = set(state_set.values())
        if self._get_auth_chain is not None:
            return set(await self._get_auth_chain(ids)) | ids
        chain = set(ids)
        for event_id in ids:
            chain |= await self.auth_chain(event_id)
        return chain

    async def _conflicted_subgraph(self, conflicted: set[str]) -> set[str]:
        """v2.1: events on some auth_events path from one conflicted event to another, endpoints
        included: reachable from a conflicted event (or one itself) and reaching one (or one itself)."""
        reachable: set[str] = set()
        for event_id in conflicted:
            reachable |= await self.auth_chain(event_id)

        def reaches_conflicted(event_id: str) -> bool:
            return not self._chains.get(event_id, frozenset()).isdisjoint(conflicted)

        middle = {e for e in reachable if reaches_conflicted(e)}
        tops = {c for c in conflicted if reaches_conflicted(c)}
        return middle | tops | (conflicted & reachable)

    async def _reverse_topological_power_order(self, event_ids: set[str]) -> list[str]:
        """Kahn's algorithm over auth ancestry, always taking the most powerful/oldest/smallest ID."""
        blockers = {e: len(await self.auth_chain(e) & event_ids) for e in event_ids}
        unblocks: dict[str, list[str]] = {e: [] for e in event_ids}
        for event_id in event_ids:
            for ancestor in self._chains[event_id] & event_ids:
                unblocks[ancestor].append(event_id)
        sort_key = {e: (-await self._sender_power(e), self._loaded(e).origin_server_ts, e) for e in event_ids}
        ready = [sort_key[e] for e, count in blockers.items() if count == 0]
        heapq.heapify(ready)
        order: list[str] = []
        while ready:
            event_id = heapq.heappop(ready)[2]
            order.append(event_id)
            for child in unblocks[event_id]:
                blockers[child] -= 1
                if blockers[child] == 0:
                    heapq.heappush(ready, sort_key[child])
        return order

    async def _mainline_order(self, event_ids: set[str], power_levels_id: str | None) -> list[str]:
        mainline: dict[str, int] = {}
        current = power_levels_id
        while current is not None and current not in mainline:
            mainline[current] = len(mainline)
            current = await self._power_levels_parent(current)
        positions: dict[str, float] = {}  # memo: power levels event -> mainline position it leads to

        async def position(first: str | None) -> float:
            walked: list[str] = []
            while first is not None and first not in mainline and first not in positions:
                if first in walked:
                    raise AuthGraphCycleError(f"power levels auth loop at {first}")
                walked.append(first)
                first = await self._power_levels_parent(first)
            if first is None:
                found = math.inf
            else:
                found = mainline[first] if first in mainline else positions[first]
            positions.update(dict.fromkeys(walked, found))
            return found

        keys = []
        for event_id in event_ids:
            pos = await position(await self._power_levels_parent(event_id))
            # Larger position = older mainline ancestor = applied first.
            keys.append((-pos, self._loaded(event_id).origin_server_ts, event_id))
        return [key[2] for key in sorted(keys)]

    async def _iterative_auth_checks(self, event_ids: list[str],
                                     state: Mapping[StateKey, str]) -> dict[StateKey, str]:
        result = dict(state)
        for event_id in event_ids:
            event = await self._state_event(event_id)
            if event is None:
                continue
            auth_state = await self._auth_state_for(event, result)
            try:
                check_auth(event, auth_state, self.room_version)
            except AuthError:
                continue  # not allowed against the partially resolved state: leave it out
            result[event.key] = event_id
        return result

    async def _auth_state_for(self, event: Event, state: Mapping[StateKey, str]) -> dict[StateKey, Event]:
        """The event's own (non-rejected) auth events, overridden by the partial state where it has them."""
        auth_state: dict[StateKey, Event] = {}
        for auth_id in event.auth_event_ids:
            auth_event = await self._state_event(auth_id)
            if auth_event is not None and auth_event.rejected is None:
                auth_state[auth_event.key] = auth_event
        for key in auth_types_for_event(event, self.room_version):
            if key in state:
                current = await self._state_event(state[key])
                if current is not None:
                    auth_state[key] = current
        await self._add_implied_create(event, auth_state)
        return auth_state

    async def _add_implied_create(self, event: Event, auth_state: dict[StateKey, Event]) -> None:
        """v12 events never cite the create event; it is the one whose ID matches the room ID."""
        room_id = event.pdu.get("room_id")
        if self.room_version.room_id_from_create_event and isinstance(room_id, str):
            create = await self._state_event("$" + room_id[1:])
            if create is not None and create.type == "m.room.create":
                auth_state[CREATE_KEY] = create

    async def _sender_power(self, event_id: str) -> PowerLevel:
        """The sender's power level according to the event's own auth events."""
        event = self._loaded(event_id)
        auth_state: dict[StateKey, Event] = {}
        for auth_id in event.auth_event_ids:
            auth_event = await self._state_event(auth_id)
            if auth_event is not None:
                auth_state[auth_event.key] = auth_event
        await self._add_implied_create(event, auth_state)
        return user_power_level(event.sender, auth_state, self.room_version)

    # ---- graph access (memoised) ----

    async def event(self, event_id: str) -> Event | None:
        if event_id not in self._events:
            self._events[event_id] = await self._get_event(event_id)
        return self._events[event_id]

    def _loaded(self, event_id: str) -> Event:
        """An event of the full conflicted set: resolve kept only those it could load."""
        event = self._events[event_id]
        assert event is not None
        return event

    async def _state_event(self, event_id: str) -> Event | None:
        event = await self.event(event_id)
        return event if event is not None and event.is_state else None

    async def auth_chain(self, event_id: str) -> frozenset[str]:
        """All events reachable through auth_events (excluding the event), iteratively so deep
        rooms do not hit the recursion limit."""
        stack = [event_id]
        expanding: set[str] = set()
        while stack:
            current = stack[-1]
            if current in self._chains:
                stack.pop()
                continue
            event = await self.event(current)
            parents = event.auth_event_ids if event is not None else []
            pending = [p for p in parents if p not in self._chains]
            if pending:
                if current in expanding or any(p in expanding for p in pending):
                    raise AuthGraphCycleError(f"auth_events loop through {current}")
                expanding.add(current)
                stack.extend(pending)
                continue
            chain: set[str] = set(parents)
            for parent in parents:
                chain |= self._chains[parent]
            self._chains[current] = frozenset(chain)
            expanding.discard(current)
            stack.pop()
        return self._chains[event_id]

    async def _power_levels_parent(self, event_id: str) -> str | None:
        """The m.room.power_levels event among `event_id`'s auth events, if any."""
        if event_id not in self._pl_parent:
            found = None
            event = await self.event(event_id)
            for auth_id in event.auth_event_ids if event is not None else []:
                auth_event = await self.event(auth_id)
                if auth_event is not None and auth_event.is_state and auth_event.key == POWER_LEVELS_KEY:
                    found = auth_id
                    break
            self._pl_parent[event_id] = found
        return self._pl_parent[event_id]
