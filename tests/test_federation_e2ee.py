"""Encryption between two Whispr servers (SQLite and PostgreSQL processes): remote key query and
claim, to-device messages both ways, device list updates (new keys, a new device, a deleted one)
and cross-signing keys."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import pytest

from bench.servers import RunningServer
from tests.e2ee_helpers import Device
from tests.test_e2ee_cross_signing import CrossKey
from tests.test_federation_forged import Peer, setup  # noqa: F401 (fixture)
from tests.test_federation_whispr import V3, Client, membership_in_timeline, pair, users_on_both  # noqa: F401


async def keyed(client: Client) -> Device:
    who = await client.call("GET", "/account/whoami")
    dev = Device(client.user_id, who["device_id"])
    await client.call("POST", "/keys/upload", json={"device_keys": dev.device_keys(),
                                                    "one_time_keys": dev.one_time_keys(5)})
    return dev


async def eventually(check: Any, timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail("condition not met in time")
        await asyncio.sleep(0.3)


async def test_keys_to_device_and_device_lists_across_servers(pair: tuple[RunningServer, RunningServer]) -> None:  # noqa: F811
    await keys_story(*pair)


async def keys_story(a: RunningServer, b: RunningServer) -> None:
    """alice on `a`, bob on `b`, in alice's room: what alice sees of bob's keys and devices."""
    async with aiohttp.ClientSession() as session:
        alice, bob = await users_on_both(session, a, "alice", b, "bob")
        adev, bdev = await keyed(alice), await keyed(bob)
        room = (await alice.call("POST", "/createRoom", json={"preset": "private_chat"}))["room_id"]
        await alice.call("POST", f"/rooms/{room}/invite", json={"user_id": bob.user_id})
        await bob.sync_until(lambda body: room in body.get("rooms", {}).get("invite", {}))
        await bob.call("POST", f"/join/{room}")
        await alice.sync_until(membership_in_timeline(room, bob.user_id, "join"))

        # keys of the other server's user: query and claim go over federation
        found = await alice.call("POST", "/keys/query", json={"device_keys": {bob.user_id: []}})
        assert found["device_keys"][bob.user_id][bdev.device_id]["keys"] == bdev.device_keys()["keys"]
        claimed = await alice.call("POST", "/keys/claim", json={
            "one_time_keys": {bob.user_id: {bdev.device_id: "signed_curve25519"}}})
        (key_id, key), = claimed["one_time_keys"][bob.user_id][bdev.device_id].items()
        assert key_id.startswith("signed_curve25519:") and "signatures" in key
        unreachable = await alice.call("POST", "/keys/query", json={"device_keys": {"@x:127.0.0.1:1": []}})
        if a.kind == "whispr":
            assert "127.0.0.1:1" in unreachable["failures"]

        # to-device both ways
        await alice.call("PUT", "/sendToDevice/m.room_key_request/t1", json={
            "messages": {bob.user_id: {bdev.device_id: {"from": "alice"}}}})
        await bob.sync_until(lambda body: any(e["content"] == {"from": "alice"} and e["sender"] == alice.user_id
                                              for e in body.get("to_device", {}).get("events", [])))
        await bob.call("PUT", "/sendToDevice/m.x/t1", json={"messages": {alice.user_id: {"*": {"from": "bob"}}}})
        await alice.sync_until(lambda body: any(e["content"] == {"from": "bob"}
                                                for e in body.get("to_device", {}).get("events", [])))

        # bob's new device: alice hears of it, and her server's answer holds it
        login = await (await session.post(b.base_url + V3 + "/login", json={
            "type": "m.login.password", "identifier": {"type": "m.id.user", "user": "bob"},
            "password": "long enough pw"})).json()
        bob2 = Client(session, b, bob.user_id, login["access_token"])
        dev2 = await keyed(bob2)
        await alice.sync_until(lambda body: bob.user_id in body.get("device_lists", {}).get("changed", []))

        async def has_both() -> bool:
            got = await alice.call("POST", "/keys/query", json={"device_keys": {bob.user_id: []}})
            return set(got["device_keys"][bob.user_id]) == {bdev.device_id, dev2.device_id}
        await eventually(has_both)

        # the device is deleted (logged out): it goes from alice's answer
        await bob2.call("POST", "/logout")

        async def only_first() -> bool:
            got = await alice.call("POST", "/keys/query", json={"device_keys": {bob.user_id: []}})
            return set(got["device_keys"][bob.user_id]) == {bdev.device_id}
        await eventually(only_first)

        # cross-signing keys cross too
        msk = CrossKey(bob.user_id, "master")
        ssk = CrossKey(bob.user_id, "self_signing")
        await bob.call("POST", "/keys/device_signing/upload", json={"master_key": msk.body(),
                                                                    "self_signing_key": ssk.body(msk)})

        async def has_master() -> bool:
            got = await alice.call("POST", "/keys/query", json={"device_keys": {bob.user_id: []}})
            return got["master_keys"].get(bob.user_id, {}).get("keys") == {msk.key_id: msk.public}
        await eventually(has_master)

        # several devices at once (logout/all): each deletion follows the one before over federation
        more = []
        for _ in range(2):
            login = await (await session.post(b.base_url + V3 + "/login", json={
                "type": "m.login.password", "identifier": {"type": "m.id.user", "user": "bob"},
                "password": "long enough pw"})).json()
            more.append(await keyed(Client(session, b, bob.user_id, login["access_token"])))

        async def has_three() -> bool:
            got = await alice.call("POST", "/keys/query", json={"device_keys": {bob.user_id: []}})
            return set(got["device_keys"][bob.user_id]) == {bdev.device_id, *(d.device_id for d in more)}
        await eventually(has_three)
        await bob.call("POST", "/logout/all")

        async def none_left() -> bool:
            got = await alice.call("POST", "/keys/query", json={"device_keys": {bob.user_id: []}})
            return got["device_keys"].get(bob.user_id) == {}
        await eventually(none_left)
        own = await alice.call("POST", "/keys/query", json={"device_keys": {alice.user_id: []}})
        assert set(own["device_keys"][alice.user_id]) == {adev.device_id}


async def alice_and_a_peers_user(session: aiohttp.ClientSession, server: RunningServer,
                                 peer: Peer) -> tuple[Client, Device, str]:
    """Alice with keys, in a public room the hand-built peer's user @mallory joined."""
    alice = await Client.register(session, server, "alice")
    adev = await keyed(alice)
    room = (await alice.call("POST", "/createRoom", json={"preset": "public_chat", "room_version": "10"}))["room_id"]
    mallory = f"@mallory:{peer.name}"
    await peer.join(server.server_name, room, mallory)
    return alice, adev, mallory


async def test_hostile_peer_encryption_edus(setup: tuple[RunningServer, Peer]) -> None:  # noqa: F811
    """EDUs about users of another server are dropped; malformed ones never fail the transaction."""
    server, peer = setup
    async with aiohttp.ClientSession() as session:
        alice, adev, mallory = await alice_and_a_peers_user(session, server, peer)
        mark = await alice.sync_until(lambda _: True)

        def edu(kind: str, content: Any) -> dict[str, Any]:
            return {"edu_type": kind, "content": content}

        forged_keys = {"user_id": alice.user_id, "device_id": adev.device_id, "algorithms": [],
                       "keys": {f"ed25519:{adev.device_id}": "AAAA"}, "signatures": {}}
        edus = [
            edu("m.direct_to_device", {"sender": "@eve:elsewhere.example", "type": "m.x", "message_id": "1",
                                       "messages": {alice.user_id: {"*": {"forged": True}}}}),
            edu("m.device_list_update", {"user_id": alice.user_id, "device_id": adev.device_id, "stream_id": 99,
                                         "prev_id": [], "deleted": True}),
            edu("m.device_list_update", {"user_id": alice.user_id, "device_id": "NEW", "stream_id": 99,
                                         "prev_id": [], "keys": forged_keys}),
            edu("m.signing_key_update", {"user_id": alice.user_id, "master_key": {"user_id": alice.user_id,
                                                                                  "usage": ["master"], "keys": {}}}),
            edu("m.direct_to_device", {"sender": mallory, "type": "m.x", "message_id": 5, "messages": "x"}),
            edu("m.device_list_update", {"user_id": mallory, "device_id": None, "stream_id": "x"}),
            edu("m.direct_to_device", {"sender": mallory, "type": "m.x", "message_id": "2",
                                       "messages": {alice.user_id: {adev.device_id: {"from": "mallory"}}}}),
        ]
        answer = await peer.client.put_json(server.server_name, "/_matrix/federation/v1/send/e2ee1", {
            "origin": peer.name, "origin_server_ts": int(time.time() * 1000), "pdus": [], "edus": edus})
        assert answer == {"pdus": {}}
        got = await alice.sync_until(lambda body: body["to_device"]["events"])
        assert [e["content"] for e in got["to_device"]["events"]] == [{"from": "mallory"}]
        assert mark
        found = await alice.call("POST", "/keys/query", json={"device_keys": {alice.user_id: []}})
        assert set(found["device_keys"][alice.user_id]) == {adev.device_id}
        assert found["device_keys"][alice.user_id][adev.device_id]["keys"] == adev.device_keys()["keys"]
        assert alice.user_id not in found["master_keys"]
        # the peer may ask for our users' keys, not make us answer for others
        theirs = await peer.client.post_json(server.server_name, "/_matrix/federation/v1/user/keys/query",
                                             {"device_keys": {alice.user_id: [], mallory: []}})
        assert set(theirs["device_keys"]) == {alice.user_id}
        assert "unsigned" not in theirs["device_keys"][alice.user_id][adev.device_id]
        claimed = await peer.client.post_json(server.server_name, "/_matrix/federation/v1/user/keys/claim", {
            "one_time_keys": {alice.user_id: {adev.device_id: "signed_curve25519"}}})
        assert len(claimed["one_time_keys"][alice.user_id][adev.device_id]) == 1
        devices = await peer.client.get_json(server.server_name, f"/_matrix/federation/v1/user/devices/{alice.user_id}")
        assert [d["device_id"] for d in devices["devices"]] == [adev.device_id] and devices["stream_id"] > 0


async def test_a_peers_to_device_content_beyond_64_bits_still_syncs(setup: tuple[RunningServer, Peer]) -> None:  # noqa: F811
    """Federation bodies keep big integers (one bad PDU is dropped alone); content a peer relays
    with one must still reach the device: the fast JSON writer falls back instead of a 500."""
    server, peer = setup
    async with aiohttp.ClientSession() as session:
        alice, adev, mallory = await alice_and_a_peers_user(session, server, peer)
        await alice.sync_until(lambda _: True)
        huge = 2**70 + 1
        edu = {"edu_type": "m.direct_to_device", "content": {
            "sender": mallory, "type": "m.x", "message_id": "big",
            "messages": {alice.user_id: {adev.device_id: {"n": huge, "text": "ünïcode"}}}}}
        answer = await peer.client.put_json(server.server_name, "/_matrix/federation/v1/send/big1", {
            "origin": peer.name, "origin_server_ts": int(time.time() * 1000), "pdus": [], "edus": [edu]})
        assert answer == {"pdus": {}}
        got = await alice.sync_until(lambda body: body["to_device"]["events"])
        assert [e["content"] for e in got["to_device"]["events"]] == [{"n": huge, "text": "ünïcode"}]
