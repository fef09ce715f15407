"""A room's summary (the spec's RoomSummary) from its current state, its space children, and who may
see it: a room shows in a hierarchy or summary only to those who could join, knock on or peek into it.
"""

from __future__ import annotations

from typing import Any, Mapping

from homeserver.events.auth_rules import CREATE_KEY, JOIN_RULES_KEY, server_of
from homeserver.events.client_format import stripped_state
from homeserver.events.event import Event, StateKey
from homeserver.events.room_versions import RoomVersion
from homeserver.rooms.restricted_joins import allowed_rooms

SPACE_CHILD = "m.space.child"
MAX_ORDER_LENGTH = 50  # the spec's limit on m.space.child `order`
_STRING_FIELDS = {"name": ("m.room.name", "name"), "topic": ("m.room.topic", "topic"),
                  "avatar_url": ("m.room.avatar", "url"), "canonical_alias": ("m.room.canonical_alias", "alias")}

State = Mapping[StateKey, Event]


def _field(state: State, event_type: str, key: str) -> Any:
    event = state.get((event_type, ""))
    return event.content.get(key) if event is not None else None


def join_rule(state: State) -> str:
    rule = _field(state, "m.room.join_rules", "join_rule")
    return rule if isinstance(rule, str) else "invite"


def world_readable(state: State) -> bool:
    return _field(state, "m.room.history_visibility", "history_visibility") == "world_readable"


def _restricted(rule: str, version: RoomVersion) -> bool:
    return (rule == "restricted" and version.restricted_join_rule) or \
        (rule == "knock_restricted" and version.knock_restricted_join_rule)


def _knockable(rule: str, version: RoomVersion) -> bool:
    return (rule == "knock" and version.knock_join_rule) or \
        (rule == "knock_restricted" and version.knock_restricted_join_rule)


def open_to_all(state: State, version: RoomVersion) -> bool:
    """Anyone may join, knock or peek: public, knockable or world-readable."""
    rule = join_rule(state)
    return rule == "public" or _knockable(rule, version) or world_readable(state)


def allowed_room_ids(state: State, version: RoomVersion) -> list[str]:
    """The rooms whose members may join, when the join rule is restricted in this version."""
    rules = state.get(JOIN_RULES_KEY)
    if rules is None or not _restricted(join_rule(state), version):
        return []
    return allowed_rooms(rules.content)


def has_server_member(state: State, server: str) -> bool:
    """A user of `server` is joined to or invited into the room."""
    return any(key[0] == "m.room.member" and event.membership in ("join", "invite")
               and server_of(key[1]) == server for key, event in state.items())


def summary(room_id: str, state: State, version: RoomVersion, joined_members: int) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "room_id": room_id, "num_joined_members": joined_members, "world_readable": world_readable(state),
        "guest_can_join": _field(state, "m.room.guest_access", "guest_access") == "can_join",
        "join_rule": join_rule(state), "room_version": version.identifier,
    }
    for name, (event_type, key) in _STRING_FIELDS.items():
        value = _field(state, event_type, key)
        if isinstance(value, str):
            entry[name] = value
    create = state.get(CREATE_KEY)
    room_type = create.content.get("type") if create is not None else None
    if isinstance(room_type, str):
        entry["room_type"] = room_type
    allowed = allowed_room_ids(state, version)
    if allowed:
        entry["allowed_room_ids"] = allowed
    algorithm = _field(state, "m.room.encryption", "algorithm")
    if isinstance(algorithm, str):
        entry["encryption"] = algorithm
    return entry


def child_via(event: Event) -> list[str] | None:
    """The servers an m.space.child event names; None when it is not a valid child (the spec: a
    child without `via` is no child)."""
    via = event.content.get("via")
    if not isinstance(via, list) or not via or not all(isinstance(s, str) for s in via):
        return None
    if not isinstance(event.state_key, str) or not event.state_key.startswith("!"):
        return None
    return via


def _order_key(event: Event) -> tuple[int, str, int, str]:
    """The spec's order of children: by `order` (those without a valid one last), then the child
    event's origin_server_ts, then the room ID."""
    order = event.content.get("order")
    valid = isinstance(order, str) and len(order) <= MAX_ORDER_LENGTH and all(0x20 <= ord(c) <= 0x7E for c in order)
    return (0 if valid else 1, order if valid and isinstance(order, str) else "", event.origin_server_ts,
            event.state_key or "")


def children(state: State, suggested_only: bool = False) -> list[Event]:
    """The room's valid m.space.child events, in the spec's order."""
    found = [e for key, e in state.items() if key[0] == SPACE_CHILD and child_via(e) is not None
             and (not suggested_only or e.content.get("suggested") is True)]
    return sorted(found, key=_order_key)


def children_state(state: State) -> list[dict[str, Any]]:
    return [{**stripped_state(e), "origin_server_ts": e.origin_server_ts} for e in children(state)]
