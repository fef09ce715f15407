"""Server keys: publication, fetching and caching other servers' keys, forged documents, rotation, notary.

Every "server" here is a real aiohttp app serving HTTPS on a loopback port, with certificates
from a throwaway CA made with `cryptography`; the key rings cache in real databases (SQLite, and
PostgreSQL when WHISPR_TEST_POSTGRES is set). The helpers at the top are shared with
test_federation_auth.py and test_federation_client.py.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import socket
import ssl
import stat
import subprocess
import sys
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable

import aiohttp
import pytest
import yaml
from aiohttp import web
from signedjson.key import generate_signing_key, get_verify_key
from signedjson.sign import sign_json, verify_signed_json
from signedjson.types import SigningKey

from federation.client import FederationClient
from federation.keys import (MAX_KEY_VALIDITY_MS, OLD_KEYS_FILE, KeyRing, KeyUnavailable, SignatureError,
                             load_old_verify_keys, parse_key_document, rotate_signing_key)
from federation.listener import make_federation_app, ssl_context
from federation.request_auth import authenticate_request
from homeserver.clock import now_ms
from homeserver.config import Config, load_config
from homeserver.events.crypto import load_or_create_signing_key, sign_event
from homeserver.events.room_versions import ROOM_V10
from storage.database import open_database
from storage.server_keys import ServerKeyStore
from tests.conftest import POSTGRES_URL, fresh_postgres_database, need

REPO = Path(__file__).resolve().parent.parent
DAY_MS = 24 * 3600 * 1000


# ==== shared helpers =============================================================================

class TestPKI:
    """A throwaway certificate authority and the leaf certificates it issues."""

    __test__ = False

    def __init__(self, directory: Path) -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        self._x509, self._hashes, self._serialization, self._ec = x509, hashes, serialization, ec
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self._key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Whispr test CA")])
        now = datetime.now(timezone.utc)
        self._name = name
        self.cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                     .public_key(self._key.public_key()).serial_number(x509.random_serial_number())
                     .not_valid_before(now - timedelta(hours=1)).not_valid_after(now + timedelta(days=2))
                     .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                     .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                                  content_commitment=False, key_encipherment=False,
                                                  data_encipherment=False, key_agreement=False,
                                                  encipher_only=False, decipher_only=False), critical=True)
                     .add_extension(x509.SubjectKeyIdentifier.from_public_key(self._key.public_key()),
                                    critical=False)
                     .sign(self._key, hashes.SHA256()))
        self.ca_path = directory / "ca.pem"
        self.ca_path.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))
        self._count = 0

    def issue(self, *names: str) -> tuple[Path, Path]:
        """A leaf certificate for DNS names / IP addresses, signed by the CA: (cert path, key path)."""
        x509, hashes, serialization, ec = self._x509, self._hashes, self._serialization, self._ec
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

        key = ec.generate_private_key(ec.SECP256R1())
        sans: list[Any] = []
        for n in names:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(n)))
            except ValueError:
                sans.append(x509.DNSName(n))
        now = datetime.now(timezone.utc)
        cert = (x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
                .issuer_name(self._name).public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - timedelta(hours=1)).not_valid_after(now + timedelta(days=1))
                .add_extension(x509.SubjectAlternativeName(sans), critical=False)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
                .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()),
                               critical=False)
                .sign(self._key, hashes.SHA256()))
        self._count += 1
        cert_path = self.directory / f"leaf{self._count}.crt"
        key_path = self.directory / f"leaf{self._count}.key"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
        return cert_path, key_path

    def server_context(self, *names: str) -> ssl.SSLContext:
        cert, key = self.issue(*names)
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(cert, key)
        return ctx

    def client_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_path))


@pytest.fixture
def pki(tmp_path: Path) -> TestPKI:
    return TestPKI(tmp_path / "pki")


def bound_socket(host: str = "127.0.0.1") -> socket.socket:
    """A listening-ready TCP socket on a free loopback port (so the port is known before serving)."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    return sock


async def serve_tls(app: web.Application, context: ssl.SSLContext,
                    sock: socket.socket | None = None) -> tuple[web.AppRunner, int]:
    """Serve `app` over HTTPS on loopback; returns the runner (clean it up) and the port."""
    sock = sock or bound_socket()
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    await web.SockSite(runner, sock, ssl_context=context).start()
    return runner, sock.getsockname()[1]


def federation_config(tmp_path: Path, server_name: str, pki: TestPKI | None, **federation: Any) -> Config:
    data_dir = tmp_path / ("data-" + server_name.replace(":", "_").replace("[", "").replace("]", ""))
    overrides: dict[str, Any] = {
        "server_name": server_name, "data_dir": str(data_dir),
        "federation": {"allowed_private_ranges": ["127.0.0.0/8", "::1/128"],
                       "tls_ca_file": str(pki.ca_path) if pki else "", **federation},
    }
    return load_config(None, environ={}, overrides=overrides)


StoreFactory = Callable[[], Awaitable[ServerKeyStore]]


async def _store_factory(engine: str, tmp_path: Path) -> AsyncIterator[StoreFactory]:
    dbs: list[Any] = []
    drops: list[Callable[[], Any]] = []

    async def make() -> ServerKeyStore:
        if engine == "sqlite":
            db = await open_database("sqlite", path=str(tmp_path / f"keys{len(dbs)}.db"))
        else:
            url, drop = await fresh_postgres_database()
            drops.append(drop)
            db = await open_database("postgres", url=url, pool_min=1, pool_max=2)
        dbs.append(db)
        return ServerKeyStore(db)

    try:
        yield make
    finally:
        for db in dbs:
            await db.close()
        for drop in drops:
            await drop()


@pytest.fixture(params=["sqlite", "postgres"])
async def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[StoreFactory]:
    """New, migrated key stores on the engine under test."""
    if request.param == "postgres":
        need(POSTGRES_URL, "postgres")
    async for factory in _store_factory(request.param, tmp_path):
        yield factory


@pytest.fixture
async def make_sqlite_store(tmp_path: Path) -> AsyncIterator[StoreFactory]:
    async for factory in _store_factory("sqlite", tmp_path):
        yield factory


@dataclass
class PeerState:
    config: Config
    keyring: KeyRing


@dataclass
class Peer:
    """One homeserver's federation side: keys, key ring, client, and an HTTPS app on loopback."""

    server_name: str
    port: int
    config: Config
    signing_key: SigningKey
    keyring: KeyRing
    client: FederationClient
    runner: web.AppRunner
    requests: list[dict[str, Any]] = field(default_factory=list)

    def requests_to(self, path: str) -> list[dict[str, Any]]:
        return [r for r in self.requests if r["path"] == path]

    async def close(self) -> None:
        if self.client is not None:
            await self.client.close()
            await self.runner.cleanup()
            self.client = None  # type: ignore[assignment]


async def echo_authenticated(request: web.Request) -> web.Response:
    """A federation endpoint for tests: authenticate, then say who asked and what arrived."""
    peer_state: PeerState = request.app[PEER_STATE]
    origin = await authenticate_request(request, peer_state.keyring, peer_state.config.server_name)
    raw = await request.read()
    return web.json_response({"origin": origin, "uri": request.raw_path, "method": request.method,
                              "query": dict(request.query), "path": request.path,
                              "content": (await request.json()) if raw else None})


PEER_STATE = web.AppKey("peer_state", PeerState)


async def start_peer(tmp_path: Path, pki: TestPKI, store: ServerKeyStore, *, host: str = "127.0.0.1",
                     signing_key: SigningKey | None = None, refetch_interval_s: float = 30.0,
                     validity_s: int | None = None, extra_routes: Callable[[web.Application], None] | None = None,
                     **federation: Any) -> Peer:
    sock = bound_socket("127.0.0.1")
    port = sock.getsockname()[1]
    server_name = f"{host}:{port}"
    config = federation_config(tmp_path, server_name, pki, **federation)
    config.data_path.mkdir(parents=True, exist_ok=True)
    key = signing_key or load_or_create_signing_key(config.data_path / "signing.key")
    client = FederationClient(server_name, key, config.federation)
    await client.start()
    keyring = KeyRing.from_config(config, key, store, client)
    if validity_s is not None:
        keyring._validity_ms = validity_s * 1000  # noqa: SLF001 (test knob beyond the config's bounds)
    keyring._refetch_interval_ms = int(refetch_interval_s * 1000)  # noqa: SLF001
    state = PeerState(config, keyring)
    seen: list[dict[str, Any]] = []

    @web.middleware
    async def record(request: web.Request, handler: Any) -> web.StreamResponse:
        seen.append({"method": request.method, "path": request.path, "raw_path": request.raw_path,
                     "headers": dict(request.headers)})
        return await handler(request)

    app = make_federation_app(lambda: state)
    app.middlewares.insert(0, record)
    app[PEER_STATE] = state
    for method in ("GET", "PUT", "POST"):
        app.router.add_route(method, "/_matrix/federation/v1/test/{tail:.*}", echo_authenticated)
    if extra_routes:
        extra_routes(app)
    runner, _ = await serve_tls(app, pki.server_context("localhost", "127.0.0.1", host), sock)
    return Peer(server_name, port, config, key, keyring, client, runner, seen)


@pytest.fixture
async def peers(tmp_path: Path, pki: TestPKI, make_sqlite_store: StoreFactory) -> AsyncIterator[
        Callable[..., Awaitable[Peer]]]:
    started: list[Peer] = []

    async def start(store: ServerKeyStore | None = None, **kwargs: Any) -> Peer:
        peer = await start_peer(tmp_path, pki, store or await make_sqlite_store(), **kwargs)
        started.append(peer)
        return peer

    try:
        yield start
    finally:
        for peer in started:
            await peer.close()


def message_event(sender_server: str, ts: int, body: str = "hi") -> dict[str, Any]:
    return {"type": "m.room.message", "room_id": f"!room:{sender_server}", "sender": f"@alice:{sender_server}",
            "content": {"msgtype": "m.text", "body": body}, "origin_server_ts": ts, "depth": 3,
            "prev_events": [], "auth_events": [], "hashes": {}, "signatures": {}}


# ==== publication ================================================================================

async def test_key_publication_is_self_signed_and_verifiable(tmp_path: Path, pki: TestPKI,
                                                             make_store: StoreFactory) -> None:
    config = federation_config(tmp_path, "keys.test", None)
    key = load_or_create_signing_key(config.data_path / "signing.key")
    keyring = KeyRing.from_config(config, key, await make_store(), None)
    app = make_federation_app(lambda: PeerState(config, keyring))
    # The listener's own TLS context: a self-signed pair created on first use.
    runner, port = await serve_tls(app, ssl_context(config))
    try:
        assert (config.data_path / "tls.crt").exists()
        assert stat.S_IMODE((config.data_path / "tls.key").stat().st_mode) == 0o600
        insecure = ssl.create_default_context()
        insecure.check_hostname, insecure.verify_mode = False, ssl.CERT_NONE
        async with aiohttp.ClientSession() as http:
            async with http.get(f"https://127.0.0.1:{port}/_matrix/key/v2/server", ssl=insecure) as resp:
                assert resp.status == 200
                assert resp.content_type == "application/json"
                doc = await resp.json()
            # The deprecated form with a key ID (older servers and tools): the same signed
            # document, whichever key ID is named (the spec says all keys are returned).
            for key_id_path in (f"ed25519:{key.version}", "ed25519:other"):
                async with http.get(f"https://127.0.0.1:{port}/_matrix/key/v2/server/{key_id_path}",
                                    ssl=insecure) as resp:
                    assert resp.status == 200 and resp.content_type == "application/json"
                    by_id = await resp.json()
                verify_signed_json(by_id, "keys.test", get_verify_key(key))
                assert by_id["verify_keys"].keys() == {f"ed25519:{key.version}"}
            async with http.get(f"https://127.0.0.1:{port}/_matrix/federation/v1/version", ssl=insecure) as resp:
                assert (await resp.json())["server"]["name"] == "Whispr"
            async with http.get(f"https://127.0.0.1:{port}/_matrix/federation/v1/nothing", ssl=insecure) as resp:
                assert resp.status == 404 and (await resp.json())["errcode"] == "M_UNRECOGNIZED"
    finally:
        await runner.cleanup()
    key_id = f"ed25519:{key.version}"
    assert doc["server_name"] == "keys.test"
    assert list(doc["verify_keys"]) == [key_id]
    assert doc["old_verify_keys"] == {}
    assert abs(doc["valid_until_ts"] - (now_ms() + DAY_MS)) < 60_000
    verify_signed_json(doc, "keys.test", get_verify_key(key))
    [parsed] = parse_key_document(doc, "keys.test", now_ms())
    assert parsed.key_id == key_id and parsed.expired_ts is None


# ==== fetching and caching =======================================================================

async def test_remote_key_is_fetched_once_then_cached(peers: Callable[..., Awaitable[Peer]],
                                                      make_store: StoreFactory) -> None:
    origin = await peers()
    store = await make_store()
    asker = await peers(store=store)
    key_id = origin.keyring.key_id

    verify_key = await asker.keyring.get_verify_key(origin.server_name, key_id)
    assert verify_key.encode() == get_verify_key(origin.signing_key).encode()
    fetches = origin.requests_to("/_matrix/key/v2/server")
    assert len(fetches) == 1
    assert "Authorization" not in fetches[0]["headers"]  # key fetches are not signed
    assert fetches[0]["headers"]["Host"] == origin.server_name

    # again: from memory
    await asker.keyring.get_verify_key(origin.server_name, key_id, now_ms())
    # a fresh key ring over the same database: from the database
    fresh = KeyRing(asker.server_name, asker.signing_key, store, asker.client)
    await fresh.get_verify_key(origin.server_name, key_id, now_ms())
    assert len(origin.requests_to("/_matrix/key/v2/server")) == 1

    cached = await store.get(origin.server_name, key_id)
    assert cached is not None and cached.expired_ts is None
    assert abs(cached.valid_until_ts - (now_ms() + DAY_MS)) < 60_000
    assert cached.key_json["server_name"] == origin.server_name

    # asked for a key valid later than the cached document says: fetched again (and still too short)
    with pytest.raises(KeyUnavailable, match="not valid at"):
        await fresh.get_verify_key(origin.server_name, key_id, now_ms() + 2 * DAY_MS)
    assert len(origin.requests_to("/_matrix/key/v2/server")) == 2
    # ... and the failed refresh is not repeated at once
    with pytest.raises(KeyUnavailable, match="asked recently"):
        await fresh.get_verify_key(origin.server_name, key_id, now_ms() + 2 * DAY_MS)
    assert len(origin.requests_to("/_matrix/key/v2/server")) == 2


async def test_concurrent_lookups_share_one_fetch(peers: Callable[..., Awaitable[Peer]]) -> None:
    origin, asker = await peers(), await peers()
    keys = await asyncio.gather(*(asker.keyring.get_verify_key(origin.server_name, origin.keyring.key_id)
                                  for _ in range(10)))
    assert len({k.encode() for k in keys}) == 1
    assert len(origin.requests_to("/_matrix/key/v2/server")) == 1


async def test_key_validity_is_capped_at_seven_days(peers: Callable[..., Awaitable[Peer]],
                                                    make_store: StoreFactory) -> None:
    origin = await peers(validity_s=365 * 86400)
    store = await make_store()
    asker = await peers(store=store)
    await asker.keyring.get_verify_key(origin.server_name, origin.keyring.key_id)
    cached = await store.get(origin.server_name, origin.keyring.key_id)
    assert cached is not None
    assert cached.valid_until_ts <= now_ms() + MAX_KEY_VALIDITY_MS
    assert cached.key_json["valid_until_ts"] > now_ms() + 300 * DAY_MS  # the document itself is kept as is
    with pytest.raises(KeyUnavailable):
        await asker.keyring.get_verify_key(origin.server_name, origin.keyring.key_id, now_ms() + 8 * DAY_MS)


async def test_unknown_key_id_and_unreachable_server(peers: Callable[..., Awaitable[Peer]]) -> None:
    origin, asker = await peers(), await peers()
    with pytest.raises(KeyUnavailable, match="publishes no key"):
        await asker.keyring.get_verify_key(origin.server_name, "ed25519:nope")
    closed = bound_socket()  # bound, never listening: connections are refused
    try:
        with pytest.raises(KeyUnavailable, match="cannot get the keys"):
            await asker.keyring.get_verify_key(f"127.0.0.1:{closed.getsockname()[1]}", "ed25519:x")
    finally:
        closed.close()
    with pytest.raises(KeyUnavailable):
        await asker.keyring.get_verify_key(origin.server_name, "rsa:abc")


# ==== forged documents ===========================================================================

def _forgeries(server_name: str, real: SigningKey) -> list[tuple[str, Any]]:
    now = now_ms()
    other = generate_signing_key("forged")
    real_id = f"ed25519:{real.version}"

    def doc(keys: dict[str, SigningKey], name: str = server_name) -> dict[str, Any]:
        return {"server_name": name, "valid_until_ts": now + DAY_MS, "old_verify_keys": {},
                "verify_keys": {kid: {"key": _b64(get_verify_key(k))} for kid, k in keys.items()}}

    # 1. lists the real key ID but with the attacker's key, signed by the attacker
    swapped = sign_json(doc({real_id: other}), server_name, other)
    # 2. lists the real key, but the signature under its ID was made by another key
    wrong_signer = doc({real_id: real})
    wrong_signer["signatures"] = {server_name: {real_id: sign_json(dict(wrong_signer), server_name,
                                                                    _renamed(other, real.version))[
        "signatures"][server_name][real_id]}}
    # 3. properly signed, then changed (a longer validity)
    tampered = sign_json(doc({real_id: real}), server_name, real)
    tampered["valid_until_ts"] += 10 * DAY_MS
    # 4. properly signed by the real key, but for another server name
    elsewhere = sign_json(doc({real_id: real}, "elsewhere.test"), "elsewhere.test", real)
    # 5. two verify keys, only one of which signed
    half = sign_json(doc({real_id: real, "ed25519:second": _renamed(other, "second")}), server_name, real)
    # 6. not signed at all
    unsigned = doc({real_id: real})
    # 7. not an object / no valid_until_ts
    no_validity = sign_json({k: v for k, v in doc({real_id: real}).items() if k != "valid_until_ts"},
                            server_name, real)
    return [("swapped key", swapped), ("wrong signer", wrong_signer), ("tampered", tampered),
            ("other server", elsewhere), ("half signed", half), ("unsigned", unsigned),
            ("array", [1, 2]), ("no validity", no_validity)]


def _b64(verify_key: Any) -> str:
    from signedjson.key import encode_verify_key_base64
    return encode_verify_key_base64(verify_key)


def _renamed(key: SigningKey, version: str) -> SigningKey:
    from signedjson.key import decode_signing_key_base64, encode_signing_key_base64
    return decode_signing_key_base64("ed25519", version, encode_signing_key_base64(key))


async def test_forged_key_documents_are_refused(tmp_path: Path, pki: TestPKI, make_store: StoreFactory,
                                                peers: Callable[..., Awaitable[Peer]]) -> None:
    real = generate_signing_key("real")
    sock = bound_socket()
    server_name = f"127.0.0.1:{sock.getsockname()[1]}"
    forgeries = _forgeries(server_name, real)
    served = {"i": 0}

    async def forged(_request: web.Request) -> web.Response:
        return web.json_response(forgeries[served["i"]][1])

    app = web.Application()
    app.router.add_get("/_matrix/key/v2/server", forged)
    runner, _ = await serve_tls(app, pki.server_context("127.0.0.1"), sock)
    store = await make_store()
    asker = await peers(store=store, refetch_interval_s=0)
    try:
        for i, (what, _doc) in enumerate(forgeries):
            served["i"] = i
            with pytest.raises(KeyUnavailable):
                await asker.keyring.get_verify_key(server_name, "ed25519:real")
            assert await store.for_server(server_name) == [], what
        # and signatures cannot be checked against what was refused
        event = sign_event(message_event(server_name, now_ms()), server_name, real, ROOM_V10)
        with pytest.raises(SignatureError):
            await asker.keyring.verify_event(event, server_name, ROOM_V10)
    finally:
        await runner.cleanup()


# ==== events =====================================================================================

async def test_verify_event_with_fetched_key(peers: Callable[..., Awaitable[Peer]]) -> None:
    origin, asker = await peers(), await peers()
    event = sign_event(message_event(origin.server_name, now_ms()), origin.server_name, origin.signing_key,
                       ROOM_V10)
    await asker.keyring.verify_event(event, origin.server_name, ROOM_V10)
    # the signature covers the redacted event: a content change does not break it (the hash catches that)...
    await asker.keyring.verify_event({**event, "content": {"body": "changed"}}, origin.server_name, ROOM_V10)
    # ... but any change to what survives redaction does
    with pytest.raises(SignatureError, match="bad signature"):
        await asker.keyring.verify_event({**event, "depth": 4}, origin.server_name, ROOM_V10)
    with pytest.raises(SignatureError, match="not signed by"):
        await asker.keyring.verify_event(event, "someone.else", ROOM_V10)
    # our own events verify with our own key, without any fetch
    ours = sign_event(message_event(asker.server_name, now_ms()), asker.server_name, asker.signing_key, ROOM_V10)
    await asker.keyring.verify_event(ours, asker.server_name, ROOM_V10)
    assert asker.requests_to("/_matrix/key/v2/server") == []


# ==== rotation ===================================================================================

async def test_rotation_publishes_old_keys_that_verify_only_older_events(
        tmp_path: Path, pki: TestPKI, make_store: StoreFactory, peers: Callable[..., Awaitable[Peer]]) -> None:
    before = await peers()
    data_dir = before.config.data_path
    old_key, old_id = before.signing_key, before.keyring.key_id
    early = sign_event(message_event(before.server_name, now_ms() - 60_000), before.server_name, old_key, ROOM_V10)
    await before.close()

    expired_ts = now_ms()
    retired, new_id = rotate_signing_key(data_dir, expired_ts)
    assert retired == old_id and new_id != old_id
    assert stat.S_IMODE((data_dir / "signing.key").stat().st_mode) == 0o600
    old_keys = load_old_verify_keys(data_dir / OLD_KEYS_FILE)
    assert list(old_keys) == [old_id] and old_keys[old_id].expired_ts == expired_ts

    # The same server (same data_dir) restarted on a new port with the rotated key.
    new_key = load_or_create_signing_key(data_dir / "signing.key")
    after_config = load_config(None, environ={}, overrides={
        "server_name": before.server_name, "data_dir": str(data_dir),
        "federation": {"allowed_private_ranges": ["127.0.0.0/8"], "tls_ca_file": str(pki.ca_path)}})
    keyring = KeyRing.from_config(after_config, new_key, await make_store(), None)
    app = make_federation_app(lambda: PeerState(after_config, keyring))
    runner, _ = await serve_tls(app, pki.server_context("127.0.0.1"),
                                bound_socket_at(before.port))
    try:
        doc = keyring.server_keys_body()
        assert list(doc["verify_keys"]) == [new_id]
        assert doc["old_verify_keys"] == {old_id: {"key": _b64(get_verify_key(old_key)), "expired_ts": expired_ts}}
        verify_signed_json(doc, before.server_name, get_verify_key(new_key))

        asker = await peers(refetch_interval_s=0)
        # an event signed with the old key before it expired still verifies
        await asker.keyring.verify_event(early, before.server_name, ROOM_V10)
        row = await asker.keyring._store.get(before.server_name, old_id)  # noqa: SLF001
        assert row is not None and row.expired_ts == expired_ts and row.valid_until_ts == expired_ts
        # one claiming a later time does not
        late = sign_event(message_event(before.server_name, expired_ts + 1000), before.server_name, old_key,
                          ROOM_V10)
        with pytest.raises(SignatureError):
            await asker.keyring.verify_event(late, before.server_name, ROOM_V10)
        # nor can the old key sign anything now (requests are checked at the current time)
        with pytest.raises(KeyUnavailable):
            await asker.keyring.verify_json_signature(sign_json({"a": 1}, before.server_name, old_key),
                                                      before.server_name, now_ms())
        # the new key signs both
        fresh = sign_event(message_event(before.server_name, now_ms()), before.server_name, new_key, ROOM_V10)
        await asker.keyring.verify_event(fresh, before.server_name, ROOM_V10)
    finally:
        await runner.cleanup()

    # A second rotation keeps both retired keys.
    second_retired, _ = rotate_signing_key(data_dir)
    assert second_retired == new_id
    assert set(load_old_verify_keys(data_dir / OLD_KEYS_FILE)) == {old_id, new_id}


def bound_socket_at(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    return sock


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WHISPR_")}
    env["PYTHONPATH"] = str(REPO)
    return subprocess.run([sys.executable, "-m", "homeserver", *args], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=60, stdin=subprocess.DEVNULL)


def test_cli_generate_config_writes_tls_pair_and_rotate_signing_key(tmp_path: Path) -> None:
    config_path, data_dir = tmp_path / "whispr.yaml", tmp_path / "data"
    done = _cli("generate-config", "-o", str(config_path), "--server-name", "chat.test:8448",
                "--data-dir", str(data_dir), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert (data_dir / "tls.crt").exists() and stat.S_IMODE((data_dir / "tls.key").stat().st_mode) == 0o600
    config = load_config(config_path, environ={})
    assert config.federation.enabled and config.federation.verify_tls
    ssl_context(config)  # the generated pair loads as the listener's certificate
    from cryptography import x509
    cert = x509.load_pem_x509_certificate((data_dir / "tls.crt").read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "chat.test" in names.get_values_for_type(x509.DNSName)

    first = load_or_create_signing_key(data_dir / "signing.key")
    done = _cli("rotate-signing-key", "--config", str(config_path), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert f"retired ed25519:{first.version}" in done.stdout
    second = load_or_create_signing_key(data_dir / "signing.key")
    assert second.version != first.version
    old = yaml.safe_load((data_dir / OLD_KEYS_FILE).read_text())
    assert old[f"ed25519:{first.version}"]["key"] == _b64(get_verify_key(first))


# ==== notary =====================================================================================

async def test_notary_answers_from_cache_countersigned(peers: Callable[..., Awaitable[Peer]]) -> None:
    origin, notary = await peers(), await peers()
    url = f"https://127.0.0.1:{notary.port}/_matrix/key/v2/query"
    closed = bound_socket()
    unreachable = f"127.0.0.1:{closed.getsockname()[1]}"
    try:
        async with aiohttp.ClientSession() as http:
            ctx = ssl.create_default_context(cafile=str(notary.config.federation.tls_ca_file))
            body = {"server_keys": {origin.server_name: {origin.keyring.key_id: {"minimum_valid_until_ts": now_ms()}},
                                    notary.server_name: {}, unreachable: {}, "not a name!": {}}}
            async with http.post(url, json=body, ssl=ctx) as resp:
                assert resp.status == 200, await resp.text()
                answer = await resp.json()
            async with http.get(f"{url}/{origin.server_name}", ssl=ctx) as resp:
                single = await resp.json()
            async with http.get(f"{url}/{origin.server_name}?minimum_valid_until_ts=x", ssl=ctx) as resp:
                assert resp.status == 400
            async with http.post(url, json={"server_keys": []}, ssl=ctx) as resp:
                assert resp.status == 400 and (await resp.json())["errcode"] == "M_BAD_JSON"
    finally:
        closed.close()
    docs = {d["server_name"]: d for d in answer["server_keys"]}
    assert set(docs) == {origin.server_name, notary.server_name}  # nothing for the unreachable one
    for doc in (docs[origin.server_name], single["server_keys"][0]):
        verify_signed_json(doc, origin.server_name, get_verify_key(origin.signing_key))
        verify_signed_json(doc, notary.server_name, get_verify_key(notary.signing_key))
        parse_key_document(doc, origin.server_name, now_ms())
    verify_signed_json(docs[notary.server_name], notary.server_name, get_verify_key(notary.signing_key))
    assert len(origin.requests_to("/_matrix/key/v2/server")) == 1  # the GET came from the cache


async def test_old_keys_file_errors(tmp_path: Path) -> None:
    path = tmp_path / OLD_KEYS_FILE
    path.write_text(yaml.safe_dump({"ed25519:a": {"key": "x"}}))
    with pytest.raises(ValueError):
        load_old_verify_keys(path)
    assert load_old_verify_keys(tmp_path / "missing.yaml") == {}
    # rotating with no key yet just creates one
    retired, new_id = rotate_signing_key(tmp_path / "fresh")
    assert retired is None and new_id.startswith("ed25519:")
