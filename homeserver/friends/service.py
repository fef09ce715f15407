"""Friends on top of direct chats: send, accept, decline, cancel, remove, list; who may ask.

Every step is a room operation that Matrix servers already exchange (createRoom + invite, join,
leave, a state event); the tracker turns the resulting events into each local user's friend
links, whichever server they came from. A step that fails leaves nothing behind: a request whose
invite cannot be delivered leaves (and forgets) the room it created.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from homeserver.accounts.profiles import BIO_FIELD, Profiles
from homeserver.clock import now_ms
from homeserver.errors import MatrixError, bad_json, forbidden, not_found
from homeserver.friends.markers import (
    ALLOW_ANYONE,
    ALLOW_CHOICES,
    ALLOW_FRIENDS_OF_FRIENDS,
    ALLOW_NOBODY,
    FRIENDSHIP_TYPE,
    SETTINGS_TYPE,
    check_message,
    check_user_id,
    request_marker,
)
from homeserver.friends.tracker import FriendTracker
from homeserver.rooms.chats import Chats
from homeserver.rooms.membership import Membership
from homeserver.rooms.room_data import RoomData
from homeserver.rooms.rooms import Rooms
from homeserver.sync.ignored import IgnoredUsers
from homeserver.sync.notifier import Notifier
from storage.friends import FRIENDS, INCOMING, OUTGOING, FriendLink
from storage.store import Store

log = logging.getLogger("whispr.friends")

# A friend's profile comes from their server; a slow one must not hold the whole list up.
PROFILE_TIMEOUT_S = 3.0
# Crossed requests: how often, and after how long (doubling), joining the winning room is tried.
SETTLE_ATTEMPTS = 5
SETTLE_RETRY_S = 0.5
# The direct chat of a request: private, both may set state (the friendship event).
REQUEST_ROOM = {"preset": "trusted_private_chat", "is_direct": True,
                "power_level_content_override": {"state_default": 0}}


class Friends:
    def __init__(self, server_name: str, store: Store, notifier: Notifier, rooms: Rooms, membership: Membership,
                 chats: Chats, room_data: RoomData, profiles: Profiles, ignored: IgnoredUsers) -> None:
        self._server_name = server_name
        self._store = store
        self._rooms = rooms
        self._membership = membership
        self._chats = chats
        self._room_data = room_data
        self._profiles = profiles
        self._ignored = ignored
        self.tracker = FriendTracker(server_name, store, notifier, self.allows, self._settle_in_background)
        rooms.on_event.append(self.tracker.observe)
        # One request at a time per user, so a repeated request finds the first one's room.
        self._locks: dict[str, asyncio.Lock] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # --- settings ----------------------------------------------------------------------

    async def settings(self, user_id: str) -> dict[str, Any]:
        content = await self._store.user_data.get_account_data(user_id, "", SETTINGS_TYPE) or {}
        allow = content.get("allow_requests")
        return {"allow_requests": allow if allow in ALLOW_CHOICES else ALLOW_ANYONE}

    async def set_settings(self, user_id: str, body: dict[str, Any]) -> None:
        allow = body.get("allow_requests")
        if allow not in ALLOW_CHOICES:
            raise bad_json(f"allow_requests must be one of {', '.join(ALLOW_CHOICES)}")
        await self._room_data.set_account_data(user_id, user_id, "", SETTINGS_TYPE, {"allow_requests": allow})

    async def allows(self, user_id: str, sender: str) -> bool:
        """Whether `sender` may send `user_id` (local) a friend request."""
        allow = (await self.settings(user_id))["allow_requests"]
        if allow == ALLOW_NOBODY:
            return False
        if allow == ALLOW_FRIENDS_OF_FRIENDS:
            return await self._store.friends.share_a_friend(user_id, sender)
        return True

    async def check_remote_request(self, target: str, sender: str) -> None:
        """A request from another server: 403 when the invitee's settings refuse the sender."""
        if not await self.allows(target, sender):
            raise forbidden("This user does not accept friend requests from you")

    # --- the steps ---------------------------------------------------------------------

    def _lock(self, user_id: str) -> asyncio.Lock:
        lock = self._locks.get(user_id)
        if lock is None:
            lock = self._locks[user_id] = asyncio.Lock()
        return lock

    async def request(self, user_id: str, target: object, message: object) -> dict[str, Any]:
        target = check_user_id(target)
        message = check_message(message)
        if target == user_id:
            raise MatrixError(400, "M_INVALID_PARAM", "You cannot send yourself a friend request")
        async with self._lock(user_id):
            link = await self._store.friends.link(user_id, target)
            if link is not None and link.state == FRIENDS:
                return {"status": "friends", "room_id": link.room_id}
            if link is not None and link.state == OUTGOING:
                return {"status": "pending", "room_id": link.room_id}  # the same request again
            if link is not None and link.state == INCOMING:
                return await self._accept(user_id, link)  # they asked first: both want it
            await self._check_target(user_id, target)
            room_id = await self._chats.create(user_id, REQUEST_ROOM)
            try:
                await self._membership.invite(room_id, user_id, target, is_direct=True,
                                              extra=request_marker(message))
            except Exception:
                await self._abandon(room_id, user_id)
                raise
            await self._room_data.add_direct_room(user_id, target, room_id)
        return {"status": "pending", "room_id": room_id}

    async def _check_target(self, user_id: str, target: str) -> None:
        """The target exists (asking their server when remote) and accepts requests from the user."""
        if self.tracker.is_local(target):
            user = await self._store.users.get(target)
            if user is None or user.deactivated:
                raise not_found("Unknown user")
            if not await self.allows(target, user_id):
                raise forbidden("This user does not accept friend requests from you")
            return
        if self._membership.remote is None:
            raise forbidden("This server does not federate: users of other servers cannot be reached")
        try:
            await self._profiles.get(target)
        except MatrixError as e:
            if e.status == 404:
                raise not_found("Unknown user") from None
            raise MatrixError(502, "M_UNKNOWN", f"The user's server cannot be reached: {e.error}") from None

    async def _abandon(self, room_id: str, user_id: str) -> None:
        try:
            await self._membership.leave(room_id, user_id)
            await self._membership.forget(room_id, user_id)
        except MatrixError as e:
            log.warning("could not leave the abandoned request room %s: %s", room_id, e)

    async def accept(self, user_id: str, other: object) -> dict[str, Any]:
        other = check_user_id(other)
        link = await self._store.friends.link(user_id, other)
        if link is None or link.state != INCOMING or other in await self._ignored.of(user_id):
            raise not_found("No friend request from that user")
        return await self._accept(user_id, link)

    async def _accept(self, user_id: str, link: FriendLink) -> dict[str, Any]:
        await self._chats.join(link.room_id, user_id)
        try:  # the friendship as room state, where the room lets us set it (not in a foreign client's DM)
            await self._rooms.create_event(link.room_id, user_id, FRIENDSHIP_TYPE,
                                           {"users": sorted([user_id, link.other_id]), "since": now_ms()},
                                           state_key="")
        except MatrixError as e:
            log.info("no friendship state in %s: %s", link.room_id, e.error)
        return {"status": "friends", "room_id": link.room_id}

    def _settle_in_background(self, user_id: str, link: FriendLink, loser_room: str) -> None:
        task = asyncio.create_task(self._settle(user_id, link, loser_room))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _settle(self, user_id: str, link: FriendLink, loser_room: str) -> None:
        """Both asked each other at once: accept theirs, take ours back.

        Their invite may reach us before their server stored it (it waits for our signature), so
        joining is tried again a few times before giving up."""
        try:
            for attempt in range(SETTLE_ATTEMPTS):
                try:
                    await self._accept(user_id, link)
                    break
                except MatrixError as e:
                    if attempt == SETTLE_ATTEMPTS - 1:
                        raise
                    log.info("accepting the crossed request of %s failed (%s); trying again", link.other_id, e)
                    await asyncio.sleep(SETTLE_RETRY_S * 2**attempt)
            await self._membership.set_membership(loser_room, user_id, link.other_id, "kick")
            await self._abandon(loser_room, user_id)
        except Exception:  # a background task: nobody else would hear of it
            log.exception("could not settle the crossed requests of %s and %s", user_id, link.other_id)

    async def decline(self, user_id: str, other: object) -> None:
        other = check_user_id(other)
        link = await self._store.friends.link(user_id, other)
        if link is None or link.state != INCOMING:
            raise not_found("No friend request from that user")
        await self._membership.leave(link.room_id, user_id)

    async def cancel(self, user_id: str, other: object) -> None:
        other = check_user_id(other)
        link = await self._store.friends.link(user_id, other)
        if link is None or link.state != OUTGOING:
            raise not_found("No friend request to that user")
        await self._membership.set_membership(link.room_id, user_id, other, "kick")
        await self._abandon(link.room_id, user_id)

    async def remove(self, user_id: str, other: object) -> None:
        """End the friendship; the direct chat stays (and readable) until someone leaves it."""
        other = check_user_id(other)
        link = await self._store.friends.link(user_id, other)
        if link is None or link.state != FRIENDS:
            raise not_found("That user is not your friend")
        try:
            await self._rooms.create_event(link.room_id, user_id, FRIENDSHIP_TYPE,
                                           {"users": sorted([user_id, other]), "ended": True}, state_key="")
        except MatrixError as e:  # a room where we may not set it: the friendship ends here only
            log.info("no friendship state in %s: %s", link.room_id, e.error)
        still = [await self._store.friends.link(user_id, other), await self._store.friends.link(other, user_id)]
        left = [x for x in still if x is not None and x.state == FRIENDS and x.room_id == link.room_id]
        if left:
            await self.tracker.end(left, user_id)

    # --- lists -------------------------------------------------------------------------

    async def requests(self, user_id: str) -> dict[str, Any]:
        ignored = await self._ignored.of(user_id)

        def shown(link: FriendLink) -> dict[str, Any]:
            out: dict[str, Any] = {"user_id": link.other_id, "room_id": link.room_id, "ts": link.since_ts}
            if link.message is not None:
                out["message"] = link.message
            return out

        incoming = [shown(x) for x in await self._store.friends.links(user_id, INCOMING) if x.other_id not in ignored]
        outgoing = [shown(x) for x in await self._store.friends.links(user_id, OUTGOING)]
        return {"incoming": incoming, "outgoing": outgoing}

    async def friends(self, user_id: str) -> list[dict[str, Any]]:
        links = await self._store.friends.links(user_id, FRIENDS)
        profiles = await asyncio.gather(*(self._profile(x) for x in links))
        return [{"user_id": x.other_id, "displayname": p.get("displayname"), "avatar_url": p.get("avatar_url"),
                 "bio": p.get(BIO_FIELD), "since": x.since_ts, "room_id": x.room_id}
                for x, p in zip(links, profiles)]

    async def _profile(self, link: FriendLink) -> dict[str, Any]:
        """Their profile; else (their server slow or gone) what their member event in the chat says."""
        try:
            found = await asyncio.wait_for(self._profiles.get(link.other_id), PROFILE_TIMEOUT_S)
            return {k: v for k, v in found.items() if isinstance(v, str)}
        except (TimeoutError, MatrixError):
            member = await self._rooms.state_event(link.room_id, "m.room.member", link.other_id)
            content = member.content if member is not None else {}
            return {k: content[k] for k in ("displayname", "avatar_url") if isinstance(content.get(k), str)}
