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
from tests.test_federation_whispr import Client, federation_config, page_back


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
        self.routes(app)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port, ssl_context=context).start()
        await self.client.start()

    def routes(self, app: web.Application) -> None:
        """More endpoints, for peers that hold rooms of their own."""

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

    async def join(self, destination: str, room: str, user: str) -> dict[str, Any]:
        """Join `user` (one of ours) to `room` on `destination` with make_join and send_join; the signed join."""
        template = await self.client.get_json(destination, f"/_matrix/federation/v1/make_join/{room}/{user}",
                                              {"ver": ["10"]})
        join = {k: v for k, v in template["event"].items() if k != "origin"}
        join["origin_server_ts"] = int(time.time() * 1000)
        join = sign_event(join, self.name, self.key, ROOM_V10)
        await self.client.put_json(destination, f"/_matrix/federation/v2/send_join/{room}/"
                                   f"{compute_event_id(join, ROOM_V10)}", join)
        return join

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


class HistoryPeer(Peer):
    """A peer holding a room of its own with history, some of it forged, served over /backfill."""

    def __init__(self, tmp: Path) -> None:
        super().__init__(tmp)
        self.room = f"!history:{self.name}"
        self.owner = f"@peter:{self.name}"
        self.history: list[dict[str, Any]] = []  # every PDU /backfill serves, as built
        self.state: list[dict[str, Any]] = []
        self.backfill_requests = 0

    def build(self) -> dict[str, str]:
        """create, owner's join, power levels, public join rules, 5 messages, then three bad ones."""
        ids: dict[str, str] = {}
        prev: list[str] = []
        depth = 0

        def add(name: str, pdu: dict[str, Any], state: bool = False) -> None:
            nonlocal prev, depth
            ids[name] = compute_event_id(pdu, ROOM_V10)
            self.history.append(pdu)
            if state:
                self.state.append(pdu)
            prev, depth = [ids[name]], depth + 1

        def ev(etype: str, content: dict[str, Any], auth: list[str], state_key: str | None = None,
               sender: str | None = None, key: Any = None) -> dict[str, Any]:
            return self.event(self.room, sender or self.owner, etype, content, prev, list(auth), depth + 1,
                              state_key=state_key, key=key)

        add("create", ev("m.room.create", {"creator": self.owner, "room_version": "10"}, [], ""), True)
        add("member", ev("m.room.member", {"membership": "join"}, [ids["create"]], self.owner), True)
        base = [ids["create"], ids["member"]]
        add("levels", ev("m.room.power_levels", {"users": {self.owner: 100}, "users_default": 0, "events": {},
                                                  "state_default": 50, "events_default": 0, "ban": 50,
                                                  "kick": 50, "redact": 50, "invite": 0}, base, ""), True)
        base.append(ids["levels"])
        add("rules", ev("m.room.join_rules", {"join_rule": "public"}, base, ""), True)
        for i in range(5):
            add(f"m{i}", ev("m.room.message", {"msgtype": "m.text", "body": f"m{i}"}, base))
        tampered = ev("m.room.message", {"msgtype": "m.text", "body": "original"}, base)
        add("tampered", tampered)
        tampered["content"] = {"msgtype": "m.text", "body": "changed in transit"}
        add("forged", ev("m.room.message", {"msgtype": "m.text", "body": "forged"}, base,
                         key=generate_signing_key(self.key.version)))
        # Signed by its server but refused by the auth rules: mallory never joined.
        add("stranger", ev("m.room.message", {"msgtype": "m.text", "body": "not a member"},
                           [ids["create"], ids["levels"]], sender=f"@mallory:{self.name}"))
        self.join_prev, self.join_depth, self.join_auth = prev, depth + 1, [ids["create"], ids["levels"],
                                                                           ids["rules"]]
        return ids

    def routes(self, app: web.Application) -> None:
        app.router.add_get("/_matrix/federation/v1/make_join/{room}/{user}", self._make_join)
        app.router.add_put("/_matrix/federation/v2/send_join/{room}/{event}", self._send_join)
        app.router.add_get("/_matrix/federation/v1/backfill/{room}", self._backfill)

    async def _make_join(self, request: web.Request) -> web.Response:
        user = request.match_info["user"]
        return web.json_response({"room_version": "10", "event": {
            "room_id": self.room, "sender": user, "type": "m.room.member", "state_key": user,
            "content": {"membership": "join"}, "prev_events": self.join_prev, "auth_events": self.join_auth,
            "depth": self.join_depth, "origin_server_ts": int(time.time() * 1000)}})

    async def _send_join(self, _request: web.Request) -> web.Response:
        return web.json_response({"origin": self.name, "state": self.state, "auth_chain": self.state,
                                  "members_omitted": False})

    async def _backfill(self, _request: web.Request) -> web.Response:
        self.backfill_requests += 1
        return web.json_response({"origin": self.name, "origin_server_ts": int(time.time() * 1000),
                                  "pdus": list(reversed(self.history))})


async def test_forged_history_is_never_shown(tmp_path: Path) -> None:
    """Backfilled history goes through the PDU checks: a tampered event is shown redacted, a forged
    signature is dropped, an event the auth rules refuse is stored rejected; none is shown as sent."""
    peer = HistoryPeer(tmp_path)
    await peer.start()
    ids = peer.build()
    server = await asyncio.to_thread(start_whispr, server_name=f"127.0.0.1:{free_port()}",
                                     extra_config=federation_config())
    try:
        async with aiohttp.ClientSession() as session:
            bob = await Client.register(session, server, "bob")
            await bob.call("POST", f"/join/{peer.room}", params={"server_name": peer.name}, json={})
            events = await page_back(bob, peer.room, 4)
            shown = [e["event_id"] for e in events]
            assert peer.backfill_requests >= 1
            assert shown[1:] == [ids[n] for n in ("tampered", "m4", "m3", "m2", "m1", "m0", "rules", "levels",
                                                  "member", "create")]
            tampered = next(e for e in events if e["event_id"] == ids["tampered"])
            assert tampered["content"] == {}  # kept only in its redacted form
            for name in ("forged", "stranger"):
                await bob.call("GET", f"/rooms/{peer.room}/event/{ids[name]}", expect=404)
    finally:
        await asyncio.to_thread(server.stop)
        await peer.close()
