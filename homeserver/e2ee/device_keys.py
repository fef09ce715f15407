"""Device keys: upload (checked against the device's own ed25519 key), query (local users from the
database, remote users from what their servers told us, or asked over federation).

Queries far outnumber changes (every client asks for the keys of everyone it shares a room with,
again after each device list change), so what the database holds for a user is kept in memory
until a change of that user is announced, in whichever process it happened (`DeviceLists`).
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from homeserver.e2ee.device_lists import DeviceLists
from homeserver.e2ee.signing import verify_key_signature
from homeserver.errors import MatrixError, bad_json
from homeserver.events.auth_rules import server_of
from storage.store import Store

log = logging.getLogger("whispr.e2ee")

MAX_QUERY_USERS = 1_000
MAX_KEY_ID_LENGTH = 255
DEFAULT_REMOTE_TIMEOUT_MS = 10_000
MAX_REMOTE_TIMEOUT_MS = 30_000
CROSS_SIGNING_TYPES = ("master", "self_signing", "user_signing")
# Users whose keys are kept in memory (a few KiB each), and signers whose signatures are.
KEY_CACHE_USERS = 50_000


def invalid(message: str) -> MatrixError:
    return MatrixError(400, "M_INVALID_PARAM", message)


class RemoteKeys(Protocol):
    """Other servers' key endpoints (federation wires it in)."""

    async def query_keys(self, server: str, device_keys: dict[str, list[str]], timeout_ms: int) -> dict[str, Any]: ...

    async def claim_keys(self, server: str, one_time_keys: dict[str, dict[str, str]],
                         timeout_ms: int) -> dict[str, Any]: ...

    async def resync_user(self, user_id: str) -> bool: ...


def remote_timeout(raw: object) -> int:
    if isinstance(raw, int) and not isinstance(raw, bool) and raw >= 0:
        return min(raw, MAX_REMOTE_TIMEOUT_MS)
    return DEFAULT_REMOTE_TIMEOUT_MS


def check_device_keys(keys: object, user_id: str, device_id: str) -> dict[str, Any]:
    """A device's identity keys as uploaded: shape, owner and self-signature; what is stored."""
    if not isinstance(keys, dict):
        raise bad_json("device_keys must be an object")
    if keys.get("user_id") != user_id or keys.get("device_id") != device_id:
        raise invalid("device_keys must be for the uploading user and device")
    if not any(k in keys for k in ("algorithms", "keys", "signatures")):
        # Only the IDs (old test suites upload this): nothing a client could trust, nothing to check.
        return {"user_id": user_id, "device_id": device_id}
    algorithms, identity = keys.get("algorithms"), keys.get("keys")
    if not isinstance(algorithms, list) or not all(isinstance(a, str) for a in algorithms):
        raise bad_json("device_keys.algorithms must be a list of strings")
    if not isinstance(identity, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                 for k, v in identity.items()):
        raise bad_json("device_keys.keys must map key IDs to strings")
    if not isinstance(keys.get("signatures"), dict):
        raise bad_json("device_keys.signatures must be an object")
    key_id = f"ed25519:{device_id}"
    if not verify_key_signature(keys, user_id, key_id, identity.get(key_id)):
        raise invalid(f"device_keys must carry a valid signature by {key_id}")
    return {k: v for k, v in keys.items() if k != "unsigned"}


@dataclass(frozen=True)
class UserKeys:
    """What the database holds for one user; shared by every answer, so never changed in place."""

    devices: dict[str, dict[str, Any]] = field(default_factory=dict)  # with unsigned.device_display_name
    bare: dict[str, dict[str, Any]] = field(default_factory=dict)  # as uploaded (for other servers)
    cross: dict[str, dict[str, Any]] = field(default_factory=dict)  # key type -> key


class DeviceKeys:
    def __init__(self, server_name: str, store: Store, lists: DeviceLists) -> None:
        self._server_name = server_name
        self._store = store
        self._lists = lists
        self.remote: RemoteKeys | None = None
        self._keys: OrderedDict[str, UserKeys] = OrderedDict()
        self._signatures: OrderedDict[str, dict[str, dict[str, str]]] = OrderedDict()
        # Bumped by every change: a read that overlapped one does not keep what it read.
        self._epoch = 0
        lists.on_keys_changed.append(self._forget)

    def _forget(self, user_id: str) -> None:
        self._epoch += 1
        self._keys.pop(user_id, None)
        self._signatures.pop(user_id, None)

    async def _held(self, user_ids: Sequence[str]) -> dict[str, UserKeys]:
        found = {u: k for u in user_ids if (k := self._keys.get(u)) is not None}
        missing = [u for u in user_ids if u not in found]
        if missing:
            epoch = self._epoch
            read = {u: UserKeys() for u in missing}
            for dev in await self._store.e2ee.devices_of(missing):
                if dev.keys is None:
                    continue
                read[dev.user_id].bare[dev.device_id] = dev.keys
                read[dev.user_id].devices[dev.device_id] = dev.keys if dev.display_name is None else {
                    **dev.keys, "unsigned": {"device_display_name": dev.display_name}}
            for user_id, keys in (await self._store.e2ee.cross_signing_keys(missing)).items():
                read[user_id].cross.update(keys)
            found.update(read)
            if epoch == self._epoch:
                self._keys.update(read)
                while len(self._keys) > KEY_CACHE_USERS:
                    self._keys.popitem(last=False)
        return found

    async def _signatures_by(self, signer_id: str) -> dict[str, dict[str, str]]:
        held = self._signatures.get(signer_id)
        if held is None:
            epoch = self._epoch
            held = await self._store.e2ee.signatures_by(signer_id)
            if epoch == self._epoch:
                self._signatures[signer_id] = held
                if len(self._signatures) > KEY_CACHE_USERS:
                    self._signatures.popitem(last=False)
        return held

    async def store_device_keys(self, user_id: str, device_id: str, keys: dict[str, Any]) -> None:
        """Keep checked keys (`check_device_keys`); a change is announced, the same keys again are not."""
        held = await self._store.e2ee.device_keys(user_id, device_id)
        if held != keys:
            stream = await self._store.e2ee.set_device_keys(user_id, device_id, keys)
            await self._lists.announce(user_id, stream, [device_id])

    async def query(self, requester: str | None, wanted: object, timeout: object,
                    with_display_names: bool = True) -> dict[str, Any]:
        """/keys/query (`requester` a local user) or, with `requester` None, a federation query
        (local users only)."""
        if not isinstance(wanted, dict) or not all(
                isinstance(u, str) and isinstance(d, list) and all(isinstance(i, str) for i in d)
                for u, d in wanted.items()):
            raise bad_json("device_keys must map user IDs to lists of device IDs")
        if len(wanted) > MAX_QUERY_USERS:
            raise MatrixError(400, "M_LIMIT_EXCEEDED", f"at most {MAX_QUERY_USERS} users per query")
        local = [u for u in wanted if self._lists.is_local(u)]
        remote = [u for u in wanted if not self._lists.is_local(u)] if requester is not None else []
        tracked = await self._store.e2ee.tracked_remote(remote, self._server_name) if remote else set()
        from_db = local + sorted(tracked)
        known = set(from_db)
        result: dict[str, Any] = {"device_keys": {u: {} for u in wanted if u in known},
                                  "failures": {}, "master_keys": {}, "self_signing_keys": {}}
        if requester is not None:
            result["user_signing_keys"] = {}
        held = await self._held(from_db)
        sigs = await self._signatures_by(requester) if requester is not None else {}
        for user_id, keys in held.items():
            devices = keys.devices if with_display_names else keys.bare
            only = wanted.get(user_id)
            result["device_keys"][user_id] = {d: k for d, k in devices.items() if d in only} if only else devices
            _add_cross_signing(result, requester, user_id, keys.cross, sigs.get(user_id))
        untracked = [u for u in remote if u not in tracked]
        if untracked and self.remote is not None:
            await self._query_remote(result, untracked, wanted, remote_timeout(timeout))
        return result

    async def _query_remote(self, result: dict[str, Any], user_ids: Sequence[str], wanted: dict[str, Any],
                            timeout_ms: int) -> None:
        assert self.remote is not None
        remote = self.remote
        by_server: dict[str, dict[str, list[str]]] = defaultdict(dict)
        for user_id in user_ids:
            by_server[server_of(user_id)][user_id] = wanted[user_id]

        async def ask(server: str, query: dict[str, list[str]]) -> None:
            try:
                body = await asyncio.wait_for(remote.query_keys(server, query, timeout_ms), timeout_ms / 1000)
            except Exception as e:  # noqa: BLE001 - any failure of that server is its entry in `failures`
                log.info("keys query to %s failed: %s", server, e)
                result["failures"][server] = {"errcode": "M_UNAVAILABLE", "error": f"{server} did not answer"}
                return
            _merge_remote(result, server, query, body)

        await asyncio.gather(*(ask(s, q) for s, q in by_server.items()))


def _add_cross_signing(result: dict[str, Any], requester: str | None, user_id: str, cross: dict[str, dict[str, Any]],
                       requester_sigs: dict[str, str] | None) -> None:
    """The user's cross-signing keys: the user-signing key only to its owner, and the requester's own
    signatures of the master key (nobody else's) added to it."""
    master = cross.get("master")
    if master is not None:
        if requester is not None and requester_sigs:
            signatures = master.get("signatures", {})
            master = {**master, "signatures": {**signatures,
                                               requester: {**signatures.get(requester, {}), **requester_sigs}}}
        result["master_keys"][user_id] = master
    if "self_signing" in cross:
        result["self_signing_keys"][user_id] = cross["self_signing"]
    if "user_signing" in cross and user_id == requester:
        result["user_signing_keys"][user_id] = cross["user_signing"]


def _merge_remote(result: dict[str, Any], server: str, query: dict[str, list[str]], body: Any) -> None:
    """Take from a server's answer only keys of its own users that were asked for."""
    if not isinstance(body, dict):
        return
    devices = body.get("device_keys")
    if isinstance(devices, dict):
        for user_id, by_device in devices.items():
            if user_id not in query or server_of(user_id) != server or not isinstance(by_device, dict):
                continue
            result["device_keys"][user_id] = {
                d: k for d, k in by_device.items()
                if isinstance(k, dict) and k.get("user_id") == user_id and k.get("device_id") == d}
    for section_name in ("master_keys", "self_signing_keys"):
        section = body.get(section_name)
        if isinstance(section, dict):
            for user_id, key in section.items():
                if user_id in query and server_of(user_id) == server and isinstance(key, dict) \
                        and key.get("user_id") == user_id:
                    result[section_name][user_id] = key
