"""Presence over federation: `m.presence` EDUs out to the servers sharing a room with our users,
one EDU per destination for each batch of changes; in, only for the origin's own users who share
a room with one of ours."""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from typing import Any

from federation.ingest import server_of
from federation.sender import FederationSender
from homeserver.clock import now_ms
from homeserver.events.event import Event
from homeserver.presence.presence import MAX_STATUS_MSG, OFFLINE, STATES, Presence, UserPresence
from storage.store import Store

log = logging.getLogger("whispr.federation.presence")

MAX_PUSH = 500  # presence updates taken from one EDU
# A server that joined one of our rooms may still be storing the room when our answer to its
# send_join arrives; presence sent at once would find it sharing no room with us, and be dropped.
JOIN_DELAY_S = 2.0


class FederationPresence:
    def __init__(self, server_name: str, store: Store, presence: Presence, sender: FederationSender) -> None:
        self._server_name = server_name
        self._store = store
        self._presence = presence
        self._sender = sender
        self._tasks: set[asyncio.Task[None]] = set()
        presence.on_local_change.append(self.send)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def member_event(self, event: Event) -> None:
        """A `Rooms.on_event` hook: on a join, the joining user's server hears of our users' presence in
        the room, or, when the joiner is ours, the room's other servers hear of theirs (as Synapse does),
        so that nobody reads offline until the next change. Done aside: the hook holds the room."""
        if (event.type != "m.room.member" or event.membership != "join" or not event.state_key
                or not self._presence.enabled):
            return
        task = asyncio.create_task(self._joined(event.room_id, event.state_key))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _joined(self, room_id: str, user_id: str) -> None:
        now = now_ms()
        server = server_of(user_id)
        try:
            if server == self._server_name:
                state = self._presence.get(user_id)
                servers = await self._store.rooms.room_servers(room_id) - {self._server_name}
                if state.state != OFFLINE and servers:
                    await self._sender.send_edu(servers, "m.presence", {"push": [_push_item(state, now)]})
                return
            await asyncio.sleep(JOIN_DELAY_S)
            members = await self._store.rooms.members(room_id, "join")
            if sum(1 for u in members if server_of(u) == server) > 1:
                return  # that server was in the room already and knows
            states = [self._presence.get(u) for u in members if server_of(u) == self._server_name]
            push = [_push_item(p, now) for p in states if p.state != OFFLINE]
            if push:
                await self._sender.send_edu([server], "m.presence", {"push": push})
        except Exception:
            log.exception("telling servers of presence after a join in %s failed", room_id)

    async def send(self, batch: list[UserPresence]) -> None:
        """Queue each destination one EDU with the updates of the users it shares a room with."""
        now = now_ms()
        by_destination: dict[str, list[str]] = defaultdict(list)
        for p in batch:
            servers = {server_of(u) for u in await self._store.presence.users_sharing_rooms(p.user_id)}
            for server in servers - {self._server_name}:
                by_destination[server].append(p.user_id)
        states = {p.user_id: p for p in batch}
        # Destinations hearing of the same users share one queued body.
        by_users: dict[tuple[str, ...], list[str]] = defaultdict(list)
        for destination, users in by_destination.items():
            by_users[tuple(users)].append(destination)
        for group, destinations in by_users.items():
            push = [_push_item(states[u], now) for u in group]
            await self._sender.send_edu(destinations, "m.presence", {"push": push})

    async def receive(self, origin: str, content: dict[str, Any]) -> None:
        push = content.get("push")
        if not isinstance(push, list):
            return
        updates: list[UserPresence] = []
        now = now_ms()
        for item in push[:MAX_PUSH]:
            update = _parse_item(item, now)
            if update is None:
                log.info("ignoring a malformed presence update from %s", origin)
                continue
            if server_of(update.user_id) != origin:
                log.warning("%s sent presence for %s, not one of its users: ignored", origin, update.user_id)
                continue
            if not await self._store.presence.shares_room_with_server(update.user_id, self._server_name):
                log.info("ignoring presence from %s for %s, who shares no room with us", origin, update.user_id)
                continue
            updates.append(update)
        if updates:
            await self._presence.received(updates)


def _push_item(p: UserPresence, now: int) -> dict[str, Any]:
    item: dict[str, Any] = {"user_id": p.user_id, "presence": p.state,
                            "last_active_ago": max(0, now - p.last_active_ts) if p.last_active_ts else 0,
                            "currently_active": p.currently_active}
    if p.status_msg is not None:
        item["status_msg"] = p.status_msg
    return item


def _parse_item(item: Any, now: int) -> UserPresence | None:
    if not isinstance(item, dict):
        return None
    user_id, state = item.get("user_id"), item.get("presence")
    if not isinstance(user_id, str) or not user_id.startswith("@") or ":" not in user_id or state not in STATES:
        return None
    ago = item.get("last_active_ago", 0)
    if isinstance(ago, bool) or not isinstance(ago, int) or ago < 0:
        ago = 0
    status_msg = item.get("status_msg")
    if not isinstance(status_msg, str) or not status_msg:
        status_msg = None
    elif len(status_msg) > MAX_STATUS_MSG:
        status_msg = status_msg[:MAX_STATUS_MSG]
    active = item.get("currently_active") is True and state == "online"
    return UserPresence(user_id, str(state), status_msg, now - min(ago, now), active)
