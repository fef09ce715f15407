"""createRoom: presets, initial state, invites, alias and directory visibility."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from homeserver.errors import MatrixError, bad_json
from homeserver.events.ids import parse_user_id
from homeserver.rooms.membership import Membership
from homeserver.events.room_versions import KNOWN_ROOM_VERSIONS, RoomVersion, get_room_version
from homeserver.rooms.rooms import Rooms
from storage.store import Store

PRESETS = ("private_chat", "public_chat", "trusted_private_chat")


@dataclass(frozen=True)
class RoomRequest:
    """A validated createRoom body."""

    preset: str
    visibility: str
    version: RoomVersion
    name: str | None
    topic: str | None
    alias_localpart: str | None
    invite: list[str]
    is_direct: bool
    creation_content: dict[str, Any]
    initial_state: list[dict[str, Any]]
    power_level_override: dict[str, Any]


def parse_request(body: dict[str, Any], default_version: str) -> RoomRequest:
    visibility = body.get("visibility", "private")
    if visibility not in ("public", "private"):
        raise bad_json("visibility must be public or private")
    preset = body.get("preset", "public_chat" if visibility == "public" else "private_chat")
    if preset not in PRESETS:
        raise bad_json(f"preset must be one of {', '.join(PRESETS)}")
    version_id = body.get("room_version", default_version)
    version = get_room_version(version_id) if isinstance(version_id, str) else None
    if version is None:
        raise MatrixError(400, "M_UNSUPPORTED_ROOM_VERSION", f"room version {version_id!r} is not supported; "
                          f"try one of {', '.join(KNOWN_ROOM_VERSIONS)}")
    for key in ("name", "topic", "room_alias_name"):
        if key in body and not isinstance(body[key], str):
            raise bad_json(f"{key} must be a string")
    invite = body.get("invite", [])
    if not isinstance(invite, list) or not all(isinstance(u, str) for u in invite):
        raise bad_json("invite must be a list of user IDs")
    for user_id in invite:
        parse_user_id(user_id)
    initial_state = body.get("initial_state", [])
    if not isinstance(initial_state, list) or not all(
            isinstance(s, dict) and isinstance(s.get("type"), str) and isinstance(s.get("content"), dict)
            and isinstance(s.get("state_key", ""), str) for s in initial_state):
        raise bad_json("initial_state must be a list of {type, state_key, content}")
    creation_content = body.get("creation_content", {})
    override = body.get("power_level_content_override", {})
    if not isinstance(creation_content, dict) or not isinstance(override, dict):
        raise bad_json("creation_content and power_level_content_override must be objects")
    alias = body.get("room_alias_name")
    if alias is not None and (not alias or any(c in alias for c in ":# \t\n")):
        raise bad_json("room_alias_name must be a non-empty localpart without ':', '#' or spaces")
    is_direct = body.get("is_direct", False)
    if not isinstance(is_direct, bool):
        raise bad_json("is_direct must be a boolean")
    return RoomRequest(preset, visibility, version, body.get("name"), body.get("topic"), alias, invite,
                       is_direct, creation_content, initial_state, override)


def default_power_levels(creator: str, req: RoomRequest) -> dict[str, Any]:
    # v12: creators have infinite power and must not be listed in `users`.
    users = {} if req.version.creators_have_infinite_power else {creator: 100}
    if req.preset == "trusted_private_chat":
        users.update({u: 100 for u in req.invite})
    levels: dict[str, Any] = {
        "users": users, "users_default": 0,
        "events": {"m.room.name": 50, "m.room.power_levels": 100, "m.room.history_visibility": 100,
                   "m.room.canonical_alias": 50, "m.room.avatar": 50, "m.room.tombstone": 100,
                   "m.room.server_acl": 100, "m.room.encryption": 100, "m.room.topic": 50},
        "events_default": 0, "state_default": 50, "ban": 50, "kick": 50, "redact": 50, "invite": 0,
        "historical": 100, "notifications": {"room": 50},
    }
    for key, value in req.power_level_override.items():
        levels[key] = value
    return levels


class RoomCreator:
    def __init__(self, rooms: Rooms, membership: Membership, store: Store, default_version: str) -> None:
        self._rooms = rooms
        self._membership = membership
        self._store = store
        self.default_version = default_version

    async def create(self, creator: str, body: dict[str, Any]) -> tuple[str, RoomRequest]:
        req = parse_request(body, self.default_version)
        server = self._rooms.server_name
        alias = f"#{req.alias_localpart}:{server}" if req.alias_localpart else None
        if alias is not None and await self._store.rooms.get_alias(alias) is not None:
            raise MatrixError(400, "M_ROOM_IN_USE", "That room alias is already taken")
        for user_id in req.invite:
            if user_id.endswith(":" + server) and await self._store.users.get(user_id) is None:
                raise MatrixError(404, "M_NOT_FOUND", f"Unknown user {user_id}")

        create_content = {k: v for k, v in req.creation_content.items() if k not in ("room_version", "creator")}
        create_content["room_version"] = req.version.identifier
        if req.version.creator_in_create_content:
            create_content["creator"] = creator
        create = await self._rooms.create_room_event(req.version, creator, create_content,
                                                     req.visibility == "public")
        room_id = create.room_id
        send = self._rooms.create_event
        await send(room_id, creator, "m.room.member",
                   {"membership": "join", **await self._membership.profile_content(creator)}, state_key=creator)
        await send(room_id, creator, "m.room.power_levels", default_power_levels(creator, req), state_key="")
        if alias is not None:
            if not await self._store.rooms.create_alias(alias, room_id, creator):
                raise MatrixError(400, "M_ROOM_IN_USE", "That room alias is already taken")
            await send(room_id, creator, "m.room.canonical_alias", {"alias": alias}, state_key="")
        join_rule = "public" if req.preset == "public_chat" else "invite"
        await send(room_id, creator, "m.room.join_rules", {"join_rule": join_rule}, state_key="")
        await send(room_id, creator, "m.room.history_visibility", {"history_visibility": "shared"}, state_key="")
        if req.preset != "public_chat":
            await send(room_id, creator, "m.room.guest_access", {"guest_access": "can_join"}, state_key="")
        for item in req.initial_state:
            await send(room_id, creator, item["type"], item["content"], state_key=item.get("state_key", ""))
        if req.name is not None:
            await send(room_id, creator, "m.room.name", {"name": req.name}, state_key="")
        if req.topic is not None:
            await send(room_id, creator, "m.room.topic", {"topic": req.topic}, state_key="")
        for user_id in req.invite:
            await self._membership.invite(room_id, creator, user_id, is_direct=req.is_direct)
        return room_id, req
