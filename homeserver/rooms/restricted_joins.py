"""Restricted joins (room versions 8+; `knock_restricted` from 10): who may join without an invite.

A `restricted` join rule lists rooms in `allow` ({"type": "m.room_membership", "room_id": ...}); a user
joined to one of them may join, and the join names a user of a resident server with the invite level
in `join_authorised_via_users_server`, whose server signs the join. This module decides both halves
for a room this server holds: whether the user qualifies (which this server can only tell for allowed
rooms it is in itself) and which of our users vouches.
"""

from __future__ import annotations

from typing import Any

from homeserver.errors import MatrixError, forbidden
from homeserver.events.auth_rules import JOIN_RULES_KEY, named_level, server_of, user_power_level
from homeserver.rooms.rooms import Rooms

ALLOW_ROOM_MEMBERSHIP = "m.room_membership"


def allowed_rooms(join_rules_content: dict[str, Any]) -> list[str]:
    """The rooms whose members may join, from a join rules event's `allow` list."""
    allow = join_rules_content.get("allow")
    return [entry["room_id"] for entry in allow if isinstance(entry, dict)
            and entry.get("type") == ALLOW_ROOM_MEMBERSHIP and isinstance(entry.get("room_id"), str)] \
        if isinstance(allow, list) else []


async def join_authoriser(rooms: Rooms, room_id: str, user_id: str) -> str | None:
    """One of our users to name in `join_authorised_via_users_server` for `user_id`'s join, or None
    when the join needs none (the rule is not restricted in this room version, or the user is
    invited or joined already). 403 M_FORBIDDEN when the user is in none of the allowed rooms we
    know; 400 M_UNABLE_TO_AUTHORISE_JOIN when we are in none of them, so cannot tell; 400
    M_UNABLE_TO_GRANT_JOIN when none of our users in the room may invite."""
    version = await rooms.room_version(room_id)
    if version is None or not version.restricted_join_rule:
        return None
    state = await rooms.current_state(room_id)
    rules = state.get(JOIN_RULES_KEY)
    if rules is None:
        return None
    rule = rules.content.get("join_rule")
    if rule not in ("restricted", "knock_restricted") or (
            rule == "knock_restricted" and not version.knock_restricted_join_rule):
        return None
    current = state.get(("m.room.member", user_id))
    if current is not None and current.membership in ("invite", "join"):
        return None
    known = [r for r in allowed_rooms(rules.content) if await _we_are_in(rooms, r)]
    if not known:
        raise MatrixError(400, "M_UNABLE_TO_AUTHORISE_JOIN",
                          "This server is in none of the rooms whose members may join")
    if not any([await rooms.membership(r, user_id) == "join" for r in known]):
        raise forbidden("You are not a member of any room whose members may join this one")
    invite_level = named_level(state, "invite")
    for key, event in sorted(state.items()):
        if key[0] == "m.room.member" and event.membership == "join" and server_of(key[1]) == rooms.server_name \
                and user_power_level(key[1], state, version) >= invite_level:
            return key[1]
    raise MatrixError(400, "M_UNABLE_TO_GRANT_JOIN", "None of this server's users in the room may invite")


async def _we_are_in(rooms: Rooms, room_id: str) -> bool:
    room = await rooms.room(room_id)
    return room is not None and room.current_group is not None
