"""The encryption domain assembled: device lists, keys, to-device messages, cross-signing, backups."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from homeserver.e2ee.cross_signing import CrossSigning
from homeserver.e2ee.device_keys import DeviceKeys, check_device_keys
from homeserver.e2ee.device_lists import DeviceLists
from homeserver.e2ee.key_backup import KeyBackups
from homeserver.e2ee.one_time_keys import OneTimeKeys
from homeserver.e2ee.sync_section import E2eeSync
from homeserver.e2ee.to_device import ToDevice
from homeserver.sync.notifier import Notifier
from storage.store import Store


class E2ee:
    def __init__(self, server_name: str, store: Store, notifier: Notifier) -> None:
        self._store = store
        self.lists = DeviceLists(server_name, store, notifier)
        self.device_keys = DeviceKeys(server_name, store, self.lists)
        self.one_time_keys = OneTimeKeys(store, self.lists, notifier)
        self.to_device = ToDevice(server_name, store, notifier)
        self.cross_signing = CrossSigning(store, self.lists)
        self.backups = KeyBackups(store)
        self.sync = E2eeSync(notifier, self.lists, self.one_time_keys, self.to_device)

    async def upload(self, user_id: str, device_id: str, body: dict[str, Any]) -> dict[str, Any]:
        """/keys/upload: device keys, one-time keys, fallback keys; the device's key counts. Everything
        is checked before anything is stored: a bad part leaves the device's keys as they were."""
        device_keys = None
        if body.get("device_keys") is not None:
            device_keys = check_device_keys(body["device_keys"], user_id, device_id)
        fallback = body.get("fallback_keys", body.get("org.matrix.msc2732.fallback_keys"))
        plan = await self.one_time_keys.prepare(user_id, device_id, body.get("one_time_keys"), fallback, device_keys)
        if device_keys is not None:
            await self.device_keys.store_device_keys(user_id, device_id, device_keys)
        await self.one_time_keys.store(plan)
        counts, _ = await self.one_time_keys.counts(user_id, device_id)
        return {"one_time_key_counts": counts}

    async def device_updated(self, user_id: str, device_id: str) -> None:
        """A device was created (login) or renamed: a device list change like any other."""
        stream = await self._store.e2ee.record_change([user_id])
        await self.lists.announce(user_id, stream, [device_id])

    async def devices_deleted(self, user_id: str, device_ids: Sequence[str]) -> None:
        """A device logged out or deleted: its keys and messages go, and its users hear of it."""
        for device_id, stream in await self._store.e2ee.delete_devices(user_id, device_ids):
            await self.lists.announce(user_id, stream, [device_id], deleted=True)
