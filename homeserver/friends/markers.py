"""What marks a friend request and a friendship in a room, as both servers read them.

A friend request is an invite into a new direct chat (``is_direct: true``) whose member event
carries ``org.whispr.friend_request: {"message": ...}``; a direct-chat invite without the marker
(what Element or a Synapse user sends) counts as an incoming request too. A friendship is the
state event ``org.whispr.friendship`` (state key ""), ``{"users": [...], "since": ts}``, or with
``"ended": true`` once one of them removed the other."""

from __future__ import annotations

import re
from typing import Any

from homeserver.errors import MatrixError
from homeserver.events.event import Event
from homeserver.events.ids import parse_user_id

REQUEST_KEY = "org.whispr.friend_request"
FRIENDSHIP_TYPE = "org.whispr.friendship"
SETTINGS_TYPE = "org.whispr.friends.settings"
MAX_MESSAGE = 1024
# Who may send a user friend requests (their settings, `allow_requests`).
ALLOW_ANYONE, ALLOW_FRIENDS_OF_FRIENDS, ALLOW_NOBODY = "anyone", "friends_of_friends", "nobody"
ALLOW_CHOICES = (ALLOW_ANYONE, ALLOW_FRIENDS_OF_FRIENDS, ALLOW_NOBODY)

# Friend events in /sync (section "org.whispr.friends") and on the SSE stream.
EV_REQUEST_RECEIVED = "org.whispr.friend.request_received"
EV_REQUEST_SENT = "org.whispr.friend.request_sent"
EV_ACCEPTED = "org.whispr.friend.accepted"
EV_DECLINED = "org.whispr.friend.declined"
EV_CANCELLED = "org.whispr.friend.cancelled"
EV_REMOVED = "org.whispr.friend.removed"

# hostname, IPv4 or [IPv6], with an optional port (the spec's server name grammar).
_SERVER_NAME = re.compile(r"^(\[[0-9A-Fa-f:.]{2,45}\]|[A-Za-z0-9.\-]{1,255})(:[0-9]{1,5})?$")


def check_user_id(user_id: object) -> str:
    """A user ID well-formed enough to send an invite to, or 400 M_INVALID_PARAM."""
    if not isinstance(user_id, str):
        raise MatrixError(400, "M_INVALID_PARAM", "user_id must be a Matrix user ID (@name:server)")
    localpart, server = parse_user_id(user_id)
    if not _SERVER_NAME.match(server) or any(c.isspace() or not c.isprintable() for c in localpart):
        raise MatrixError(400, "M_INVALID_PARAM", f"not a user ID: {user_id!r}")
    return user_id


def check_message(message: object) -> str | None:
    if message is None:
        return None
    if not isinstance(message, str) or len(message) > MAX_MESSAGE:
        raise MatrixError(400, "M_BAD_JSON", f"message must be a string of at most {MAX_MESSAGE} characters")
    return message


def request_marker(message: str | None) -> dict[str, Any]:
    return {REQUEST_KEY: {} if message is None else {"message": message}}


def is_marked(invite: Event) -> bool:
    return isinstance(invite.content.get(REQUEST_KEY), dict)


def is_request(invite: Event) -> bool:
    """A friend request: marked, or any direct-chat invite."""
    return is_marked(invite) or invite.content.get("is_direct") is True


def message_of(invite: Event) -> str | None:
    marker = invite.content.get(REQUEST_KEY)
    message = marker.get("message") if isinstance(marker, dict) else None
    return message[:MAX_MESSAGE] if isinstance(message, str) else None



# The server-default push rule of friend requests (an override, so that it wins over the plain
# invite rule): a direct-chat invite for the user notifies with a sound and highlights, as a
# request from a person is worth more than an invite into a group. USER_ID is filled in per user.
def friend_request_push_rule(user_id_placeholder: str) -> dict[str, Any]:
    return {"rule_id": ".org.whispr.rule.friend_request", "conditions": [
        {"kind": "event_match", "key": "type", "pattern": "m.room.member"},
        {"kind": "event_match", "key": "content.membership", "pattern": "invite"},
        {"kind": "event_match", "key": "state_key", "pattern": user_id_placeholder},
        {"kind": "event_property_is", "key": "content.is_direct", "value": True}],
        "actions": ["notify", {"set_tweak": "sound", "value": "default"}, {"set_tweak": "highlight"}]}
