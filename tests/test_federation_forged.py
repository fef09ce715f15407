"""Forged and malformed federation input: dropped, redacted, rejected or soft-failed, never accepted.

A hand-built peer (its own ed25519 key, a TLS key server on loopback) joins a room on a
running Whispr and sends events made by hand.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from pathlib import Path
from typing import Any, AsyncIterator

import aiohttp
import pytest
from aiohttp import web
from signedjson.key import encode_verify_key_base64, generate_signing_key, get_verify_key
from signedjson.sign import sign_json

from bench.servers import RunningServer, free_port, start_whispr
from federation.client import FederationClient, FederationError
from federation.listener import generate_self_signed_cert
from homeserver.config import FederationConfig
from homeserver.event_crypto import compute_event_id, sign_event
from homeserver.room_versions import ROOM_V10
from tests.test_federation_whispr import Client, federation_config


class Peer:
    """A minimal remote homeserver: publishes its key, accepts transactions, signs what we tell it."""

    def __init__(self, tmp: Path) -> None:
        self.port = free_port()
        self.name = f"127.0.0.1:{self.port}"
        self.key = generate_signing_key("p1")
        self.tmp = tmp
        self.runner: web.AppRunner | None = None
        self.client = FederationClient(self.name, self.key, FederationConfig(
            verify_tls=False, allowed_private_ranges=["127.0.0.0/8"]))

    async def start(self) -> None:
        cert, key = self.tmp / "peer.crt", self.tmp / "peer.key"
        generate_self_signed_cert(cert, key, ["127.0.0.1"])
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert, key)
        app = web.Application()
        app.router.add_get("/_matrix/key/v2/server", self._keys)
        app.router.add_put("/_matrix/federation/v1/send/{txn}", self._send)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port, ssl_context=context).start()
        await self.client.start()

    async def close(self) -> None:
        await self.client.close()
        if self.runner is not None:
            await self.runner.cleanup()

    async def _keys(self, _request: web.Request) -> web.Response:
        doc = {"server_name": self.name, "valid_until_ts": int(time.time() * 1000) + 3_600_000,
               "verify_keys": {f"ed25519:{self.key.version}": {"key": encode_verify_key_base64(get_verify_key(self.key))}},
               "old_verify_keys": {}}
        return web.json_response(sign_json(doc, self.name, self.key))

    async def _send(self, _request: web.Request) -> web.Response:
        return web.json_response({"pdus": {}})

    def event(self, room: str, sender: str, etype: str, content: dict[str, Any], prev: list[str],
              auth: list[str], depth: int, state_key: str | None = None, key: Any = None) -> dict[str, Any]:
        pdu: dict[str, Any] = {"room_id": room, "sender": sender, "type": etype, "content": content,
                               "prev_events": prev, "auth_events": auth, "depth": depth,
                               "origin_server_ts": int(time.time() * 1000)}
        if state_key is not None:
            pdu["state_key"] = state_key
        return sign_event(pdu, self.name, key or self.key, ROOM_V10)

    async def send(self, destination: str, pdus: list[dict[str, Any]], txn: str) -> dict[str, Any]:
        return await self.client.put_json(destination, f"/_matrix/federation/v1/send/{txn}",
                                          {"origin": self.name, "origin_server_ts": int(time.time() * 1000),
                                           "pdus": pdus, "edus": []})


@pytest.fixture
async def setup(tmp_path: Path) -> AsyncIterator[tuple[RunningServer, Peer]]:
    peer = Peer(tmp_path)
    await peer.start()
    port = free_port()
    server = await asyncio.to_thread(start_whispr, server_name=f"127.0.0.1:{port}", extra_config=federation_config())
    try:
        yield server, peer
    finally:
        await asyncio.to_thread(server.stop)
        await peer.close()


async def test_forged_events_never_count(setup: tuple[RunningServer, Peer]) -> None:
    server, peer = setup
    async with aiohttp.ClientSession() as session:
        alice = await Client.register(session, server, "alice")
        room = (await alice.call("POST", "/createRoom", json={"preset": "public_chat", "room_version": "10"}))["room_id"]
        mallory = f"@mallory:{peer.name}"

        # The peer joins the room the way any server does.
        template = await peer.client.get_json(server.server_name, f"/_matrix/federation/v1/make_join/{room}/{mallory}",
                                              {"ver": ["10"]})
        join = {k: v for k, v in template["event"].items() if k not in ("origin",)}
        join["origin_server_ts"] = int(time.time() * 1000)
        join = sign_event(join, peer.name, peer.key, ROOM_V10)
        join_id = compute_event_id(join, ROOM_V10)
        resp = await peer.client.put_json(server.server_name, f"/_matrix/federation/v2/send_join/{room}/{join_id}", join)
        assert any(e["type"] == "m.room.create" for e in resp["state"])

        state = {(e["type"], e["state_key"]): e["event_id"] for e in await alice.call("GET", f"/rooms/{room}/state")}
        levels_before = await alice.call("GET", f"/rooms/{room}/state/m.room.power_levels")
        auth = [state[("m.room.create", "")], state[("m.room.power_levels", "")], join_id]
        depth = join["depth"]

        # A valid message is accepted.
        ok_ev = peer.event(room, mallory, "m.room.message", {"msgtype": "m.text", "body": "hello"}, [join_id], auth,
                           depth + 1)
        ok_id = compute_event_id(ok_ev, ROOM_V10)
        result = await peer.send(server.server_name, [ok_ev], "t1")
        assert result["pdus"][ok_id] == {}
        assert (await alice.call("GET", f"/rooms/{room}/event/{ok_id}"))["content"]["body"] == "hello"

        # Tampered content under the old hash: kept, but only in its redacted form.
        tampered = peer.event(room, mallory, "m.room.message", {"msgtype": "m.text", "body": "original"}, [ok_id],
                              auth, depth + 2)
        tampered_id = compute_event_id(tampered, ROOM_V10)
        tampered["content"] = {"msgtype": "m.text", "body": "changed in transit"}
        await peer.send(server.server_name, [tampered], "t2")
        seen = await alice.call("GET", f"/rooms/{room}/event/{tampered_id}")
        assert seen["content"] == {}

        # A forged signature (another key under the same key ID): dropped, never stored.
        forger = generate_signing_key(peer.key.version)
        forged = peer.event(room, mallory, "m.room.message", {"msgtype": "m.text", "body": "forged"}, [ok_id], auth,
                            depth + 2, key=forger)
        forged_id = compute_event_id(forged, ROOM_V10)
        result = await peer.send(server.server_name, [forged], "t3")
        assert result["pdus"][forged_id].get("error")
        await alice.call("GET", f"/rooms/{room}/event/{forged_id}", expect=404)

        # An event the auth rules refuse (power level 0 giving itself 100): rejected, state unchanged.
        grab = peer.event(room, mallory, "m.room.power_levels",
                          {**levels_before, "users": {**levels_before["users"], mallory: 100}}, [ok_id], auth,
                          depth + 2, state_key="")
        grab_id = compute_event_id(grab, ROOM_V10)
        result = await peer.send(server.server_name, [grab], "t4")
        assert "rejected" in result["pdus"][grab_id]["error"]
        assert await alice.call("GET", f"/rooms/{room}/state/m.room.power_levels") == levels_before
        await alice.call("GET", f"/rooms/{room}/event/{grab_id}", expect=404)

        # Once banned, a message built on the state before the ban is soft-failed: stored, not shown.
        await alice.call("POST", f"/rooms/{room}/ban", json={"user_id": mallory})
        late = peer.event(room, mallory, "m.room.message", {"msgtype": "m.text", "body": "too late"}, [ok_id], auth,
                          depth + 3)
        late_id = compute_event_id(late, ROOM_V10)
        result = await peer.send(server.server_name, [late], "t5")
        assert result["pdus"][late_id] == {}
        await alice.call("GET", f"/rooms/{room}/event/{late_id}", expect=404)
        chunk = (await alice.call("GET", f"/rooms/{room}/messages", params={"limit": "50"}))["chunk"]
        bodies = [e["content"].get("body") for e in chunk if e["type"] == "m.room.message"]
        assert "too late" not in bodies and "forged" not in bodies and "hello" in bodies

        # Transaction-level refusals: unsigned, and oversized.
        async with session.put(f"https://{server.server_name}/_matrix/federation/v1/send/x", json={},
                               ssl=False) as resp:
            assert resp.status == 401 and (await resp.json())["errcode"] == "M_UNAUTHORIZED"
        with pytest.raises(FederationError) as err:
            await peer.send(server.server_name, [ok_ev] * 51, "t6")
        assert err.value.status == 400
