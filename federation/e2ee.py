"""Encryption over federation: device list updates (m.device_list_update with prev_id chains,
m.signing_key_update), to-device messages (m.direct_to_device), and the user key endpoints,
served (/user/devices, /user/keys/query, /user/keys/claim) and called.

Outbound EDUs go through the persisted per-destination queue (federation/sender.py). An update
about a remote user is applied only when its prev_id is what we hold; any gap makes us fetch
the user's whole list again (/user/devices). EDUs about users of another server than the
sender are dropped and logged.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from functools import partial
from typing import Any
from urllib.parse import quote

from aiohttp import web

from homeserver.web.json_output import json_response
from federation.ingest import server_of
from federation.sender import FederationSender
from homeserver.e2ee.service import E2ee
from homeserver.errors import bad_json, not_found
from homeserver.json_input import parse_json
from storage.store import Store

log = logging.getLogger("whispr.federation.e2ee")
q = partial(quote, safe="")

F1 = "/_matrix/federation/v1"
E2EE_EDUS = ("m.device_list_update", "m.signing_key_update", "m.direct_to_device")
RESYNC_TIMEOUT_S = 30.0


class FederationE2ee:
    def __init__(self, server_name: str, store: Store, e2ee: E2ee, sender: FederationSender, client: Any) -> None:
        self._server_name = server_name
        self._store = store
        self._e2ee = e2ee
        self._sender = sender
        self._client = client
        self._resyncs: dict[str, asyncio.Task[bool]] = {}
        e2ee.lists.remote = self
        e2ee.device_keys.remote = self
        e2ee.one_time_keys.remote = self
        e2ee.to_device.remote = self

    async def close(self) -> None:
        for task in list(self._resyncs.values()):
            task.cancel()

    async def _servers_sharing(self, user_id: str) -> list[str]:
        users = await self._store.e2ee.users_sharing_rooms(user_id)
        return sorted({server_of(u) for u in users} - {self._server_name})

    # --- outbound: DeviceListPublisher ------------------------------------------------------

    async def devices_changed(self, user_id: str, device_ids: Sequence[str], stream: int, deleted: bool) -> None:
        servers = await self._servers_sharing(user_id)
        if not servers:
            return
        prev = await self._store.e2ee.last_change(user_id, stream)
        for device_id in device_ids:
            # Device names stay home, as Synapse's default (allow_device_name_lookup_over_federation).
            content: dict[str, Any] = {"user_id": user_id, "device_id": device_id, "stream_id": stream,
                                       "prev_id": [prev] if prev is not None else [], "deleted": deleted}
            if not deleted:
                keys = await self._store.e2ee.device_keys(user_id, device_id)
                if keys is not None:
                    content["keys"] = keys
            await self._sender.send_edu(servers, "m.device_list_update", content)

    async def signing_keys_changed(self, user_id: str) -> None:
        servers = await self._servers_sharing(user_id)
        if not servers:
            return
        keys = (await self._store.e2ee.cross_signing_keys([user_id])).get(user_id, {})
        content: dict[str, Any] = {"user_id": user_id}
        if "master" in keys:
            content["master_key"] = keys["master"]
        if "self_signing" in keys:
            content["self_signing_key"] = keys["self_signing"]
        await self._sender.send_edu(servers, "m.signing_key_update", content)

    # --- outbound: RemoteKeys, RemoteToDevice -------------------------------------------------

    async def query_keys(self, server: str, device_keys: dict[str, list[str]], timeout_ms: int) -> dict[str, Any]:
        body = await self._client.post_json(server, f"{F1}/user/keys/query", {"device_keys": device_keys},
                                            timeout=timeout_ms / 1000)
        return body if isinstance(body, dict) else {}

    async def claim_keys(self, server: str, one_time_keys: dict[str, dict[str, str]],
                         timeout_ms: int) -> dict[str, Any]:
        body = await self._client.post_json(server, f"{F1}/user/keys/claim", {"one_time_keys": one_time_keys},
                                            timeout=timeout_ms / 1000)
        return body if isinstance(body, dict) else {}

    async def send_to_device(self, server: str, sender: str, event_type: str, message_id: str,
                             messages: dict[str, dict[str, Any]]) -> None:
        await self._sender.send_edu([server], "m.direct_to_device", {
            "sender": sender, "type": event_type, "message_id": message_id, "messages": messages})

    async def resync_user(self, user_id: str) -> bool:
        """Fetch a remote user's whole device list (one fetch at a time per user)."""
        task = self._resyncs.get(user_id)
        if task is None:
            task = asyncio.create_task(self._resync(user_id))
            self._resyncs[user_id] = task
            task.add_done_callback(lambda _t: self._resyncs.pop(user_id, None))
        return await asyncio.shield(task)

    async def _resync(self, user_id: str) -> bool:
        server = server_of(user_id)
        try:
            body = await self._client.get_json(server, f"{F1}/user/devices/{q(user_id)}", timeout=RESYNC_TIMEOUT_S)
        except Exception as e:  # noqa: BLE001 - the list stays stale and is fetched again next time
            log.info("device list resync of %s failed: %s", user_id, e)
            await self._store.e2ee.mark_remote_stale(user_id)
            return False
        if not isinstance(body, dict) or body.get("user_id") != user_id or not isinstance(body.get("devices"), list):
            log.warning("malformed device list for %s from %s", user_id, server)
            return False
        stream_id = body.get("stream_id")
        devices = []
        for d in body["devices"]:
            if not isinstance(d, dict) or not isinstance(d.get("device_id"), str):
                continue
            keys = d.get("keys")
            if not isinstance(keys, dict) or keys.get("user_id") != user_id or keys.get("device_id") != d["device_id"]:
                keys = None
            name = d.get("device_display_name")
            devices.append((d["device_id"], keys, name if isinstance(name, str) else None))
        master, ssk = _own_key(body.get("master_key"), user_id), _own_key(body.get("self_signing_key"), user_id)
        stream = await self._store.e2ee.replace_remote_devices(
            user_id, stream_id if isinstance(stream_id, int) else 0, devices, master, ssk)
        await self._e2ee.lists.announce(user_id, stream)
        return True

    # --- inbound EDUs --------------------------------------------------------------------------

    async def receive_edu(self, origin: str, kind: str, content: dict[str, Any]) -> None:
        if kind == "m.direct_to_device":
            await self._e2ee.to_device.receive_remote(origin, content)
            return
        user_id = content.get("user_id")
        if not isinstance(user_id, str) or server_of(user_id) != origin:
            log.warning("dropping %s from %s about %r: not one of its users", kind, origin, user_id)
            return
        if kind == "m.device_list_update":
            await self._device_list_update(user_id, content)
        elif kind == "m.signing_key_update":
            keys = {t: k for t, k in (("master", _own_key(content.get("master_key"), user_id)),
                                      ("self_signing", _own_key(content.get("self_signing_key"), user_id)))
                    if k is not None}
            if keys:
                stream = await self._store.e2ee.set_remote_cross_signing(user_id, keys)
                await self._e2ee.lists.announce(user_id, stream)

    async def _device_list_update(self, user_id: str, content: dict[str, Any]) -> None:
        device_id, stream_id, prev = content.get("device_id"), content.get("stream_id"), content.get("prev_id", [])
        if not isinstance(device_id, str) or not isinstance(stream_id, int) or not isinstance(prev, list):
            log.warning("dropping a malformed m.device_list_update for %s", user_id)
            return
        held = await self._store.e2ee.remote_list_state(user_id)
        if held is None:
            # Not tracked yet: only worth holding if one of our users shares a room with them.
            if not any(server_of(u) == self._server_name for u in await self._store.e2ee.users_sharing_rooms(user_id)):
                return
            self._spawn_resync(user_id)
            return
        held_id, stale = held
        if not stale and stream_id < held_id:
            return  # old news
        follows = stream_id == held_id or (prev == [held_id]) or (not prev and held_id == 0)
        if stale or not follows:
            self._spawn_resync(user_id)  # a gap: what we hold cannot be trusted
            return
        keys = content.get("keys")
        if not isinstance(keys, dict) or keys.get("user_id") != user_id or keys.get("device_id") != device_id:
            keys = None
        name = content.get("device_display_name")
        stream = await self._store.e2ee.update_remote_device(user_id, device_id, stream_id,
                                                             content.get("deleted") is True, keys,
                                                             name if isinstance(name, str) else None)
        await self._e2ee.lists.announce(user_id, stream)

    def _spawn_resync(self, user_id: str) -> None:
        asyncio.ensure_future(self.resync_user(user_id))


def _own_key(key: object, user_id: str) -> dict[str, Any] | None:
    return key if isinstance(key, dict) and key.get("user_id") == user_id else None


# --- inbound endpoints -------------------------------------------------------------------------

async def user_devices(request: web.Request, origin: str, server: Any) -> web.Response:
    user_id = request.match_info["user_id"]
    if server_of(user_id) != server.config.server_name or await server.store.users.get(user_id) is None:
        raise not_found("Unknown user")
    store: Store = server.store
    devices = await store.e2ee.existing_devices([user_id])
    keyed = {d.device_id: d for d in await store.e2ee.devices_of([user_id])}
    listed = []
    for device_id in devices.get(user_id, []):
        entry: dict[str, Any] = {"device_id": device_id}
        if device_id in keyed and keyed[device_id].keys is not None:
            entry["keys"] = keyed[device_id].keys
        listed.append(entry)
    cross = (await store.e2ee.cross_signing_keys([user_id])).get(user_id, {})
    body: dict[str, Any] = {"user_id": user_id, "stream_id": await store.e2ee.latest_change(user_id),
                            "devices": listed}
    if "master" in cross:
        body["master_key"] = cross["master"]
    if "self_signing" in cross:
        body["self_signing_key"] = cross["self_signing"]
    return json_response(body)


async def _json(request: web.Request) -> dict[str, Any]:
    body = parse_json(await request.read())
    if not isinstance(body, dict):
        raise bad_json("Content must be a JSON object")
    return body


async def keys_query(request: web.Request, origin: str, server: Any) -> web.Response:
    body = await _json(request)
    result = await server.e2ee.device_keys.query(None, body.get("device_keys", {}), None,
                                                 with_display_names=False)
    result.pop("failures", None)
    return json_response(result)


async def keys_claim(request: web.Request, origin: str, server: Any) -> web.Response:
    body = await _json(request)
    result = await server.e2ee.one_time_keys.claim(body.get("one_time_keys", {}), None, local_only=True)
    result.pop("failures", None)
    return json_response(result)
