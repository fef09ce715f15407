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
    a, b = pair
    async with aiohttp.ClientSession() as session:
        alice, bob = await users_on_both(session, a, "alice", b, "bob")
        adev, bdev = await keyed(alice), await keyed(bob)
        room = (await alice.call("POST", "/createRoom", json={"preset": "private_chat"}))["room_id"]
        await alice.call("POST", f"/rooms/{room}/invite", json={"user_id": bob.user_id})
        await bob.sync_until(lambda body: room in body["rooms"]["invite"])
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
        assert "127.0.0.1:1" in unreachable["failures"]

        # to-device both ways
        await alice.call("PUT", "/sendToDevice/m.room_key_request/t1", json={
            "messages": {bob.user_id: {bdev.device_id: {"from": "alice"}}}})
        await bob.sync_until(lambda body: any(e["content"] == {"from": "alice"} and e["sender"] == alice.user_id
                                              for e in body["to_device"]["events"]))
        await bob.call("PUT", "/sendToDevice/m.x/t1", json={"messages": {alice.user_id: {"*": {"from": "bob"}}}})
        await alice.sync_until(lambda body: any(e["content"] == {"from": "bob"} for e in body["to_device"]["events"]))

        # bob's new device: alice hears of it, and her server's answer holds it
        login = await (await session.post(b.base_url + V3 + "/login", json={
            "type": "m.login.password", "identifier": {"type": "m.id.user", "user": "bob"},
            "password": "long enough pw"})).json()
        bob2 = Client(session, b, bob.user_id, login["access_token"])
        dev2 = await keyed(bob2)
        await alice.sync_until(lambda body: bob.user_id in body["device_lists"]["changed"])

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
        assert adev.device_id  # alice's own keys stayed home
