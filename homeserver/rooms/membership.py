"""Membership changes: join, invite, leave, kick, ban, unban, forget; profile changes into rooms.

A profile change reaches every room the user is joined to as a new member event, sent in the
background one room after another; changes made while a round runs are folded into one more round.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Protocol

from homeserver.errors import MatrixError, bad_json, forbidden, invalid_param, not_found
from homeserver.events.event import Event
from homeserver.events.ids import parse_user_id
from homeserver.rooms.guest_access import GUEST_ACCESS_TYPE, allows_guests, guest_forbidden
from homeserver.rooms.restricted_joins import join_authoriser
from homeserver.rooms.rooms import Rooms
from storage.store import Store

MAX_REASON = 1024
MUTUAL_ROOMS_BATCH = 100  # rooms per answer of GET /mutual_rooms
PROFILE_KEYS = ("displayname", "avatar_url")

log = logging.getLogger("whispr.membership")


def _reason(reason: object) -> dict[str, Any]:
    if reason is None:
        return {}
    if not isinstance(reason, str) or len(reason) > MAX_REASON:
        raise bad_json(f"reason must be a string of at most {MAX_REASON} characters")
    return {"reason": reason}


class RemoteMembership(Protocol):
    """What federation offers for rooms and users on other servers."""

    async def join(self, room_id: str, user_id: str, servers: list[str], content: dict[str, Any]) -> None: ...

    async def knock(self, room_id: str, user_id: str, servers: list[str], content: dict[str, Any]) -> None: ...

    async def countersign_invite(self, event: Event) -> Event: ...

    async def reject_invite(self, room_id: str, user_id: str, inviter_server: str) -> None: ...

    async def resolve_alias(self, alias: str) -> tuple[str, list[str]]: ...


def _server(id_: str) -> str:
    return id_.split(":", 1)[1] if ":" in id_ else ""


class Membership:
    def __init__(self, rooms: Rooms, store: Store) -> None:
        self._rooms = rooms
        self._store = store
        self.remote: RemoteMembership | None = None
        self._profile_rounds: dict[str, asyncio.Task[None]] = {}
        self._profile_again: set[str] = set()

    async def mutual_rooms(self, user_id: str, other: str, batch: str | None) -> dict[str, Any]:
        """GET /mutual_rooms: the rooms both are joined to, MUTUAL_ROOMS_BATCH at a time; `batch`
        is the last room ID of the previous batch."""
        if other == user_id:
            raise invalid_param("user_id must be another user's")
        parse_user_id(other)
        if batch is not None and not batch.startswith("!"):
            raise invalid_param("Invalid from token")
        rooms, total = await self._store.rooms.mutual_rooms(user_id, other, batch or "", MUTUAL_ROOMS_BATCH + 1)
        body: dict[str, Any] = {"joined": rooms[:MUTUAL_ROOMS_BATCH], "count": total}
        if len(rooms) > MUTUAL_ROOMS_BATCH:
            body["next_batch"] = rooms[MUTUAL_ROOMS_BATCH - 1]
        return body

    async def profile_content(self, user_id: str) -> dict[str, Any]:
        profile = await self._store.profiles.get(user_id)
        if profile is None:
            return {}
        out: dict[str, Any] = {}
        if profile.displayname is not None:
            out["displayname"] = profile.displayname
        if profile.avatar_url is not None:
            out["avatar_url"] = profile.avatar_url
        return out

    async def rooms_of(self, user_id: str) -> dict[str, tuple[str, str]]:
        return await self._store.rooms.rooms_for_user(user_id)

    async def resolve_room(self, room_id_or_alias: str) -> tuple[str, list[str]]:
        """A room ID and servers that may know it (from a remote alias)."""
        if room_id_or_alias.startswith("#"):
            found = await self._store.rooms.get_alias(room_id_or_alias)
            if found is not None:
                return found[0], []
            if self.remote is not None and _server(room_id_or_alias) not in ("", self._rooms.server_name):
                return await self.remote.resolve_alias(room_id_or_alias)
            raise not_found("Room alias not found")
        if not room_id_or_alias.startswith("!") or len(room_id_or_alias) < 2:  # v12 IDs have no server part
            raise MatrixError(400, "M_INVALID_PARAM", "not a room ID or alias")
        return room_id_or_alias, []

    async def join(self, room_id_or_alias: str, user_id: str, reason: object = None,
                   via: list[str] | None = None, guest: bool = False) -> str:
        """Join a room; `guest`: the user is a guest, who may join only rooms that let guests in."""
        room_id, servers = await self.resolve_room(room_id_or_alias)
        if await self._store.admin.room_blocked_by(room_id) is not None:
            raise forbidden("This room has been blocked on this server")
        room = await self._rooms.room(room_id)
        if room is None or room.current_group is None:
            if self.remote is None:
                raise not_found("This server does not know that room")
            candidates = [*(via or []), *servers, _server(room_id)]
            member = await self._store.rooms.rooms_for_user(user_id)
            if room_id in member:
                ev = await self._rooms.get_event(member[room_id][1])
                if ev is not None:
                    candidates.insert(0, _server(ev.sender))
            content = {**await self.profile_content(user_id), **_reason(reason)}
            if guest:
                content["kind"] = "guest"
            await self.remote.join(room_id, user_id, [c for c in candidates if c], content)
            await self._store.rooms.unforget(user_id, room_id)
            if guest and not allows_guests(await self._rooms.state_event(room_id, GUEST_ACCESS_TYPE)):
                # Whether another server's room lets guests in shows only in the state its join
                # brought (invites do not carry the setting): out again at once.
                await self.leave(room_id, user_id)
                raise guest_forbidden("This room does not let guests join")
            return room_id
        current = await self._rooms.membership(room_id, user_id)
        if current == "join":
            return room_id
        if current == "ban":
            raise forbidden("You are banned from this room")
        content = {"membership": "join", **await self.profile_content(user_id), **_reason(reason)}
        if guest:
            if not allows_guests(await self._rooms.state_event(room_id, GUEST_ACCESS_TYPE)):
                raise guest_forbidden("This room does not let guests join")
            content["kind"] = "guest"  # as Synapse marks its guests' joins
        authoriser = await join_authoriser(self._rooms, room_id, user_id)
        if authoriser is not None:  # a restricted room: one of our users with the invite level vouches
            content["join_authorised_via_users_server"] = authoriser
        await self._rooms.create_event(room_id, user_id, "m.room.member", content, state_key=user_id)
        await self._store.rooms.unforget(user_id, room_id)
        return room_id

    async def knock(self, room_id_or_alias: str, user_id: str, reason: object = None,
                    via: list[str] | None = None) -> str:
        """Ask to be let into a room whose join rule is knock (room versions 7+): a knock member
        event in a room we hold, else through make_knock/send_knock on a server that holds it."""
        room_id, servers = await self.resolve_room(room_id_or_alias)
        content = {"membership": "knock", **await self.profile_content(user_id), **_reason(reason)}
        room = await self._rooms.room(room_id)
        if room is None or room.current_group is None:
            if self.remote is None:
                raise not_found("This server does not know that room")
            await self.remote.knock(room_id, user_id, [s for s in (*(via or []), *servers, _server(room_id)) if s],
                                    content)
            return room_id
        current = await self._rooms.membership(room_id, user_id)
        if current in ("join", "invite", "ban"):
            raise forbidden(f"You cannot knock: your membership is {current}")
        await self._rooms.create_event(room_id, user_id, "m.room.member", content, state_key=user_id)
        return room_id

    async def invite(self, room_id: str, sender: str, target: object, reason: object = None,
                     is_direct: bool = False, extra: dict[str, Any] | None = None) -> Event:
        """`extra`: more content for the member event (a friend request's marker)."""
        if not isinstance(target, str):
            raise bad_json("user_id must be a string")
        _, server = parse_user_id(target)
        await self._rooms.require_joined(room_id, sender)
        if server == self._rooms.server_name and await self._store.users.get(target) is None:
            raise not_found("Unknown user")
        remote = server != self._rooms.server_name
        if remote and self.remote is None:
            raise MatrixError(400, "M_UNRECOGNIZED", "Inviting users of other servers needs federation")
        current = await self._rooms.membership(room_id, target)
        if current in ("join", "ban"):
            raise forbidden(f"The user is already {'in' if current == 'join' else 'banned from'} the room")
        content: dict[str, Any] = {"membership": "invite", **_reason(reason)}
        if not remote:
            content.update(await self.profile_content(target))
        if is_direct:
            content["is_direct"] = True
        content.update(extra or {})
        return await self._rooms.create_event(
            room_id, sender, "m.room.member", content, state_key=target,
            countersign=self.remote.countersign_invite if remote and self.remote else None)

    async def leave(self, room_id: str, user_id: str, reason: object = None) -> None:
        room = await self._rooms.room(room_id)
        if room is None:
            raise not_found("Unknown room")
        if room.current_group is None:
            # Only invited by another server, or knocking through one: leave through that server.
            member = (await self._store.rooms.rooms_for_user(user_id)).get(room_id)
            invite = await self._rooms.get_event(member[1]) if member else None
            if invite is None or invite.membership not in ("invite", "knock") or self.remote is None:
                raise forbidden("You are not in this room")
            via = invite.unsigned.get("knock_via") if invite.membership == "knock" else _server(invite.sender)
            await self.remote.reject_invite(room_id, user_id, str(via))
            return
        current = await self._rooms.membership(room_id, user_id)
        if current in (None, "leave"):
            if current is None:
                raise forbidden("You are not in this room")
            return
        if current == "ban":
            raise forbidden("You are banned from this room")
        await self._rooms.create_event(room_id, user_id, "m.room.member",
                                       {"membership": "leave", **_reason(reason)}, state_key=user_id)

    async def set_membership(self, room_id: str, sender: str, target: object, membership: str,
                             reason: object = None) -> None:
        """kick (leave), ban and unban (leave) of another user."""
        if not isinstance(target, str):
            raise bad_json("user_id must be a string")
        parse_user_id(target)
        await self._rooms.require_joined(room_id, sender)
        current = await self._rooms.membership(room_id, target)
        if membership == "unban" and current != "ban":
            raise forbidden("The user is not banned")
        if membership == "kick" and current not in ("join", "invite", "knock"):
            raise forbidden("The user is not in the room")
        new = "ban" if membership == "ban" else "leave"
        await self._rooms.create_event(room_id, sender, "m.room.member", {"membership": new, **_reason(reason)},
                                       state_key=target)

    async def set_own_member_profile(self, room_id: str, user_id: str, content: dict[str, Any]) -> str:
        """A per-room display name or avatar: the user's own member event, same membership."""
        current = await self._rooms.state_event(room_id, "m.room.member", user_id)
        if current is None or current.membership != "join" or content.get("membership") != "join":
            raise forbidden("Only your own display name and avatar can be set here, not the membership")
        for key in PROFILE_KEYS:
            if key in content and content[key] is not None and not isinstance(content[key], str):
                raise bad_json(f"{key} must be a string")
        event = await self._rooms.create_event(room_id, user_id, "m.room.member", content, state_key=user_id)
        return event.event_id

    def profile_changed(self, user_id: str) -> None:
        """Start (or fold into the running) round that sends the new profile into the user's rooms."""
        if user_id in self._profile_rounds:
            self._profile_again.add(user_id)
            return
        self._profile_rounds[user_id] = asyncio.create_task(self._profile_round(user_id))

    async def _profile_round(self, user_id: str) -> None:
        try:
            while True:
                self._profile_again.discard(user_id)
                profile = await self.profile_content(user_id)
                for room_id, (membership, _) in (await self.rooms_of(user_id)).items():
                    if membership == "join":
                        await self._update_member_profile(room_id, user_id, profile)
                if user_id not in self._profile_again:
                    return
        finally:
            self._profile_rounds.pop(user_id, None)

    async def _update_member_profile(self, room_id: str, user_id: str, profile: dict[str, Any]) -> None:
        current = await self._rooms.state_event(room_id, "m.room.member", user_id)
        if current is None or current.membership != "join":
            return
        content = {k: v for k, v in current.content.items() if k not in PROFILE_KEYS and k != "reason"}
        content.update(profile)
        if content == current.content:
            return
        try:
            await self._rooms.create_event(room_id, user_id, "m.room.member", content, state_key=user_id)
        except MatrixError as e:  # e.g. the room forbids member changes now: skip it, keep going
            log.info("profile update of %s not sent to %s: %s", user_id, room_id, e)

    async def close(self) -> None:
        tasks = list(self._profile_rounds.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def forget(self, room_id: str, user_id: str) -> None:
        current = await self._rooms.membership(room_id, user_id)
        if current in ("join", "invite", "knock"):
            raise MatrixError(400, "M_UNKNOWN", "Leave the room before forgetting it")
        if current is None:
            raise not_found("You were never in this room")
        await self._store.rooms.forget(user_id, room_id)
