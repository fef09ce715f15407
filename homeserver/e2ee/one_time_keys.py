"""One-time and fallback keys: uploaded by a device, each one-time key handed out once only.

A claim takes a one-time key with a single atomic statement (storage/e2ee.py), so concurrent
claims, in one process or several, never get the same key; when none is left the device's
fallback key is handed out (and marked used, so the device knows to make a new one).
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from homeserver.e2ee.device_keys import MAX_KEY_ID_LENGTH, RemoteKeys, invalid, remote_timeout
from homeserver.e2ee.device_lists import DeviceLists
from homeserver.e2ee.signing import verify_key_signature
from homeserver.errors import MatrixError, bad_json
from homeserver.events.auth_rules import server_of
from homeserver.sync.notifier import Notifier
from storage import json_text
from storage.store import Store

log = logging.getLogger("whispr.e2ee")

MAX_KEYS_PER_UPLOAD = 1_000
# A device may hold this many unclaimed one-time keys (clients keep about 50).
MAX_ONE_TIME_KEYS_PER_DEVICE = 10_000
MAX_CLAIM_DEVICES = 10_000
# Devices remembered to have run out of one-time keys (of some algorithm); forgetting is always safe.
KNOWN_EMPTY_SIZE = 100_000
# Always reported, even at zero: older clients count on it.
SIGNED_CURVE25519 = "signed_curve25519"


@dataclass(frozen=True)
class UploadPlan:
    """One-time and fallback keys of an upload, checked, waiting to be stored."""

    user_id: str
    device_id: str
    one_time: list[tuple[str, str, Any]]
    fallback: list[tuple[str, str, Any]]


def _parse_keys(raw: object, what: str) -> list[tuple[str, str, Any]]:
    """{"<algorithm>:<key ID>": key} as (algorithm, key ID, key)."""
    if raw is None:
        return []
    if not isinstance(raw, dict):
        raise bad_json(f"{what} must be an object")
    if len(raw) > MAX_KEYS_PER_UPLOAD:
        raise MatrixError(400, "M_LIMIT_EXCEEDED", f"at most {MAX_KEYS_PER_UPLOAD} {what} per upload")
    parsed = []
    for name, key in raw.items():
        algorithm, sep, key_id = name.partition(":")
        if not sep or not algorithm or not key_id or len(name) > MAX_KEY_ID_LENGTH:
            raise bad_json(f"{what} names must be '<algorithm>:<key ID>'")
        if not isinstance(key, str) and not (isinstance(key, dict) and isinstance(key.get("key"), str)):
            raise bad_json(f"{what} values must be a key string or an object with a 'key'")
        parsed.append((algorithm, key_id, key))
    return parsed


def _check_signed(keys: list[tuple[str, str, Any]], user_id: str, device_id: str,
                  device_keys: dict[str, Any] | None) -> None:
    """Signed keys must be signed by the device (when its identity key is known)."""
    if device_keys is None:
        return
    key_id = f"ed25519:{device_id}"
    public = (device_keys.get("keys") or {}).get(key_id)
    for algorithm, kid, key in keys:
        if isinstance(key, dict) and algorithm.startswith("signed_") \
                and not verify_key_signature(key, user_id, key_id, public):
            raise invalid(f"key {algorithm}:{kid} is not signed by {key_id}")


class OneTimeKeys:
    def __init__(self, store: Store, lists: DeviceLists, notifier: Notifier) -> None:
        self._store = store
        self._lists = lists
        self._notifier = notifier
        # Devices whose counts moved since their last sync reported them (claims by others,
        # their own uploads); relayed between processes by the notifier.
        self._moved: set[tuple[str, str]] = set()
        # Devices a claim found without one-time keys (per algorithm), so the next claims go straight
        # to the fallback key, as long as no upload was heard of since: every upload, in any process,
        # is announced ("otk_counts" with `uploaded`) after it is stored. `_uploads` counts them, so
        # a claim that raced an upload remembers nothing.
        self._known_empty: dict[tuple[str, str], set[str]] = {}
        self._uploads = 0
        notifier.on_handler("otk_counts", self._on_moved)
        self.remote: RemoteKeys | None = None

    def _on_moved(self, msg: dict[str, Any]) -> None:
        uploaded = bool(msg.get("uploaded"))
        if uploaded:
            self._uploads += 1
        for user_id, device_id in msg.get("devices", []):
            self._moved.add((user_id, device_id))
            if uploaded:
                self._known_empty.pop((user_id, device_id), None)

    async def _mark_moved(self, devices: list[tuple[str, str]], uploaded: bool = False) -> None:
        if devices:
            await self._notifier.publish("otk_counts", {"devices": devices, "uploaded": uploaded})

    def take_moved(self, user_id: str, device_id: str) -> bool:
        key = (user_id, device_id)
        if key in self._moved:
            self._moved.discard(key)
            return True
        return False

    async def prepare(self, user_id: str, device_id: str, one_time: object, fallback: object,
                      device_keys: dict[str, Any] | None) -> UploadPlan:
        """Check an upload's one-time and fallback keys (nothing is stored yet): what to store."""
        otks = _parse_keys(one_time, "one_time_keys")
        fallbacks = _parse_keys(fallback, "fallback_keys")
        if not otks and not fallbacks:
            return UploadPlan(user_id, device_id, [], [])
        if device_keys is None:
            device_keys = await self._store.e2ee.device_keys(user_id, device_id)
        _check_signed(otks + fallbacks, user_id, device_id, device_keys)
        if len({a for a, _, _ in fallbacks}) != len(fallbacks):
            raise invalid("at most one fallback key per algorithm")
        new = []
        if otks:
            held = await self._store.e2ee.one_time_keys(user_id, device_id, [(a, k) for a, k, _ in otks])
            for algorithm, kid, key in otks:
                before = held.get((algorithm, kid))
                if before is None:
                    new.append((algorithm, kid, key))
                elif json_text.load(before) != key:  # by value: older rows may be spelled otherwise
                    raise invalid(f"one-time key {algorithm}:{kid} already exists with other content")
            counts, _ = await self._store.e2ee.key_counts(user_id, device_id)
            if sum(counts.values()) + len(new) > MAX_ONE_TIME_KEYS_PER_DEVICE:
                raise MatrixError(400, "M_LIMIT_EXCEEDED",
                                  f"a device may hold at most {MAX_ONE_TIME_KEYS_PER_DEVICE} one-time keys")
        return UploadPlan(user_id, device_id, new, fallbacks)

    async def store(self, plan: UploadPlan) -> None:
        if plan.one_time:
            await self._store.e2ee.add_one_time_keys(plan.user_id, plan.device_id, plan.one_time)
        if plan.fallback:
            await self._store.e2ee.set_fallback_keys(plan.user_id, plan.device_id, plan.fallback)
        if plan.one_time or plan.fallback:
            await self._mark_moved([(plan.user_id, plan.device_id)], uploaded=True)

    async def counts(self, user_id: str, device_id: str) -> tuple[dict[str, int], list[str]]:
        counts, unused_fallback = await self._store.e2ee.key_counts(user_id, device_id)
        counts.setdefault(SIGNED_CURVE25519, 0)
        return counts, unused_fallback

    async def claim(self, wanted: object, timeout: object, local_only: bool = False) -> dict[str, Any]:
        """/keys/claim, or with `local_only` the federation endpoint (our users only)."""
        if not isinstance(wanted, dict) or not all(
                isinstance(u, str) and isinstance(d, dict)
                and all(isinstance(i, str) and isinstance(a, str) for i, a in d.items())
                for u, d in wanted.items()):
            raise bad_json("one_time_keys must map user IDs to {device ID: algorithm}")
        if sum(len(d) for d in wanted.values()) > MAX_CLAIM_DEVICES:
            raise MatrixError(400, "M_LIMIT_EXCEEDED", f"at most {MAX_CLAIM_DEVICES} devices per claim")
        result: dict[str, Any] = {"one_time_keys": {}, "failures": {}}
        remote: dict[str, dict[str, dict[str, str]]] = defaultdict(dict)
        local: list[tuple[str, str, str]] = []
        for user_id, devices in wanted.items():
            if not self._lists.is_local(user_id):
                if not local_only:
                    remote[server_of(user_id)][user_id] = devices
                continue
            local += [(user_id, device_id, algorithm) for device_id, algorithm in devices.items()]
        claimed = await self._claim_local(local) if local else {}
        for (user_id, device_id, algorithm), (key_id, key) in claimed.items():
            result["one_time_keys"].setdefault(user_id, {})[device_id] = {f"{algorithm}:{key_id}": key}
        await self._mark_moved([(u, d) for u, d, _ in claimed])
        if remote and self.remote is not None:
            await self._claim_remote(result, remote, remote_timeout(timeout))
        return result

    async def _claim_local(self, wanted: list[tuple[str, str, str]]
                           ) -> dict[tuple[str, str, str], tuple[str, dict[str, Any]]]:
        uploads = self._uploads
        empty = [w for w in wanted if w[2] in self._known_empty.get((w[0], w[1]), ())]
        claimed, without = await self._store.e2ee.claim_many(wanted, empty)
        if self._uploads == uploads and without:
            if len(self._known_empty) > KNOWN_EMPTY_SIZE:
                self._known_empty.clear()
            for user_id, device_id, algorithm in without:
                self._known_empty.setdefault((user_id, device_id), set()).add(algorithm)
        return claimed

    async def _claim_remote(self, result: dict[str, Any], by_server: dict[str, dict[str, dict[str, str]]],
                            timeout_ms: int) -> None:
        assert self.remote is not None
        remote = self.remote

        async def ask(server: str, query: dict[str, dict[str, str]]) -> None:
            try:
                body = await asyncio.wait_for(remote.claim_keys(server, query, timeout_ms), timeout_ms / 1000)
            except Exception as e:  # noqa: BLE001 - any failure of that server is its entry in `failures`
                log.info("keys claim to %s failed: %s", server, e)
                result["failures"][server] = {"errcode": "M_UNAVAILABLE", "error": f"{server} did not answer"}
                return
            keys = body.get("one_time_keys") if isinstance(body, dict) else None
            if not isinstance(keys, dict):
                return
            for user_id, by_device in keys.items():
                if user_id in query and server_of(user_id) == server and isinstance(by_device, dict):
                    result["one_time_keys"][user_id] = {
                        d: k for d, k in by_device.items() if d in query[user_id] and isinstance(k, dict)}

        await asyncio.gather(*(ask(s, q) for s, q in by_server.items()))

