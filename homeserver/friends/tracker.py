"""Keeps each local user's friend links in step with the direct chats' events, local or received.

Every stored event passes here; only member events and the friendship state event matter:
- an invite that is a request (marked, or any direct-chat invite) records it, incoming for a local
  invitee (unless their settings refuse the sender) and outgoing for a local sender;
- the invitee's join turns the pending request into a friendship on every local side;
- a leave (or ban) ends what the pair had in that room: a declined request (the invitee left),
  a cancelled one (someone else took the invite back), or the friendship;
- ``org.whispr.friendship`` with ``ended: true`` from one of the pair ends the friendship.
Each change records friend events for the local users at one stream position and wakes them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from homeserver.clock import now_ms
from homeserver.events.event import Event
from homeserver.friends.markers import (
    EV_ACCEPTED,
    EV_CANCELLED,
    EV_DECLINED,
    EV_REMOVED,
    EV_REQUEST_RECEIVED,
    EV_REQUEST_SENT,
    FRIENDSHIP_TYPE,
    is_request,
    message_of,
)
from homeserver.sync.notifier import Notifier
from storage.friends import FRIENDS, INCOMING, OUTGOING, FriendEvent, FriendLink
from storage.store import Store


def invitee(link: FriendLink) -> str:
    return link.user_id if link.state == INCOMING else link.other_id


class FriendTracker:
    def __init__(self, server_name: str, store: Store, notifier: Notifier,
                 allows: Callable[[str, str], Awaitable[bool]],
                 on_mutual: Callable[[str, FriendLink, str], None]) -> None:
        self._server_name = server_name
        self._store = store
        self._notifier = notifier
        self._allows = allows  # (local invitee, sender) -> may the sender send requests?
        # (local user, their incoming request to accept, their own request's room to take back):
        # starts that in the background (the room's lock may be held here).
        self._on_mutual = on_mutual
        # Each change reads the links, then writes them: changes of friend rooms go one at a time
        # (in this process), so two requests crossing each other in two rooms both see the other.
        self._lock = asyncio.Lock()

    def is_local(self, user_id: str) -> bool:
        return user_id.endswith(":" + self._server_name) and user_id.startswith("@")

    async def observe(self, event: Event) -> None:
        if event.rejected or event.unsigned.get("_soft_failed"):
            return
        if event.type == "m.room.member" and event.state_key:
            membership = event.membership
            if membership == "invite" and is_request(event):
                async with self._lock:
                    await self._invited(event)
            elif membership in ("join", "leave", "ban") and await self._store.friends.links_in_room(event.room_id):
                async with self._lock:
                    await (self._joined(event) if membership == "join" else self._left(event))
        elif event.type == FRIENDSHIP_TYPE and event.state_key == "" and event.content.get("ended") is True:
            async with self._lock:
                await self._ended(event)

    async def _invited(self, ev: Event) -> None:
        target, sender, ts = ev.state_key or "", ev.sender, now_ms()
        message = message_of(ev)
        put: list[FriendLink] = []
        events: list[FriendEvent] = []
        settle: list[tuple[str, FriendLink, str]] = []
        sides = []
        if self.is_local(target) and await self._allows(target, sender):
            sides.append((FriendLink(target, sender, ev.room_id, INCOMING, message, ts), EV_REQUEST_RECEIVED))
        if self.is_local(sender):
            sides.append((FriendLink(sender, target, ev.room_id, OUTGOING, message, ts), EV_REQUEST_SENT))
        for new, kind in sides:
            take, mutual = self._choose(await self._store.friends.link(new.user_id, new.other_id), new)
            if take is new:
                put.append(new)
                events.append(FriendEvent(new.user_id, kind, _content(new.other_id, new.room_id, message=message),
                                          ts))
            if mutual is not None:
                settle.append((new.user_id, *mutual))
        await self._apply(put, [], events)
        for user_id, link, loser in settle:
            self._on_mutual(user_id, link, loser)

    @staticmethod
    def _choose(current: FriendLink | None, new: FriendLink) -> tuple[FriendLink | None,
                                                                      tuple[FriendLink, str] | None]:
        """Which pending request between the two stands: (the link kept, and when both asked each
        other at once in two rooms, (the request this user accepts, the room they take back)).

        Both servers must settle such a race the same way without talking: the room with the smaller
        ID wins; its invitee accepts it and the loser room's inviter takes their invite back."""
        if current is None or current.room_id == new.room_id:
            return new, None
        if current.state == FRIENDS:
            return current, None
        kept, lost = (new, current) if new.room_id < current.room_id else (current, new)
        if kept.state == INCOMING and lost.state == OUTGOING:
            return kept, (kept, lost.room_id)
        return kept, None

    async def _joined(self, ev: Event) -> None:
        target = ev.state_key or ""
        links = [link for link in await self._store.friends.links_in_room(ev.room_id)
                 if link.state != FRIENDS and invitee(link) == target]
        if not links:
            return
        ts = now_ms()
        pairs = {(link.user_id, link.other_id) for link in links}
        pairs |= {(o, u) for u, o in pairs if self.is_local(o)}
        put = [FriendLink(u, o, ev.room_id, FRIENDS, None, ts) for u, o in sorted(pairs)]
        events = [FriendEvent(u, EV_ACCEPTED, _content(o, ev.room_id), ts) for u, o in sorted(pairs)]
        await self._apply(put, [], events)

    async def _left(self, ev: Event) -> None:
        target = ev.state_key or ""
        links = [link for link in await self._store.friends.links_in_room(ev.room_id)
                 if target in (link.user_id, link.other_id)]
        if not links:
            return
        ts = now_ms()
        events = []
        for link in links:
            if link.state == FRIENDS:
                kind = EV_REMOVED
            else:
                kind = EV_DECLINED if ev.sender == invitee(link) == target else EV_CANCELLED
            events.append(FriendEvent(link.user_id, kind, _content(link.other_id, ev.room_id, by=ev.sender), ts))
        await self._apply([], links, events)

    async def _ended(self, ev: Event) -> None:
        links = [link for link in await self._store.friends.links_in_room(ev.room_id)
                 if link.state == FRIENDS and ev.sender in (link.user_id, link.other_id)]
        await self.end(links, ev.sender)

    async def end(self, links: list[FriendLink], by: str) -> None:
        ts = now_ms()
        await self._apply([], links, [FriendEvent(link.user_id, EV_REMOVED,
                                                  _content(link.other_id, link.room_id, by=by), ts)
                                      for link in links])

    async def _apply(self, put: list[FriendLink], drop: list[FriendLink], events: list[FriendEvent]) -> None:
        if not put and not drop:
            return
        stream = await self._store.friends.apply(put, drop, events)
        if stream is not None:
            await self._notifier.notify(stream, None, sorted({e.user_id for e in events}))


def _content(user_id: str, room_id: str, **extra: Any) -> dict[str, Any]:
    return {"user_id": user_id, "room_id": room_id, **{k: v for k, v in extra.items() if v is not None}}
