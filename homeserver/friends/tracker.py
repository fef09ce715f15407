"""Keeps each local user's friend links in step with the direct chats' events, local or received.

Every stored event passes here; only member events and the friendship state event matter:
- an invite that is a request records it (incoming for a local invitee, outgoing for a local
  sender of a marked request), unless the invitee's settings refuse the sender;
- the invitee's join turns the pending request into a friendship on every local side;
- a leave (or ban) ends what the pair had in that room: a declined request (the invitee left),
  a cancelled one (someone else took the invite back), or the friendship;
- ``org.whispr.friendship`` with ``ended: true`` from one of the pair ends the friendship.
Each change records friend events for the local users at one stream position and wakes them.
"""

from __future__ import annotations

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
    is_marked,
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
                 allows: Callable[[str, str], Awaitable[bool]]) -> None:
        self._server_name = server_name
        self._store = store
        self._notifier = notifier
        self._allows = allows  # (local invitee, sender) -> may the sender send requests?

    def is_local(self, user_id: str) -> bool:
        return user_id.endswith(":" + self._server_name) and user_id.startswith("@")

    async def observe(self, event: Event) -> None:
        if event.rejected or event.unsigned.get("_soft_failed"):
            return
        if event.type == "m.room.member" and event.state_key:
            membership = event.membership
            if membership == "invite":
                await self._invited(event)
            elif membership == "join":
                await self._joined(event)
            elif membership in ("leave", "ban"):
                await self._left(event)
        elif event.type == FRIENDSHIP_TYPE and event.state_key == "" and event.content.get("ended") is True:
            await self._ended(event)

    async def _invited(self, ev: Event) -> None:
        if not is_request(ev):
            return
        target, sender, ts = ev.state_key or "", ev.sender, now_ms()
        message = message_of(ev)
        put: list[FriendLink] = []
        events: list[FriendEvent] = []
        if self.is_local(target) and await self._pending_ok(target, sender) and await self._allows(target, sender):
            put.append(FriendLink(target, sender, ev.room_id, INCOMING, message, ts))
            events.append(FriendEvent(target, EV_REQUEST_RECEIVED, _content(sender, ev.room_id, message=message), ts))
        if self.is_local(sender) and is_marked(ev) and await self._pending_ok(sender, target):
            put.append(FriendLink(sender, target, ev.room_id, OUTGOING, message, ts))
            events.append(FriendEvent(sender, EV_REQUEST_SENT, _content(target, ev.room_id, message=message), ts))
        await self._apply(put, [], events)

    async def _pending_ok(self, user_id: str, other_id: str) -> bool:
        """A new request between the two replaces anything but a friendship."""
        current = await self._store.friends.link(user_id, other_id)
        return current is None or current.state != FRIENDS

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
