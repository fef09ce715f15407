"""Pushers: where a user's notifications are sent (Push Gateway API), and their delivery.

Nothing is queued apart from the notifications themselves: each pusher remembers the stream
position up to which it has delivered (`last_stream`), advanced only after the gateway took a
notification, so a restart resumes exactly where delivery stopped and no push is lost. A failing
gateway is retried with exponential backoff; a pushkey it reports `rejected` is removed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import Any, Protocol
from urllib.parse import urlsplit

from homeserver.clock import now_ms
from homeserver.config import PushConfig
from homeserver.errors import MatrixError
from homeserver.push.notifications import Notifications
from homeserver.rooms.rooms import Rooms
from storage.push import EventPush, Notification, Pusher
from storage.store import Store

log = logging.getLogger("whispr.push")

GATEWAY_PATH = "/_matrix/push/v1/notify"
MAX_APP_ID_LENGTH = 64
MAX_PUSHKEY_BYTES = 512
BATCH = 20
# A notification that could not be delivered for this long is dropped (the phone missed it).
MAX_PUSH_AGE_MS = 24 * 3600 * 1000
# How long closing waits for deliveries in flight.
CLOSE_GRACE_S = 5.0


class GatewayError(Exception):
    """The gateway could not be reached or answered with an error: try again later."""


class Gateway(Protocol):
    async def notify(self, url: str, body: dict[str, Any]) -> list[str]:
        """POST the notification; the pushkeys the gateway rejected. Raises GatewayError."""
        ...


def pusher_json(p: Pusher) -> dict[str, Any]:
    return {"app_id": p.app_id, "pushkey": p.pushkey, "kind": p.kind, "app_display_name": p.app_display_name,
            "device_display_name": p.device_display_name, "profile_tag": p.profile_tag, "lang": p.lang,
            "data": p.data}


def _string(body: dict[str, Any], key: str, required: bool = True) -> str:
    value = body.get(key)
    if value is None and not required:
        return ""
    if value is None:
        raise MatrixError(400, "M_MISSING_PARAM", f"Missing {key}")
    if not isinstance(value, str):
        raise MatrixError(400, "M_INVALID_PARAM", f"{key} must be a string")
    return value


def _tweaks(actions: list[Any]) -> dict[str, Any]:
    return {a["set_tweak"]: a.get("value", True) for a in actions
            if isinstance(a, dict) and isinstance(a.get("set_tweak"), str)}


class _Worker:
    def __init__(self, pusher: Pusher) -> None:
        self.pusher = pusher
        self.wake = asyncio.Event()
        self.task: asyncio.Task[None] | None = None


class Pushers:
    def __init__(self, store: Store, notifications: Notifications, rooms: Rooms, gateway: Gateway,
                 config: PushConfig, position: Callable[[], int]) -> None:
        self._store = store
        self._position = position  # the stream position everything up to is committed (the notifier's)
        self._notifications = notifications
        self._rooms = rooms
        self._gateway = gateway
        self._config = config
        self._workers: dict[tuple[str, str, str], _Worker] = {}
        self._by_user: dict[str, set[tuple[str, str, str]]] = {}
        self._closing = False
        self._refresher: asyncio.Task[None] | None = None
        notifications.on_stored.append(self._on_stored)

    async def start(self, shared: bool) -> None:
        """Start delivering (unless push.deliver is off here). `shared`: other workers write too,
        so pushers they set and events they store are picked up every push.pusher_refresh_s."""
        if not self._config.deliver:
            return
        for pusher in await self._store.push.pushers():
            self._run(pusher)
        if shared:
            self._refresher = asyncio.create_task(self._refresh(), name="pushers refresh")

    async def _refresh(self) -> None:
        while not self._closing:
            await asyncio.sleep(self._config.pusher_refresh_s)
            try:
                stored = {(p.user_id, p.app_id, p.pushkey): p for p in await self._store.push.pushers()}
            except Exception:
                log.exception("reading the pushers failed")
                continue
            for key in [k for k in self._workers if k not in stored]:
                self._stop(key)
            for key, pusher in stored.items():
                if key not in self._workers:
                    self._run(pusher)
            for worker in self._workers.values():
                worker.wake.set()  # events other workers stored wake nobody here

    async def close(self) -> None:
        """Let each delivery in flight finish and record its position (so it is not sent again
        after the restart), then stop."""
        self._closing = True
        if self._refresher is not None:
            self._refresher.cancel()
        tasks = [w.task for w in self._workers.values() if w.task is not None]
        for worker in self._workers.values():
            worker.wake.set()
        if tasks:
            await asyncio.wait(tasks, timeout=CLOSE_GRACE_S)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._workers.clear()
        self._by_user.clear()

    def _on_stored(self, push: EventPush) -> None:
        if not self._by_user:
            return
        for group in push.groups:
            users: Iterable[str] = group.user_ids
            if len(group.user_ids) > len(self._by_user):  # walk the shorter side
                notified = set(group.user_ids)
                users = [u for u in self._by_user if u in notified]
            for user_id in users:
                for key in self._by_user.get(user_id, ()):
                    self._workers[key].wake.set()

    # --- the API -----------------------------------------------------------------------

    async def of_user(self, user_id: str) -> list[dict[str, Any]]:
        return [pusher_json(p) for p in await self._store.push.pushers(user_id)]

    async def set(self, user_id: str, body: dict[str, Any], current_stream: int) -> None:
        """POST /pushers/set: create, update, or (kind null) delete a pusher."""
        app_id, pushkey = _string(body, "app_id"), _string(body, "pushkey")
        if len(app_id) > MAX_APP_ID_LENGTH:
            raise MatrixError(400, "M_INVALID_PARAM", f"app_id is at most {MAX_APP_ID_LENGTH} characters")
        if len(pushkey.encode()) > MAX_PUSHKEY_BYTES:
            raise MatrixError(400, "M_INVALID_PARAM", f"pushkey is at most {MAX_PUSHKEY_BYTES} bytes")
        if "kind" in body and body["kind"] is None:
            if await self._store.push.delete_pusher(user_id, app_id, pushkey):
                self._stop((user_id, app_id, pushkey))
            return
        kind = _string(body, "kind")
        if kind != "http":
            raise MatrixError(400, "M_INVALID_PARAM", "Only pushers of kind 'http' are supported")
        data = body.get("data")
        if not isinstance(data, dict):
            raise MatrixError(400, "M_MISSING_PARAM" if data is None else "M_INVALID_PARAM", "data must be an object")
        url = data.get("url")
        if not isinstance(url, str):
            raise MatrixError(400, "M_INVALID_PARAM", "An http pusher needs data.url")
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.path != GATEWAY_PATH:
            raise MatrixError(400, "M_INVALID_PARAM", f"data.url must be an http(s) URL ending in {GATEWAY_PATH}")
        if "format" in data and data["format"] != "event_id_only":
            raise MatrixError(400, "M_INVALID_PARAM", "The only data.format is 'event_id_only'")
        append = body.get("append", False)
        if not isinstance(append, bool):
            raise MatrixError(400, "M_INVALID_PARAM", "append must be a boolean")
        pusher = Pusher(user_id, app_id, pushkey, kind, _string(body, "app_display_name"),
                        _string(body, "device_display_name"), _string(body, "profile_tag", required=False),
                        _string(body, "lang"), data, now_ms(), current_stream)
        key = (user_id, app_id, pushkey)
        for removed in await self._store.push.set_pusher(pusher, append):
            self._stop(removed)
        worker = self._workers.get(key)
        if not self._config.deliver:
            return  # the delivering worker picks it up
        if worker is not None:  # an update: the same position, new details
            worker.pusher = replace(pusher, created_ts=worker.pusher.created_ts, last_stream=worker.pusher.last_stream)
        else:
            self._run(pusher)

    async def remove_user(self, user_id: str) -> None:
        """Every pusher of a user (account deactivation)."""
        for p in await self._store.push.pushers(user_id):
            await self._store.push.delete_pusher(user_id, p.app_id, p.pushkey)
            self._stop((user_id, p.app_id, p.pushkey))

    # --- delivery ----------------------------------------------------------------------

    def _run(self, pusher: Pusher) -> None:
        key = (pusher.user_id, pusher.app_id, pusher.pushkey)
        worker = _Worker(pusher)
        self._workers[key] = worker
        self._by_user.setdefault(pusher.user_id, set()).add(key)
        worker.task = asyncio.create_task(self._deliver(worker), name=f"pusher {pusher.user_id} {pusher.app_id}")

    def _stop(self, key: tuple[str, str, str]) -> None:
        worker = self._workers.pop(key, None)
        keys = self._by_user.get(key[0])
        if keys is not None:
            keys.discard(key)
            if not keys:
                del self._by_user[key[0]]
        if worker is not None and worker.task is not None and worker.task is not asyncio.current_task():
            worker.task.cancel()

    async def _pause(self, worker: _Worker, delay_ms: int) -> None:
        """Sleep, unless closing wakes the worker first."""
        try:
            await asyncio.wait_for(worker.wake.wait(), delay_ms / 1000)
        except TimeoutError:
            pass

    async def _deliver(self, worker: _Worker) -> None:
        delay_ms = self._config.gateway_min_retry_ms
        while not self._closing:
            worker.wake.clear()  # before reading: a notification stored meanwhile wakes us again
            p = worker.pusher
            seen = self._position()  # read first: everything up to it is in the answer
            try:
                batch = await self._store.push.notifications_after(p.user_id, p.last_stream, BATCH)
            except Exception:
                log.exception("reading notifications for pusher %s of %s failed", p.app_id, p.user_id)
                await self._pause(worker, delay_ms)
                continue
            if len(batch) < BATCH and seen > p.last_stream and not (batch and batch[-1].stream > seen):
                # Nothing else of the user's up to `seen`: the next read starts there, not at the last
                # push (in memory; after a restart the stored position is a little further back).
                upto = seen
            else:
                upto = 0
            if not batch:
                if upto:
                    worker.pusher = replace(worker.pusher, last_stream=upto)
                await worker.wake.wait()
                continue
            for n in batch:
                while not self._closing:
                    try:
                        rejected = await self._send(worker.pusher, n)
                        delay_ms = self._config.gateway_min_retry_ms
                        break
                    except GatewayError as e:
                        if now_ms() - n.ts > MAX_PUSH_AGE_MS:
                            log.warning("dropping push of %s to %s after retries: %s", n.event_id, p.app_id, e)
                            rejected = []
                            break
                        log.info("push gateway for %s failed (%s); retrying in %d ms", p.user_id, e, delay_ms)
                        await self._pause(worker, delay_ms)
                        delay_ms = min(delay_ms * 2, self._config.gateway_max_retry_ms)
                else:
                    return  # closing, this one not delivered: the next start sends it
                if p.pushkey in rejected:
                    log.info("push gateway rejected pushkey of %s (%s): removing the pusher", p.user_id, p.app_id)
                    for user_id in await self._store.push.delete_pushkey(p.app_id, p.pushkey):
                        self._stop((user_id, p.app_id, p.pushkey))
                    return
                await self._store.push.advance_pusher(p.user_id, p.app_id, p.pushkey, n.stream)
                worker.pusher = replace(worker.pusher, last_stream=n.stream)
            if upto > worker.pusher.last_stream:
                worker.pusher = replace(worker.pusher, last_stream=upto)

    async def _send(self, p: Pusher, n: Notification) -> list[str]:
        unread, missed_calls = await self._notifications.unread_totals(p.user_id)
        device_data = {k: v for k, v in p.data.items() if k != "url"}
        notification: dict[str, Any] = {
            "event_id": n.event_id, "room_id": n.room_id,
            "prio": "high" if n.highlight or "sound" in _tweaks(n.actions) else "low",
            "counts": {"unread": unread, "missed_calls": missed_calls},
            "devices": [{"app_id": p.app_id, "pushkey": p.pushkey, "pushkey_ts": p.created_ts // 1000,
                         "data": device_data, "tweaks": _tweaks(n.actions)}],
        }
        if p.data.get("format") != "event_id_only":
            event = await self._rooms.get_event(n.event_id)
            if event is not None:
                notification.update({"type": event.type, "sender": event.sender, "content": event.content})
                if event.state_key is not None:
                    notification["user_is_target"] = event.state_key == p.user_id
        return await self._gateway.notify(str(p.data["url"]), {"notification": notification})
