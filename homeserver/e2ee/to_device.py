"""To-device messages: sent by a device to devices of users, here or on other servers.

Each send is stored first (one stream position for the whole call, a row per receiving
device), so nothing is lost across a restart; a device gets its messages in /sync (and the SSE
stream) until it syncs past them, and only then are they deleted. A device holds at most
MAX_PENDING_PER_DEVICE undelivered messages: beyond that, new ones for it are dropped
until it syncs. Messages to unknown users or devices are dropped silently, as the spec says.
"""

from __future__ import annotations

import logging
from collections import OrderedDict, defaultdict
from dataclasses import dataclass, field
from typing import Any, Protocol

from homeserver.clock import now_ms
from homeserver.errors import MatrixError, bad_json
from homeserver.events.auth_rules import server_of
from homeserver.sync.notifier import Notifier
from storage.e2ee import ToDeviceMessage
from storage.store import Store

log = logging.getLogger("whispr.e2ee")

MAX_PENDING_PER_DEVICE = 10_000
# Inboxes held in memory (see `HeldInbox`), and the messages one may hold before it is dropped.
HELD_INBOXES = 100_000
HELD_MESSAGES = 200
MAX_MESSAGES_PER_REQUEST = 10_000
MAX_TXN_ID_LENGTH = 255
# A transaction ID is remembered this long: clients retry within seconds, servers within hours.
TXN_MEMORY_MS = 24 * 3600 * 1000
ALL_DEVICES = "*"
UNBOUNDED = 2**63  # above every stream position


class RemoteToDevice(Protocol):
    """Sends m.direct_to_device EDUs (federation wires it in)."""

    async def send_to_device(self, server: str, sender: str, event_type: str, message_id: str,
                             messages: dict[str, dict[str, Any]]) -> None: ...


def check_messages(messages: object) -> dict[str, dict[str, dict[str, Any]]]:
    if not isinstance(messages, dict) or not all(
            isinstance(u, str) and isinstance(d, dict)
            and all(isinstance(i, str) and isinstance(c, dict) for i, c in d.items())
            for u, d in messages.items()):
        raise bad_json("messages must map user IDs to {device ID: content object}")
    if sum(len(d) for d in messages.values()) > MAX_MESSAGES_PER_REQUEST:
        raise MatrixError(400, "M_LIMIT_EXCEEDED", f"at most {MAX_MESSAGES_PER_REQUEST} messages per request")
    return messages


@dataclass
class HeldInbox:
    """Every message of one device stored after `complete_after`, known because this process stored
    them all: the syncs a send wakes then read nothing from the database."""

    complete_after: int
    messages: list[ToDeviceMessage] = field(default_factory=list)


class ToDevice:
    def __init__(self, server_name: str, store: Store, notifier: Notifier) -> None:
        self._server_name = server_name
        self._store = store
        self._notifier = notifier
        self.remote: RemoteToDevice | None = None
        # (user, device) -> the lowest and highest positions stored for it (since this process
        # started) that it may not have acknowledged yet; every process hears of each message
        # through the notifier before the position itself. A sync reads the inbox only when one
        # may be new to it, and a sync woken by a new message knows there is nothing older to
        # delete, and writes nothing.
        self._unacknowledged: dict[tuple[str, str], tuple[int, int]] = {}
        self._held: OrderedDict[tuple[str, str], HeldInbox] = OrderedDict()
        notifier.on_handler("to_device", self._on_stored)

    def _on_stored(self, msg: dict[str, Any]) -> None:
        stream = int(msg["stream"])
        for user_id, device_id in msg.get("devices", []):
            key = (user_id, device_id)
            low, high = self._unacknowledged.get(key, (stream, stream))
            self._unacknowledged[key] = (min(low, stream), max(high, stream))
            held = self._held.get(key)
            if held is not None and not any(m.stream == stream for m in held.messages):
                del self._held[key]  # stored by another process: its content is only in the database

    def stored_since(self, user_id: str, device_id: str, stream: int) -> bool:
        """Whether a message for the device may be waiting that was stored after `stream`."""
        return self.stored_between(user_id, device_id, stream, UNBOUNDED)

    def stored_between(self, user_id: str, device_id: str, after: int, upto: int) -> bool:
        """Whether a message for the device may have been stored in (after, upto]: before this
        process started anything may have been; since, it heard of every message."""
        if after < self._notifier.start_position:
            return True
        span = self._unacknowledged.get((user_id, device_id))
        return span is not None and span[0] <= upto and span[1] > after

    async def send(self, sender: str, sender_device: str, event_type: str, txn_id: str, raw: object) -> None:
        if not event_type or len(event_type) > MAX_TXN_ID_LENGTH or len(txn_id) > MAX_TXN_ID_LENGTH:
            raise MatrixError(400, "M_INVALID_PARAM", "event type and transaction ID must be 1-255 characters")
        messages = check_messages(raw)
        local = {u: d for u, d in messages.items() if server_of(u) == self._server_name}
        remote: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
        for user_id, by_device in messages.items():
            if server_of(user_id) != self._server_name:
                remote[server_of(user_id)][user_id] = by_device
        stream = await self.deliver(sender, event_type, local, (sender, sender_device, txn_id))
        if stream is None:
            return  # this transaction was sent before
        if self.remote is not None:
            message_id = f"{sender_device}:{txn_id}"
            for server, by_user in remote.items():
                await self.remote.send_to_device(server, sender, event_type, message_id, by_user)

    async def deliver(self, sender: str, event_type: str, messages: dict[str, dict[str, dict[str, Any]]],
                      txn: tuple[str, str, str]) -> int | None:
        """Store messages for local devices; the stream position, or None for a repeated txn."""
        existing = await self._store.e2ee.existing_devices(list(messages)) if messages else {}
        rows: dict[tuple[str, str], dict[str, Any]] = {}
        for user_id, by_device in messages.items():
            devices = existing.get(user_id, [])
            for device_id, content in by_device.items():
                targets = devices if device_id == ALL_DEVICES else [device_id] if device_id in devices else []
                for target in targets:
                    rows.setdefault((user_id, target), content)
        ts = now_ms()
        queued = await self._store.e2ee.add_to_device(
            sender, event_type, [(u, d, c) for (u, d), c in rows.items()], txn, ts, MAX_PENDING_PER_DEVICE,
            ts - TXN_MEMORY_MS)
        if queued is None:
            return None
        if queued.full:
            log.info("to-device %s from %s: dropped for %d devices holding %d undelivered messages",
                     event_type, sender, len(queued.full), MAX_PENDING_PER_DEVICE)
        stored = [key for key in rows if key not in queued.full]
        for key in stored:
            self._hold(key, ToDeviceMessage(queued.stream, sender, event_type, rows[key]))
        await self._notifier.publish("to_device", {"stream": queued.stream, "devices": [list(k) for k in stored]})
        await self._notifier.notify(queued.stream, wake_only=sorted({u for u, _ in stored}))
        return queued.stream

    async def receive_remote(self, origin: str, content: dict[str, Any]) -> None:
        """An m.direct_to_device EDU: its sender must be of the origin; only our users' devices."""
        sender, event_type, message_id = content.get("sender"), content.get("type"), content.get("message_id")
        if not isinstance(sender, str) or server_of(sender) != origin:
            log.warning("dropping a to-device EDU from %s for sender %r", origin, sender)
            return
        if not isinstance(event_type, str) or not isinstance(message_id, str):
            return
        try:
            messages = check_messages(content.get("messages"))
        except MatrixError:
            log.warning("dropping a malformed to-device EDU from %s", origin)
            return
        local = {u: d for u, d in messages.items() if server_of(u) == self._server_name}
        await self.deliver(sender, event_type, local, (sender, "", message_id[:MAX_TXN_ID_LENGTH]))

    def _hold(self, key: tuple[str, str], message: ToDeviceMessage) -> None:
        held = self._held.get(key)
        if held is None:
            return
        held.messages.append(message)
        if len(held.messages) > HELD_MESSAGES:
            del self._held[key]

    async def pending(self, user_id: str, device_id: str, after: int, upto: int,
                      limit: int) -> list[ToDeviceMessage]:
        held = self._held.get((user_id, device_id))
        if held is not None and after >= held.complete_after:
            return [m for m in held.messages if after < m.stream <= upto][:limit]
        return await self._store.e2ee.to_device_for(user_id, device_id, after, upto, limit)

    async def acknowledge(self, user_id: str, device_id: str, upto: int) -> None:
        await self._store.e2ee.delete_to_device(user_id, device_id, upto)
        key = (user_id, device_id)
        span = self._unacknowledged.get(key)
        if span is not None:
            if span[1] <= upto:
                del self._unacknowledged[key]
                span = None
            else:
                self._unacknowledged[key] = (max(span[0], upto + 1), span[1])
        held = self._held.get(key)
        if held is not None:
            held.messages = [m for m in held.messages if m.stream > upto]
        elif span is None and upto >= self._notifier.start_position:
            # Nothing older is left and every later message will be heard of: the inbox is empty.
            self._held[key] = HeldInbox(upto)
            if len(self._held) > HELD_INBOXES:
                self._held.popitem(last=False)
