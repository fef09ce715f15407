"""Presence: whether each user is online, idle (`unavailable`) or offline, with a status message.

The live state of every user we know of is kept in memory and replicated to the other processes
through the notifier, as typing is; every change is also written to the database, so a restart
keeps states and status messages. A change clients should hear of (state, status message,
`currently_active`) takes a new presence serial, the millisecond time as typing's, which sync
tokens carry; activity within the same state (syncing, sending) is only noted, so that /sync and
send cost a dictionary lookup. Local users go idle after `idle_timeout_ms` without activity and
offline `sync_timeout_ms` after their last sync ended; remote users are as their server says.
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from typing import Any, AsyncIterator, Awaitable, Callable

from homeserver.clock import now_ms
from homeserver.config import PresenceConfig
from homeserver.errors import MatrixError, forbidden, not_found
from homeserver.events.event import Event
from homeserver.sync.notifier import Notifier
from storage.friends import FRIENDS
from storage.presence import PresenceRow
from storage.store import Store

log = logging.getLogger("whispr.presence")

ONLINE, UNAVAILABLE, OFFLINE = "online", "unavailable", "offline"
STATES = (ONLINE, UNAVAILABLE, OFFLINE)
MAX_STATUS_MSG = 1024
# Activity within this of the last one is not replicated, and is what `currently_active` means.
LAST_ACTIVE_GRANULARITY_MS = 60_000
# Longest gap between the "still syncing" notes a process sends the others (shorter with a short timeout).
SYNC_HEARTBEAT_MS = 10_000
# A remote user not heard of for this long is taken as offline; ours are re-sent before that (Synapse's
# figures, so each side keeps the other's users online).
REMOTE_TIMEOUT_MS = 30 * 60_000
FEDERATION_PING_MS = 25 * 60_000
# Local changes are gathered this long before they go to other servers, one EDU per destination.
FEDERATION_FLUSH_S = 0.2
# Changes a sync reads at most; older ones are then left out (presence is best effort).
MAX_CHANGES_PER_SYNC = 1000
# Timeouts stored and announced together at most.
TIMEOUT_BATCH = 500


def presence_key(key: str) -> str:
    """The notifier key under which a sync that takes presence waits for a room's or user's changes."""
    return "presence|" + key


@dataclass(frozen=True, slots=True)
class UserPresence:
    user_id: str
    state: str = OFFLINE
    status_msg: str | None = None
    last_active_ts: int = 0
    currently_active: bool = False

    def content(self, now: int) -> dict[str, Any]:
        """The `m.presence` content (and GET /presence answer)."""
        body: dict[str, Any] = {"presence": self.state}
        if self.last_active_ts:
            body["last_active_ago"] = max(0, now - self.last_active_ts)
        if self.status_msg is not None:
            body["status_msg"] = self.status_msg
        if self.state != OFFLINE:
            body["currently_active"] = self.currently_active
        return body

    def notable_change(self, other: "UserPresence") -> bool:
        """Whether going from self to other is news for clients and servers."""
        return (self.state != other.state or self.status_msg != other.status_msg
                or self.currently_active != other.currently_active)


def valid_status_msg(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > MAX_STATUS_MSG:
        raise MatrixError(400, "M_INVALID_PARAM", f"status_msg must be a string of at most {MAX_STATUS_MSG} "
                                                  "characters")
    return value


class Presence:
    def __init__(self, server_name: str, config: PresenceConfig, store: Store, notifier: Notifier) -> None:
        self.enabled = config.enabled
        self._server_name = server_name
        self._idle_ms = config.idle_timeout_ms
        self._sync_timeout_ms = config.sync_timeout_ms
        self._heartbeat_ms = min(SYNC_HEARTBEAT_MS, max(config.sync_timeout_ms // 3, 1))
        self._store = store
        self._notifier = notifier
        self._states: dict[str, UserPresence] = {}
        self._not_offline: set[str] = set()  # what the timeouts look at
        # user -> serial of their last notable change, in serial order (a user moves to the end).
        self._changes: dict[str, int] = {}
        self.serial = 0
        self._syncing: dict[str, int] = {}  # local syncs in flight, per user
        self._last_sync: dict[str, int] = {}  # when a sync was last seen, in any process
        self._heartbeat_sent: dict[str, int] = {}
        self._heard: dict[str, int] = {}  # when a remote user's server last told us of them
        self._sent: dict[str, int] = {}  # when a local user's presence last went to other servers
        self._outbox: dict[str, UserPresence] = {}
        self._flush: asyncio.Task[None] | None = None
        self._ticker: asyncio.Task[None] | None = None
        # Called with a batch of local users' presence to tell other servers (federation).
        self.on_local_change: list[Callable[[list[UserPresence]], Awaitable[None]]] = []
        notifier.on_handler("presence", self._apply)
        notifier.on_handler("presence_sync", self._apply_sync)

    def _is_local(self, user_id: str) -> bool:
        return user_id.split(":", 1)[-1] == self._server_name

    async def start(self) -> None:
        if not self.enabled:
            return
        now = now_ms()
        for row in await self._store.presence.all():
            self._states[row.user_id] = UserPresence(row.user_id, row.state, row.status_msg, row.last_active_ts)
            if row.state != OFFLINE:
                self._not_offline.add(row.user_id)
            # A grace period: clients that were syncing before a restart come back within the timeout.
            (self._last_sync if self._is_local(row.user_id) else self._heard)[row.user_id] = now
        tick_s = min(5.0, max(0.05, min(self._idle_ms, self._sync_timeout_ms) / 4000))
        self._ticker = asyncio.create_task(self._tick_forever(tick_s))

    async def close(self) -> None:
        for task in (self._ticker, self._flush):
            if task is not None:
                task.cancel()
                try:
                    await task
                except (asyncio.CancelledError, Exception):
                    pass

    def get(self, user_id: str) -> UserPresence:
        return self._states.get(user_id) or UserPresence(user_id)

    # --- what clients and servers change ---------------------------------------------

    async def set_state(self, user_id: str, state: str, status_msg: str | None) -> None:
        """PUT /presence: the user's own state and status message (absent clears it, as in Synapse)."""
        if not self.enabled:
            return
        now = now_ms()
        prev = self.get(user_id)
        last_active = now if state == ONLINE else prev.last_active_ts
        await self._update(prev, UserPresence(user_id, state, status_msg, last_active, state == ONLINE), now)

    async def activity(self, user_id: str) -> None:
        """The user did something (sent an event): online and active now."""
        if not self.enabled:
            return
        prev = self._states.get(user_id)
        now = now_ms()
        if (prev is not None and prev.state == ONLINE and prev.currently_active
                and now - prev.last_active_ts < LAST_ACTIVE_GRANULARITY_MS):
            return  # the hot path: nothing new to tell anyone
        prev = prev or UserPresence(user_id)
        await self._update(prev, replace(prev, state=ONLINE, last_active_ts=now, currently_active=True), now)

    async def event_sent(self, event: Event, state_group: int | None) -> None:
        """A local user's event is activity (a `Rooms.on_local_event` hook); a leave is not (it may be
        the server's doing, as in a deactivation)."""
        if self._is_local(event.sender) and not (event.type == "m.room.member" and event.membership == "leave"):
            await self.activity(event.sender)

    @asynccontextmanager
    async def syncing(self, user_id: str, set_presence: str) -> AsyncIterator[None]:
        """Around a /sync (or an SSE stream): `online` brings an offline user online, `unavailable`
        marks them idle, `offline` changes nothing; while it lasts the user does not time out."""
        if not self.enabled or set_presence == OFFLINE:
            yield
            return
        now = now_ms()
        prev = self.get(user_id)
        if set_presence == ONLINE and prev.state == OFFLINE:
            await self._update(prev, replace(prev, state=ONLINE, last_active_ts=now, currently_active=True), now)
        elif set_presence == UNAVAILABLE and prev.state != UNAVAILABLE:
            await self._update(prev, replace(prev, state=UNAVAILABLE, currently_active=False), now)
        self._syncing[user_id] = self._syncing.get(user_id, 0) + 1
        try:
            yield
        finally:
            left = self._syncing.get(user_id, 1) - 1
            if left:
                self._syncing[user_id] = left
            else:
                self._syncing.pop(user_id, None)
            await self._synced(user_id, now_ms())

    async def _synced(self, user_id: str, now: int) -> None:
        self._last_sync[user_id] = now
        if self._notifier.shared and now - self._heartbeat_sent.get(user_id, 0) >= self._heartbeat_ms:
            self._heartbeat_sent[user_id] = now
            await self._notifier.publish("presence_sync", {"user_id": user_id, "ts": now})

    async def received(self, updates: list[UserPresence]) -> None:
        """Presence another server sent for its own users (checked by federation)."""
        if not self.enabled:
            return
        now = now_ms()
        for new in updates:
            self._heard[new.user_id] = now
        await self._update_many([(self.get(new.user_id), new) for new in updates], now)

    # --- reading ---------------------------------------------------------------------

    async def status(self, requester: str, user_id: str) -> dict[str, Any]:
        """GET /presence/{userId}/status: for the user, those sharing a room with them and friends."""
        if not self.enabled:
            return {"presence": OFFLINE}
        if self._is_local(user_id) and not await self._store.users.exists(user_id):
            raise not_found("No such user")
        if requester != user_id and not await self._store.rooms.shares_room(requester, user_id):
            link = await self._store.friends.link(requester, user_id)
            if link is None or link.state != FRIENDS:
                raise forbidden("You are not allowed to see their presence")
        return self.get(user_id).content(now_ms())

    def wait_keys(self, user_id: str, rooms: list[str]) -> list[str]:
        """What a sync that takes presence waits on besides its usual keys."""
        return [presence_key(user_id), *map(presence_key, rooms)] if self.enabled else []

    def changed_since(self, serial: int) -> bool:
        return self.serial > serial

    def changes_since(self, serial: int) -> list[UserPresence]:
        """Users whose presence changed after `serial`, most recent first."""
        out: list[UserPresence] = []
        for user_id in reversed(self._changes):
            if self._changes[user_id] <= serial or len(out) >= MAX_CHANGES_PER_SYNC:
                break
            out.append(self.get(user_id))
        return out

    def events_of(self, user_ids: list[str]) -> list[dict[str, Any]]:
        """`m.presence` events of those of these users who are not offline (room initialSync)."""
        now = now_ms()
        return [{"type": "m.presence", "sender": p.user_id, "content": p.content(now)}
                for p in self.known(set(user_ids))] if self.enabled else []

    def known(self, user_ids: set[str]) -> list[UserPresence]:
        """The presence of those of these users who are not offline (for an initial sync)."""
        return [p for u in user_ids if (p := self._states.get(u)) is not None and p.state != OFFLINE]

    # --- keeping it -----------------------------------------------------------------

    async def _update(self, prev: UserPresence, new: UserPresence, now: int) -> None:
        await self._update_many([(prev, new)], now)

    async def _update_many(self, changes: list[tuple[UserPresence, UserPresence]], now: int) -> None:
        """Store, replicate and announce changes, in one write and one message however many (the
        timeouts of many users fall due together); activity alone is kept once a granularity."""
        kept = [(prev, new) for prev, new in changes if prev.notable_change(new)
                or new.last_active_ts - prev.last_active_ts >= LAST_ACTIVE_GRANULARITY_MS]
        if not kept:
            return
        await self._store.presence.put_many(
            [PresenceRow(new.user_id, new.state, new.status_msg, new.last_active_ts) for _, new in kept], now)
        notable = [new.user_id for prev, new in kept if prev.notable_change(new)]
        rooms = await self._store.presence.joined_rooms_of(notable) if notable else []
        await self._notifier.publish("presence", {
            "updates": [{"user_id": new.user_id, "state": new.state, "status_msg": new.status_msg,
                         "last_active_ts": new.last_active_ts, "currently_active": new.currently_active}
                        for _, new in kept],
            "notable": notable, "rooms": rooms})
        if self.on_local_change:
            for prev, new in kept:
                if prev.notable_change(new) and self._is_local(new.user_id):
                    self._to_servers(new, now)

    def _apply(self, msg: dict[str, Any]) -> None:
        try:
            states = [UserPresence(str(u["user_id"]), str(u["state"]), u.get("status_msg"), int(u["last_active_ts"]),
                                   bool(u.get("currently_active"))) for u in msg["updates"]]
            notable = [str(u) for u in msg.get("notable") or []]
            rooms = [str(r) for r in msg.get("rooms") or []]
        except (KeyError, TypeError, ValueError):
            log.warning("ignoring a malformed presence message")
            return
        for state in states:
            self._states[state.user_id] = state
            if state.state == OFFLINE:
                self._not_offline.discard(state.user_id)
            else:
                self._not_offline.add(state.user_id)
        if notable:
            self.serial = max(now_ms(), self.serial + 1)
            for user_id in notable:
                self._changes.pop(user_id, None)
                self._changes[user_id] = self.serial
            # Only syncs that take presence wait on these keys (see wait_keys).
            self._notifier.wake([presence_key(k) for k in (*notable, *rooms)])

    def _apply_sync(self, msg: dict[str, Any]) -> None:
        user_id, ts = msg.get("user_id"), msg.get("ts")
        if isinstance(user_id, str) and isinstance(ts, int):
            self._last_sync[user_id] = max(ts, self._last_sync.get(user_id, 0))

    def _to_servers(self, state: UserPresence, now: int) -> None:
        """Queue a local user's presence for the other servers, gathered for FEDERATION_FLUSH_S."""
        self._sent[state.user_id] = now
        self._outbox[state.user_id] = state
        if self._flush is None or self._flush.done():
            self._flush = asyncio.create_task(self._flush_soon())

    async def _flush_soon(self) -> None:
        await asyncio.sleep(FEDERATION_FLUSH_S)
        batch, self._outbox = list(self._outbox.values()), {}
        for hook in self.on_local_change:
            try:
                await hook(batch)
            except Exception:
                log.exception("sending presence to other servers failed")

    # --- time passing ---------------------------------------------------------------

    async def _tick_forever(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.tick(now_ms())
            except Exception:
                log.exception("presence timeouts failed")

    async def tick(self, now: int) -> None:
        """Idle and offline timeouts, `currently_active` running out, and the federation pings."""
        for user_id in list(self._syncing):
            await self._synced(user_id, now)
        changes: list[tuple[UserPresence, UserPresence]] = []
        for user_id in list(self._not_offline):
            prev = self.get(user_id)
            if prev.state == OFFLINE:
                continue
            new = prev
            if not self._is_local(user_id):
                if now - self._heard.get(user_id, now) > REMOTE_TIMEOUT_MS:
                    changes.append((prev, replace(prev, state=OFFLINE, currently_active=False)))
                continue
            if new.state == ONLINE and now - new.last_active_ts > self._idle_ms:
                new = replace(new, state=UNAVAILABLE, currently_active=False)
            elif new.currently_active and now - new.last_active_ts > LAST_ACTIVE_GRANULARITY_MS:
                new = replace(new, currently_active=False)
            if (user_id not in self._syncing
                    and now - max(self._last_sync.get(user_id, 0), new.last_active_ts) > self._sync_timeout_ms):
                new = replace(new, state=OFFLINE, currently_active=False)
            if new != prev:
                changes.append((prev, new))
            elif self.on_local_change and now - self._sent.get(user_id, 0) > FEDERATION_PING_MS:
                self._to_servers(prev, now)
        for start in range(0, len(changes), TIMEOUT_BATCH):
            await self._update_many(changes[start:start + TIMEOUT_BATCH], now)
