"""Other servers' space hierarchies (`GET /_matrix/federation/v1/hierarchy/{roomId}`), for walks
that reach rooms this server is not in.

What another server answers goes on only as the spec's fields of the right types: summaries
without a room ID are dropped, and so are children events that are not `m.space.child` with `via`.
"""

from __future__ import annotations

import logging
from functools import partial
from typing import Any
from urllib.parse import quote

from federation.ingest import FederationRequests
from federation.request_auth import is_server_name

log = logging.getLogger("whispr.federation.hierarchy")

q = partial(quote, safe="")
MAX_CHILDREN = 1_000  # children (and child events) kept from one answer
MAX_FIELD_LENGTH = 4_096
MAX_VIA = 20
_STRING_FIELDS = ("name", "topic", "canonical_alias", "avatar_url", "join_rule", "room_type", "encryption",
                  "room_version")
_BOOL_FIELDS = ("world_readable", "guest_can_join")


def _string(value: Any) -> bool:
    return isinstance(value, str) and len(value) <= MAX_FIELD_LENGTH


def _room_id(value: Any) -> bool:
    return _string(value) and value.startswith("!")


def _child_event(raw: Any) -> dict[str, Any] | None:
    if not isinstance(raw, dict) or raw.get("type") != "m.space.child" or not _room_id(raw.get("state_key")) \
            or not _string(raw.get("sender")) or not isinstance(raw.get("content"), dict):
        return None
    ts = raw.get("origin_server_ts")
    via = raw["content"].get("via")
    if not isinstance(via, list) or not via or not all(_string(s) for s in via):
        return None
    content: dict[str, Any] = {"via": via[:MAX_VIA]}
    if _string(raw["content"].get("order")):
        content["order"] = raw["content"]["order"]
    if isinstance(raw["content"].get("suggested"), bool):
        content["suggested"] = raw["content"]["suggested"]
    return {"type": "m.space.child", "state_key": raw["state_key"], "sender": raw["sender"], "content": content,
            "origin_server_ts": ts if isinstance(ts, int) and not isinstance(ts, bool) else 0}


def summary_entry(raw: Any) -> dict[str, Any] | None:
    """A RoomSummary (with its children_state) from another server, or None without a room ID."""
    if not isinstance(raw, dict) or not _room_id(raw.get("room_id")):
        return None
    entry: dict[str, Any] = {"room_id": raw["room_id"]}
    entry.update({k: raw[k] for k in _STRING_FIELDS if _string(raw.get(k))})
    entry.update({k: raw.get(k) is True for k in _BOOL_FIELDS})
    members = raw.get("num_joined_members")
    entry["num_joined_members"] = members if isinstance(members, int) and not isinstance(members, bool) \
        and members >= 0 else 0
    entry.setdefault("join_rule", "invite")
    allowed = raw.get("allowed_room_ids")
    if isinstance(allowed, list):
        entry["allowed_room_ids"] = [r for r in allowed[:MAX_CHILDREN] if _room_id(r)]
    events = raw.get("children_state")
    entry["children_state"] = [e for e in map(_child_event, events[:MAX_CHILDREN]) if e is not None] \
        if isinstance(events, list) else []
    return entry


def sanitised(body: Any) -> dict[str, Any] | None:
    if not isinstance(body, dict):
        return None
    room = summary_entry(body.get("room"))
    if room is None:
        return None
    raw_children = body.get("children")
    children = [c for c in map(summary_entry, raw_children[:MAX_CHILDREN]) if c is not None] \
        if isinstance(raw_children, list) else []
    raw_inaccessible = body.get("inaccessible_children")
    inaccessible = [r for r in raw_inaccessible[:MAX_CHILDREN] if _room_id(r)] \
        if isinstance(raw_inaccessible, list) else []
    return {"room": room, "children": children, "inaccessible_children": inaccessible}


async def remote_hierarchy(client: FederationRequests, servers: list[str], room_id: str,
                           suggested_only: bool) -> dict[str, Any] | None:
    """The first usable answer of `servers` (those that are server names), in order; None when none gives one."""
    for server in [s for s in servers if is_server_name(s)][:MAX_VIA]:
        try:
            body = await client.get_json(server, f"/_matrix/federation/v1/hierarchy/{q(room_id)}",
                                         {"suggested_only": "true" if suggested_only else "false"})
        except Exception as e:
            log.info("no hierarchy of %s from %s: %s", room_id, server, e)
            continue
        answer = sanitised(body)
        if answer is not None:
            return answer
        log.info("%s answered a malformed hierarchy of %s", server, room_id)
    return None
