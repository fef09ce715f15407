"""Server ACLs (`m.room.server_acl`): which servers a room lets take part over federation.

The spec's order (Client-Server API, m.room.server_acl): no ACL event in the room's state:
allow; a server name that is an IP literal while `allow_ip_literals` is false: deny; a name
matching `deny`: deny; matching `allow`: allow; else deny. Patterns are case-insensitive globs
(`*` any run of characters, `?` exactly one) matched against the server name without its port.

ACLs act at the network layer (Server-Server API, "Server Access Control Lists"): they decide
which servers this server answers about a room and whose transactions it takes the room's PDUs
and EDUs from (the requesting origin), not which events the auth rules allow. An event already
in the room's graph stays in it whatever its sender's server, so every server agrees on the room.

An ACL event's content never changes (short of a redaction), so its compiled form is kept by
event ID: a check costs the room's current state (state groups are cached), the event from the
event cache, and one regex match per list, never a compile.
"""

from __future__ import annotations

import ipaddress
import re
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from homeserver.errors import forbidden
from homeserver.events.event import StateKey
from homeserver.rooms.rooms import Rooms

ACL: StateKey = ("m.room.server_acl", "")
ACL_CACHE_SIZE = 1024
_NOTHING = re.compile(r"(?!)")  # an empty list matches no server


def _literal(text: str) -> str:
    return "".join("." if c == "?" else re.escape(c) for c in text)


def glob_regex(pattern: str) -> str:
    """A Matrix glob as a regex for fullmatch that cannot backtrack badly.

    Each run of text between two stars is taken at its leftmost place after the previous one
    and kept there (an atomic group): with only `*` and fixed-width runs that is always the right
    choice, so a hostile pattern like `*a*a*a*a*b` costs linear time, not exponential."""
    parts = pattern.split("*")
    if len(parts) == 1:
        return _literal(pattern)
    middle = "".join(f"(?>.*?{_literal(p)})" for p in parts[1:-1] if p)
    return f"{_literal(parts[0])}{middle}.*{_literal(parts[-1])}"


def _compile(patterns: Any) -> re.Pattern[str]:
    """One regex for a list of globs; entries that are not strings are ignored."""
    globs = [glob_regex(p) for p in patterns if isinstance(p, str)] if isinstance(patterns, list) else []
    if not globs:
        return _NOTHING
    return re.compile("|".join(f"(?:{g})" for g in globs), re.IGNORECASE | re.DOTALL)


def host_of(server_name: str) -> str:
    """The server name without its port (an IPv6 literal keeps its brackets)."""
    if server_name.startswith("["):
        end = server_name.find("]")
        return server_name[:end + 1] if end > 0 else server_name
    return server_name.rsplit(":", 1)[0]


def _is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host[1:-1] if host.startswith("[") else host)
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class ServerAcl:
    """The compiled content of one m.room.server_acl event."""

    allow_ip_literals: bool
    allow: re.Pattern[str]
    deny: re.Pattern[str]

    @classmethod
    def from_content(cls, content: Any) -> "ServerAcl":
        content = content if isinstance(content, dict) else {}
        # Anything but an explicit false counts as true.
        allow_ip_literals = content.get("allow_ip_literals") is not False
        return cls(allow_ip_literals, _compile(content.get("allow", [])), _compile(content.get("deny", [])))

    def allows(self, server_name: str) -> bool:
        host = host_of(server_name).lower()
        if not self.allow_ip_literals and _is_ip_literal(host):
            return False
        if self.deny.fullmatch(host):
            return False
        return self.allow.fullmatch(host) is not None


class ServerAcls:
    """Checks servers against a room's current ACL, for the federation endpoints."""

    def __init__(self, rooms: Rooms) -> None:
        self._rooms = rooms
        self._compiled: OrderedDict[tuple[str, bool], ServerAcl] = OrderedDict()

    async def allows(self, server_name: str, room_id: str) -> bool:
        """Whether the room's current ACL lets `server_name` take part (rooms not held have none)."""
        event_id = (await self._rooms.current_state_ids(room_id)).get(ACL)
        if event_id is None:
            return True
        event = await self._rooms.get_event(event_id)  # the event cache: no query once seen
        # A redacted ACL keeps no content, so it denies everyone (as on every other server).
        redacted = event is None or bool(event.unsigned.get("redacted_by"))
        key = (event_id, redacted)
        acl = self._compiled.get(key)
        if acl is None:
            acl = ServerAcl.from_content({} if event is None or redacted else event.content)
            self._compiled[key] = acl
            while len(self._compiled) > ACL_CACHE_SIZE:
                self._compiled.popitem(last=False)
        else:
            self._compiled.move_to_end(key)
        return acl.allows(server_name)

    async def require_allowed(self, server_name: str, room_id: str) -> None:
        """403 M_FORBIDDEN when the room's ACL denies the server."""
        if not await self.allows(server_name, room_id):
            raise forbidden(f"The server ACL of {room_id} denies {server_name}")
