"""What /sync carries for encryption: to-device messages, device list changes, key counts.

Nothing here costs a query on a sync that nothing of it concerns: the to-device inbox is read only
when a message was stored for the device, the device list changes only when one was announced to
the user (or a room's membership moved), the key counts only when a claim or upload moved them;
every process hears of those through the notifier before the stream position they took.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from homeserver.e2ee.device_lists import DeviceLists
from homeserver.e2ee.one_time_keys import OneTimeKeys
from homeserver.e2ee.to_device import ToDevice
from homeserver.sync.notifier import Notifier

# At most this many to-device messages per sync; the rest come with the next one.
MAX_TO_DEVICE_PER_SYNC = 100
CLEAN_MARKS_SIZE = 100_000


@dataclass(frozen=True)
class E2eeSection:
    fields: dict[str, Any]
    empty: bool
    # Set when more to-device messages wait: the position delivered up to (the next token's cursor).
    to_device_upto: int | None


class E2eeSync:
    def __init__(self, notifier: Notifier, lists: DeviceLists, one_time_keys: OneTimeKeys,
                 to_device: ToDevice) -> None:
        self._notifier = notifier
        self._lists = lists
        self._otks = one_time_keys
        self._to_device = to_device
        # (user, device) -> the position up to which its inbox is known to be empty.
        self._clean: OrderedDict[tuple[str, str], int] = OrderedDict()

    async def section(self, user_id: str, device_id: str, since: int | None, to_device_from: int | None,
                      upto: int, rooms: Sequence[str]) -> E2eeSection:
        fields: dict[str, Any] = {}
        changed: list[str] = []
        left: list[str] = []
        lists_moved = since is not None and self._lists.heard_since(user_id, since)
        if since is not None and (lists_moved or rooms):
            changes = await self._lists.changes(user_id, since, upto, rooms, with_changes=lists_moved)
            changed, left = changes.changed, changes.left
        fields["device_lists"] = {"changed": changed, "left": left}
        if self._otks.take_moved(user_id, device_id) or since is None:
            counts, unused_fallback = await self._otks.counts(user_id, device_id)
            fields["device_one_time_keys_count"] = counts
            fields["device_unused_fallback_key_types"] = unused_fallback
            fields["org.matrix.msc2732.device_unused_fallback_key_types"] = unused_fallback
        start = to_device_from if to_device_from is not None else (since or 0)
        await self._acknowledge(user_id, device_id, start)
        events: list[dict[str, Any]] = []
        truncated_at: int | None = None
        if since is None or to_device_from is not None or self._to_device.stored_since(user_id, device_id, start):
            messages = await self._to_device.pending(user_id, device_id, start, upto, MAX_TO_DEVICE_PER_SYNC + 1)
            if len(messages) > MAX_TO_DEVICE_PER_SYNC:
                messages = messages[:MAX_TO_DEVICE_PER_SYNC]
                truncated_at = messages[-1].stream
            events = [{"type": m.type, "sender": m.sender, "content": m.content} for m in messages]
        fields["to_device"] = {"events": events}
        return E2eeSection(fields, not (events or changed or left), truncated_at)

    async def _acknowledge(self, user_id: str, device_id: str, upto: int) -> None:
        """Delete what the device has seen (it synced with a token past it), unless nothing can be there."""
        if upto <= 0:
            return
        key = (user_id, device_id)
        clean = self._clean.get(key)
        if clean is not None and (clean >= upto or not self._to_device.stored_between(user_id, device_id, clean, upto)):
            return
        await self._to_device.acknowledge(user_id, device_id, upto)
        self._clean[key] = upto
        self._clean.move_to_end(key)
        if len(self._clean) > CLEAN_MARKS_SIZE:
            self._clean.popitem(last=False)
