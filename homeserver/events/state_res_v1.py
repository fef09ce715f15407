"""State resolution v1 (room version 1 only; spec: rooms/v1, "State resolution").

Keys on which the state sets agree (or that only some of them hold) are kept as they are; the
conflicted ones are settled in passes over a growing result R:
  1. power levels, then join rules, then each member's membership: the candidates sorted by
     ascending depth, then descending sha1(event_id); the first is taken, and each next one
     replaces it while it is allowed by the auth rules against R, stopping at the first refusal;
  2. every other conflicted key: the candidate of highest depth, then lowest sha1(event_id), that
     is allowed against R (the last one tried when none is).
Version 1 is known to reset state in some forks; that is the algorithm, kept for old rooms.
"""

from __future__ import annotations

import hashlib
from typing import Awaitable, Callable, Mapping, Sequence

from homeserver.events.auth_rules import AuthError, auth_types_for_event, check_auth
from homeserver.events.event import Event, StateKey
from homeserver.events.room_versions import RoomVersion

GetEvent = Callable[[str], Awaitable[Event | None]]

# The passes of step 1, in order: the state that decides who may do what.
_AUTH_TYPES_IN_ORDER = ("m.room.power_levels", "m.room.join_rules", "m.room.member")


def separate(state_sets: Sequence[Mapping[StateKey, str]]) -> tuple[dict[StateKey, str], dict[StateKey, set[str]]]:
    """(unconflicted state, conflicted keys with their candidate event IDs). A key is conflicted when
    two state sets hold different events for it; one held by only some sets is not."""
    unconflicted: dict[StateKey, str] = {}
    conflicted: dict[StateKey, set[str]] = {}
    for state in state_sets:
        for key, event_id in state.items():
            if key in conflicted:
                conflicted[key].add(event_id)
            elif key not in unconflicted:
                unconflicted[key] = event_id
            elif unconflicted[key] != event_id:
                conflicted[key] = {unconflicted.pop(key), event_id}
    return unconflicted, conflicted


def _sha1(event_id: str) -> str:
    return hashlib.sha1(event_id.encode("utf-8")).hexdigest()


async def resolve_state_v1(room_version: RoomVersion, state_sets: Sequence[Mapping[StateKey, str]],
                           get_event: GetEvent) -> dict[StateKey, str]:
    if not state_sets:
        return {}
    unconflicted, conflicted = separate(state_sets)
    if not conflicted:
        return unconflicted
    events: dict[str, Event] = {}
    for event_id in {e for ids in conflicted.values() for e in ids} | set(unconflicted.values()):
        event = await get_event(event_id)
        if event is not None:
            events[event_id] = event
    resolved = dict(unconflicted)

    def allowed(event: Event) -> bool:
        auth_state = {k: events[resolved[k]] for k in auth_types_for_event(event, room_version)
                      if k in resolved and resolved[k] in events}
        try:
            check_auth(event, auth_state, room_version)
        except AuthError:
            return False
        return True

    def candidates(key: StateKey) -> list[Event]:
        return [events[e] for e in conflicted[key] if e in events]

    for event_type in _AUTH_TYPES_IN_ORDER:
        for key in sorted(k for k in conflicted if k[0] == event_type):
            ordered = sorted(candidates(key), key=lambda e: _sha1(e.event_id), reverse=True)
            ordered.sort(key=lambda e: e.depth)  # stable: ascending depth, then descending sha1
            if not ordered:
                continue
            resolved[key] = ordered[0].event_id
            for event in ordered[1:]:
                if not allowed(event):
                    break
                resolved[key] = event.event_id
    for key in sorted(k for k in conflicted if k[0] not in _AUTH_TYPES_IN_ORDER):
        ordered = sorted(candidates(key), key=lambda e: (-e.depth, _sha1(e.event_id)))
        if not ordered:
            continue
        chosen = next((e for e in ordered if allowed(e)), ordered[-1])
        resolved[key] = chosen.event_id
    return resolved
