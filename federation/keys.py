"""Server signing keys: what we publish, what others publish, and checking signatures with them.

Ours: `GET /_matrix/key/v2/server` answers `server_keys_body()`: the current key under
`verify_keys`, keys retired by `rotate-signing-key` under `old_verify_keys` (with the time they
stopped being used), `valid_until_ts` = now + `federation.key_validity_s`, signed by the current key.

Theirs: fetched from the origin itself (`GET https://<server>/_matrix/key/v2/server`, no notary
servers are asked), accepted only when the document names that server and every ed25519 key in
`verify_keys` has signed it, then cached in `server_keys` with `valid_until_ts` capped at
fetch time + 7 days (as room versions 5+ require). An old key is good for signatures made up to
its `expired_ts`, so it verifies events sent before that but never a request now.

Notary: `POST /_matrix/key/v2/query` and `GET /_matrix/key/v2/query/{serverName}` answer from the
cache (fetching what is missing or too old), each origin document countersigned by us.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import os
import re
import secrets
import string
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol, TypeGuard

import yaml
from canonicaljson import encode_canonical_json
from signedjson.key import (decode_verify_key_base64, encode_verify_key_base64, generate_signing_key,
                            get_verify_key, read_signing_keys, write_signing_keys)
from signedjson.sign import SignatureVerifyException, sign_json, verify_signed_json
from signedjson.types import SigningKey, VerifyKey

from homeserver.clock import now_ms
from homeserver.config import Config
from homeserver.events.crypto import EventSignatureError, verify_event_signature
from homeserver.events.room_versions import RoomVersion
from storage.server_keys import ServerKey, ServerKeyStore

log = logging.getLogger("whispr.federation.keys")

KEY_SERVER_PATH = "/_matrix/key/v2/server"
SIGNING_KEY_FILE = "signing.key"
OLD_KEYS_FILE = "old_signing_keys.yaml"
# Room versions 5+: a key is never trusted for more than 7 days past when we fetched it.
MAX_KEY_VALIDITY_MS = 7 * 24 * 3600 * 1000
# After a failed or fruitless fetch, the same key is not fetched again for this long.
DEFAULT_REFETCH_INTERVAL_S = 30.0
_KEY_ID = re.compile(r"^ed25519:[a-zA-Z0-9_]+$")
_MAX_MISSES = 10_000


class SignatureError(Exception):
    """A JSON object or event is not (validly) signed by the server it should come from."""


class KeyUnavailable(SignatureError):
    """We have no usable key for that server and key ID (unknown, too old, or cannot be fetched)."""


class KeyDocumentError(Exception):
    """A fetched key document is malformed, names another server, or is not self-signed."""


class KeyFetcher(Protocol):
    async def get_json(self, destination: str, path: str, query: Mapping[str, Any] | None = None, *,
                       auth: bool = True, timeout: float | None = None) -> Any: ...


@dataclass(frozen=True)
class OldVerifyKey:
    key: VerifyKey
    expired_ts: int


# ---- our keys on disk ---------------------------------------------------------------------------

def _new_key_version(taken: set[str]) -> str:
    while True:
        version = "a_" + "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(4))
        if f"ed25519:{version}" not in taken:
            return version


def load_old_verify_keys(path: Path) -> dict[str, OldVerifyKey]:
    """Keys retired by rotation, from `old_signing_keys.yaml`: {key_id: {key, expired_ts}}."""
    path = Path(path)
    if not path.exists():
        return {}
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of key IDs")
    keys: dict[str, OldVerifyKey] = {}
    for key_id, entry in data.items():
        if not isinstance(key_id, str) or not _KEY_ID.match(key_id) or not isinstance(entry, dict):
            raise ValueError(f"{path}: bad entry {key_id!r}")
        expired_ts = entry.get("expired_ts")
        if not isinstance(expired_ts, int) or isinstance(expired_ts, bool):
            raise ValueError(f"{path}: {key_id} needs an integer expired_ts")
        keys[key_id] = OldVerifyKey(decode_verify_key_base64("ed25519", key_id.split(":", 1)[1], entry["key"]),
                                    expired_ts)
    return keys


def _write_private(path: Path, write: Callable[[Any], None]) -> None:
    """Write a file atomically (temporary file + rename), mode 0600 from the start."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="ascii") as stream:
            write(stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def rotate_signing_key(data_dir: Path, now: int | None = None) -> tuple[str | None, str]:
    """Retire the key in data_dir/signing.key (into old_signing_keys.yaml, expired now) and make a new one.

    Returns (old key ID or None if there was no key, new key ID). A running server keeps signing
    with the key it loaded: restart every worker afterwards.
    """
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    key_path, old_path = data_dir / SIGNING_KEY_FILE, data_dir / OLD_KEYS_FILE
    ts = now_ms() if now is None else now
    old_keys = load_old_verify_keys(old_path)
    current: SigningKey | None = None
    if key_path.exists():
        with key_path.open("r", encoding="ascii") as stream:
            loaded = read_signing_keys(stream)
        current = loaded[0] if loaded else None
    old_id = None
    if current is not None:
        old_id = f"{current.alg}:{current.version}"
        old_keys[old_id] = OldVerifyKey(get_verify_key(current), ts)
        entries = {kid: {"key": encode_verify_key_base64(k.key), "expired_ts": k.expired_ts}
                   for kid, k in sorted(old_keys.items())}
        # The old key is recorded before it is replaced: a crash in between leaves it both current
        # and old, which server_keys_body() tolerates.
        _write_private(old_path, lambda s: yaml.safe_dump(entries, s, sort_keys=True))
    new_key = generate_signing_key(_new_key_version(set(old_keys) | ({old_id} if old_id else set())))
    _write_private(key_path, lambda s: write_signing_keys(s, [new_key]))
    return old_id, f"{new_key.alg}:{new_key.version}"


# ---- key documents ------------------------------------------------------------------------------

def _int(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def parse_key_document(doc: Any, server_name: str, fetched_ts: int) -> list[ServerKey]:
    """The keys of a `/_matrix/key/v2/server` document, after checking it is `server_name`'s own.

    Raises KeyDocumentError unless the document names `server_name`, has an integer
    `valid_until_ts`, at least one ed25519 verify key, and a valid signature by `server_name`
    with every one of them. Keys of other algorithms are ignored.
    """
    if not isinstance(doc, dict):
        raise KeyDocumentError("key document is not a JSON object")
    if doc.get("server_name") != server_name:
        raise KeyDocumentError(f"key document is for {doc.get('server_name')!r}, not {server_name!r}")
    valid_until = doc.get("valid_until_ts")
    if not _int(valid_until):
        raise KeyDocumentError("valid_until_ts is missing or not an integer")
    verify_keys, old_verify_keys = doc.get("verify_keys"), doc.get("old_verify_keys", {})
    if not isinstance(verify_keys, dict) or not isinstance(old_verify_keys, dict):
        raise KeyDocumentError("verify_keys / old_verify_keys must be objects")
    current: dict[str, tuple[VerifyKey, str]] = {}
    for key_id, entry in verify_keys.items():
        if not key_id.startswith("ed25519:"):
            continue
        current[key_id] = _decode_entry(key_id, entry)
    if not current:
        raise KeyDocumentError("no ed25519 key in verify_keys")
    signatures = doc.get("signatures")
    ours = signatures.get(server_name) if isinstance(signatures, dict) else None
    if not isinstance(ours, dict):
        raise KeyDocumentError(f"key document is not signed by {server_name}")
    for key_id, (verify_key, _) in current.items():
        if key_id not in ours:
            raise KeyDocumentError(f"key document is not signed with {key_id}")
        try:
            verify_signed_json(doc, server_name, verify_key)
        except SignatureVerifyException as e:
            raise KeyDocumentError(f"bad self-signature with {key_id}: {e}") from None
    capped = min(valid_until, fetched_ts + MAX_KEY_VALIDITY_MS)
    keys = [ServerKey(server_name, key_id, b64, capped, None, fetched_ts, doc)
            for key_id, (_, b64) in current.items()]
    for key_id, entry in old_verify_keys.items():
        if not key_id.startswith("ed25519:") or key_id in current:
            continue
        try:  # a malformed old key is skipped, it does not spoil the current ones
            _, b64 = _decode_entry(key_id, entry)
        except KeyDocumentError as e:
            log.info("ignoring an old key of %s: %s", server_name, e)
            continue
        expired_ts = entry.get("expired_ts")
        if _int(expired_ts):
            keys.append(ServerKey(server_name, key_id, b64, expired_ts, expired_ts, fetched_ts, doc))
    return keys


def _decode_entry(key_id: str, entry: Any) -> tuple[VerifyKey, str]:
    if not _KEY_ID.match(key_id):
        raise KeyDocumentError(f"bad key ID {key_id!r}")
    b64 = entry.get("key") if isinstance(entry, dict) else None
    if not isinstance(b64, str):
        raise KeyDocumentError(f"key {key_id} has no base64 key")
    try:
        verify_key = decode_verify_key_base64("ed25519", key_id.split(":", 1)[1], b64)
    except Exception:
        raise KeyDocumentError(f"key {key_id} is not a valid ed25519 key") from None
    return verify_key, encode_verify_key_base64(verify_key)


# ---- the key ring -------------------------------------------------------------------------------

class KeyRing:
    def __init__(self, server_name: str, signing_key: SigningKey, store: ServerKeyStore,
                 client: KeyFetcher | None, *, validity_s: int = 86400,
                 old_keys: Mapping[str, OldVerifyKey] | None = None,
                 refetch_interval_s: float = DEFAULT_REFETCH_INTERVAL_S) -> None:
        self.server_name = server_name
        self.signing_key = signing_key
        self.verify_key = get_verify_key(signing_key)
        self.key_id = f"{signing_key.alg}:{signing_key.version}"
        self._store = store
        self._client = client
        self._validity_ms = validity_s * 1000
        self._old_keys = {k: v for k, v in (old_keys or {}).items() if k != self.key_id}
        self._refetch_interval_ms = int(refetch_interval_s * 1000)
        self._memory: dict[tuple[str, str], tuple[VerifyKey, int]] = {}
        self._misses: dict[tuple[str, str], int] = {}
        self._inflight: dict[str, asyncio.Future[list[ServerKey]]] = {}

    @classmethod
    def from_config(cls, config: Config, signing_key: SigningKey, store: ServerKeyStore,
                    client: KeyFetcher | None) -> "KeyRing":
        """The key ring of a server: validity from the config, retired keys from data_dir."""
        return cls(config.server_name, signing_key, store, client, validity_s=config.federation.key_validity_s,
                   old_keys=load_old_verify_keys(config.data_path / OLD_KEYS_FILE))

    # -- publishing --

    def server_keys_body(self) -> dict[str, Any]:
        """Our `/_matrix/key/v2/server` document, freshly signed."""
        body = {
            "server_name": self.server_name,
            "valid_until_ts": now_ms() + self._validity_ms,
            "verify_keys": {self.key_id: {"key": encode_verify_key_base64(self.verify_key)}},
            "old_verify_keys": {kid: {"key": encode_verify_key_base64(old.key), "expired_ts": old.expired_ts}
                                for kid, old in sorted(self._old_keys.items())},
        }
        return sign_json(body, self.server_name, self.signing_key)

    # -- other servers' keys --

    async def get_verify_key(self, server_name: str, key_id: str, minimum_valid_until_ts: int = 0) -> VerifyKey:
        """The key `server_name` signs with under `key_id`, good for signatures made at `minimum_valid_until_ts`.

        From memory, then the database, then the origin server. Raises KeyUnavailable.
        """
        if server_name == self.server_name:
            return self._own_key(key_id, minimum_valid_until_ts)
        if not _KEY_ID.match(key_id):
            raise KeyUnavailable(f"unsupported key ID {key_id!r}")
        hit = self._memory.get((server_name, key_id))
        if hit is not None and hit[1] >= minimum_valid_until_ts:
            return hit[0]
        row = await self._store.get(server_name, key_id)
        if row is not None and row.valid_until_ts >= minimum_valid_until_ts:
            return self._remember(row)
        missed_at = self._misses.get((server_name, key_id))
        if missed_at is not None and now_ms() - missed_at < self._refetch_interval_ms:
            raise KeyUnavailable(f"no usable key {key_id} of {server_name} (asked recently)")
        try:
            keys = await self._fetch(server_name)
        except KeyDocumentError as e:
            self._miss(server_name, key_id)
            raise KeyUnavailable(f"cannot get the keys of {server_name}: {e}") from None
        for key in keys:
            if key.key_id == key_id and key.valid_until_ts >= minimum_valid_until_ts:
                self._misses.pop((server_name, key_id), None)
                return self._remember(key)
        self._miss(server_name, key_id)
        if row is not None or any(k.key_id == key_id for k in keys):
            raise KeyUnavailable(f"key {key_id} of {server_name} is not valid at {minimum_valid_until_ts}")
        raise KeyUnavailable(f"{server_name} publishes no key {key_id}")

    def _own_key(self, key_id: str, minimum_valid_until_ts: int) -> VerifyKey:
        if key_id == self.key_id:
            return self.verify_key
        old = self._old_keys.get(key_id)
        if old is not None and old.expired_ts >= minimum_valid_until_ts:
            return old.key
        raise KeyUnavailable(f"no usable key {key_id} of ours")

    def _remember(self, key: ServerKey) -> VerifyKey:
        verify_key = decode_verify_key_base64("ed25519", key.key_id.split(":", 1)[1], key.verify_key)
        self._memory[(key.server_name, key.key_id)] = (verify_key, key.valid_until_ts)
        return verify_key

    def _miss(self, server_name: str, key_id: str) -> None:
        now = now_ms()
        if len(self._misses) >= _MAX_MISSES:
            self._misses = {k: t for k, t in self._misses.items() if now - t < self._refetch_interval_ms}
            if len(self._misses) >= _MAX_MISSES:
                self._misses.clear()
        self._misses[(server_name, key_id)] = now

    async def _fetch(self, server_name: str) -> list[ServerKey]:
        """Fetch, check and cache the origin's key document; one fetch per server at a time."""
        pending = self._inflight.get(server_name)
        if pending is None:
            pending = asyncio.ensure_future(self._fetch_now(server_name))
            self._inflight[server_name] = pending

            def done(f: asyncio.Future[list[ServerKey]]) -> None:
                self._inflight.pop(server_name, None)
                if not f.cancelled():
                    f.exception()  # retrieved here, so an abandoned fetch logs no warning

            pending.add_done_callback(done)
        return await asyncio.shield(pending)

    async def _fetch_now(self, server_name: str) -> list[ServerKey]:
        from federation.client import FederationClientError

        if self._client is None:
            raise KeyDocumentError("no federation client to fetch keys with")
        try:
            doc = await self._client.get_json(server_name, KEY_SERVER_PATH, auth=False)
        except FederationClientError as e:
            raise KeyDocumentError(str(e)) from None
        fetched_ts = now_ms()
        keys = parse_key_document(doc, server_name, fetched_ts)
        await self._store.store(keys)
        for key in keys:
            self._remember(key)
        log.info("fetched keys of %s: %s", server_name, ", ".join(k.key_id for k in keys))
        return keys

    # -- checking signatures --

    async def verify_json_signature(self, obj: Mapping[str, Any], server_name: str, at_ts: int) -> None:
        """Raise SignatureError (KeyUnavailable if no key could be had) unless `server_name`
        signed `obj` with a key valid at `at_ts`."""
        def check(verify_key: VerifyKey) -> None:
            try:
                verify_signed_json(dict(obj), server_name, verify_key)
            except SignatureVerifyException as e:
                raise SignatureError(str(e)) from None

        await self._verify(obj, server_name, at_ts, check)

    async def verify_event(self, pdu: Mapping[str, Any], server_name: str, room_version: RoomVersion) -> None:
        """Raise SignatureError unless `server_name` signed the (redacted) event with a key valid
        at its origin_server_ts (room versions 5+; before, with any key it published)."""
        ts = pdu.get("origin_server_ts")
        if not _int(ts):
            raise SignatureError("event has no integer origin_server_ts")
        if not room_version.enforce_key_validity:
            ts = 0  # before v5 a key counts whatever its valid_until_ts

        def check(verify_key: VerifyKey) -> None:
            try:
                verify_event_signature(dict(pdu), server_name, verify_key, room_version)
            except EventSignatureError as e:
                raise SignatureError(str(e)) from None

        await self._verify(pdu, server_name, ts, check)

    async def _verify(self, obj: Mapping[str, Any], server_name: str, at_ts: int,
                      check: Callable[[VerifyKey], None]) -> None:
        signatures = obj.get("signatures")
        theirs = signatures.get(server_name) if isinstance(signatures, dict) else None
        if not isinstance(theirs, dict) or not theirs:
            raise SignatureError(f"not signed by {server_name}")
        key_ids = sorted(k for k in theirs if isinstance(k, str) and _KEY_ID.match(k))
        if not key_ids:
            raise SignatureError(f"no ed25519 signature by {server_name}")
        problems = []
        for key_id in key_ids:
            try:
                verify_key = await self.get_verify_key(server_name, key_id, at_ts)
            except KeyUnavailable as e:
                problems.append(str(e))
                continue
            try:
                check(verify_key)
            except SignatureError as e:
                raise SignatureError(f"bad signature by {server_name} with {key_id}: {e}") from None
            return
        raise KeyUnavailable("; ".join(problems))

    # -- notary --

    async def query_keys(self, criteria: Mapping[str, Mapping[str, int | None]],
                         minimum_valid_until_ts: int | None = None) -> dict[str, Any]:
        """The body of a key query answer: {"server_keys": [documents countersigned by us]}.

        `criteria` maps server names to {key_id: minimum_valid_until_ts or None}; an empty
        mapping asks for whatever current keys the server has. Missing minimums mean
        `minimum_valid_until_ts`, by default now. Servers we cannot reach and have nothing
        cached for are left out.
        """
        minimum = now_ms() if minimum_valid_until_ts is None else minimum_valid_until_ts
        results = await asyncio.gather(*(self._notary_docs(server, wanted, minimum)
                                         for server, wanted in criteria.items()))
        return {"server_keys": [doc for docs in results for doc in docs]}

    async def _notary_docs(self, server_name: str, wanted: Mapping[str, int | None], minimum: int) -> list[dict]:
        if server_name == self.server_name:
            return [self.server_keys_body()]
        rows = await self._store.for_server(server_name)
        if self._needs_refresh(rows, wanted, minimum):
            missed_at = self._misses.get((server_name, "*"))
            if missed_at is None or now_ms() - missed_at >= self._refetch_interval_ms:
                try:
                    await self._fetch(server_name)
                except KeyDocumentError as e:
                    log.info("notary: cannot refresh the keys of %s: %s", server_name, e)
                    self._miss(server_name, "*")
                rows = await self._store.for_server(server_name)
        docs: list[dict] = []
        seen: set[bytes] = set()
        for row in rows:  # most recently fetched first
            encoded = encode_canonical_json(row.key_json)
            if encoded not in seen:
                seen.add(encoded)
                docs.append(sign_json(copy.deepcopy(row.key_json), self.server_name, self.signing_key))
        return docs

    @staticmethod
    def _needs_refresh(rows: list[ServerKey], wanted: Mapping[str, int | None], minimum: int) -> bool:
        by_id = {r.key_id: r for r in rows}
        if wanted:
            return any(key_id not in by_id or by_id[key_id].valid_until_ts < (min_ts or minimum)
                       for key_id, min_ts in wanted.items())
        return not any(r.expired_ts is None and r.valid_until_ts >= minimum for r in rows)
