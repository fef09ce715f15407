"""Other servers' published room directories, for our clients exploring them (`/publicRooms?server=`).

What another server answers reaches our clients only as the spec's fields of the right types:
entries without a room ID are dropped, and so are fields of any other type or name.
"""

from __future__ import annotations

import logging
from typing import Any

from federation.client import FederationError
from federation.ingest import FederationRequests
from federation.request_auth import is_server_name
from homeserver.errors import MatrixError, invalid_param, not_found

log = logging.getLogger("whispr.federation.public_rooms")

MAX_REMOTE_ROOMS = 1_000  # entries kept from one answer
MAX_FIELD_LENGTH = 4_096
_STRING_FIELDS = ("room_id", "name", "topic", "canonical_alias", "avatar_url", "join_rule", "room_type")
_BOOL_FIELDS = ("world_readable", "guest_can_join")


def _entry(raw: Any) -> dict[str, Any] | None:
    if not isinstance(raw, dict) or not isinstance(raw.get("room_id"), str) or not raw["room_id"].startswith("!"):
        return None
    entry: dict[str, Any] = {k: raw[k] for k in _STRING_FIELDS
                             if isinstance(raw.get(k), str) and len(raw[k]) <= MAX_FIELD_LENGTH}
    entry.update({k: raw[k] for k in _BOOL_FIELDS if isinstance(raw.get(k), bool)})
    members = raw.get("num_joined_members")
    entry["num_joined_members"] = members if isinstance(members, int) and not isinstance(members, bool) \
        and members >= 0 else 0
    entry.setdefault("world_readable", False)
    entry.setdefault("guest_can_join", False)
    return entry


def sanitised(body: Any) -> dict[str, Any]:
    """The part of another server's /publicRooms answer that is what the spec says it is."""
    if not isinstance(body, dict) or not isinstance(body.get("chunk"), list):
        raise MatrixError(502, "M_UNKNOWN", "The server answered with a malformed room directory")
    chunk = [e for e in map(_entry, body["chunk"][:MAX_REMOTE_ROOMS]) if e is not None]
    answer: dict[str, Any] = {"chunk": chunk}
    for key in ("next_batch", "prev_batch"):
        if isinstance(body.get(key), str) and len(body[key]) <= MAX_FIELD_LENGTH:
            answer[key] = body[key]
    total = body.get("total_room_count_estimate")
    if isinstance(total, int) and not isinstance(total, bool) and total >= 0:
        answer["total_room_count_estimate"] = total
    return answer


async def remote_public_rooms(client: FederationRequests, server: str, query: dict[str, Any]) -> dict[str, Any]:
    """POST /publicRooms on `server` with the client's parameters; its errors become 404 or 502."""
    if not is_server_name(server):
        raise invalid_param("server must be a server name")
    try:
        body = await client.post_json(server, "/_matrix/federation/v1/publicRooms", query)
    except FederationError as e:
        if e.status == 404:
            raise not_found(f"{server} has no room directory to show") from None
        raise MatrixError(502, "M_UNKNOWN", f"{server} refused to list its rooms: {e}") from None
    except Exception as e:
        log.info("could not list the rooms of %s: %s", server, e)
        raise MatrixError(502, "M_UNKNOWN", f"Could not ask {server} for its rooms: {e}") from None
    return sanitised(body)
