"""Device, one-time and fallback keys over HTTP: upload, query, claim, changes, and their /sync fields."""

from __future__ import annotations

import asyncio
import json
import secrets
from typing import Any, AsyncIterator, Callable

import aiohttp
import pytest
import yaml

from bench.servers import PostgresAdmin, RunningServer, start_whispr
from tests.conftest import POSTGRES_URL, REDIS_URL, auth, login, need
from tests.e2ee_helpers import Device
from tests.rooms_helpers import V3, User


async def keyed(client: Any, name: str) -> tuple[User, Device]:
    user = await User.new(client, name)
    who = await user.call("GET", "/account/whoami")
    device = Device(user.user_id, who["device_id"])
    await user.call("POST", "/keys/upload", json={"device_keys": device.device_keys()})
    return user, device


async def test_upload_query_and_counts(client: Any) -> None:
    alice, dev = await keyed(client, "alice")
    body = await alice.call("POST", "/keys/upload", json={"one_time_keys": dev.one_time_keys(5)})
    assert body["one_time_key_counts"] == {"signed_curve25519": 5}
    # the same keys again are no change; a key ID reused with other content is refused
    again = await alice.call("POST", "/keys/upload", json={"one_time_keys": dev.one_time_keys(5)}, expect=400)
    assert again["errcode"] == "M_INVALID_PARAM"
    empty = await alice.call("POST", "/keys/upload", json={})
    assert empty["one_time_key_counts"] == {"signed_curve25519": 5}
    bob = await User.new(client, "bob")
    await alice.call("PUT", f"/devices/{dev.device_id}", json={"display_name": "Phone"})
    found = await bob.call("POST", "/keys/query", json={"device_keys": {alice.user_id: []}})
    keys = found["device_keys"][alice.user_id][dev.device_id]
    assert keys["keys"] == dev.device_keys()["keys"]
    assert keys["signatures"] == dev.device_keys()["signatures"]
    assert keys["unsigned"] == {"device_display_name": "Phone"}
    assert found["failures"] == {}
    # asking for one device only; an unknown user has no entry beyond an empty map
    only = await bob.call("POST", "/keys/query", json={"device_keys": {alice.user_id: ["NOPE"],
                                                                     "@ghost:test.local": []}})
    assert only["device_keys"][alice.user_id] == {}


async def test_bad_device_keys_are_refused_and_not_stored(client: Any) -> None:
    alice = await User.new(client, "alice")
    who = await alice.call("GET", "/account/whoami")
    dev = Device(alice.user_id, who["device_id"])
    forged = dev.device_keys()
    forged["keys"][f"curve25519:{dev.device_id}"] = "AAAA"  # changed after signing
    bad = await alice.call("POST", "/keys/upload", json={"device_keys": forged}, expect=400)
    assert bad["errcode"] == "M_INVALID_PARAM"
    other = Device(alice.user_id, "OTHERDEVICE")
    bad = await alice.call("POST", "/keys/upload", json={"device_keys": other.device_keys()}, expect=400)
    assert bad["errcode"] == "M_INVALID_PARAM"
    shape = await alice.call("POST", "/keys/upload", json={"device_keys": "nope"}, expect=400)
    assert shape["errcode"] == "M_BAD_JSON"
    shape = await alice.call("POST", "/keys/upload", json={"one_time_keys": {"nocolon": "x"}}, expect=400)
    assert shape["errcode"] == "M_BAD_JSON"
    found = await alice.call("POST", "/keys/query", json={"device_keys": {alice.user_id: []}})
    assert found["device_keys"][alice.user_id] == {}
    # a one-time key not signed by the device is refused once its identity key is known
    await alice.call("POST", "/keys/upload", json={"device_keys": dev.device_keys()})
    stranger = Device(alice.user_id, dev.device_id)
    bad = await alice.call("POST", "/keys/upload", json={"one_time_keys": stranger.one_time_keys(1)}, expect=400)
    assert bad["errcode"] == "M_INVALID_PARAM"


async def test_claim_hands_each_key_out_once_then_the_fallback(client: Any) -> None:
    alice, dev = await keyed(client, "alice")
    await alice.call("POST", "/keys/upload", json={"one_time_keys": dev.one_time_keys(3),
                                                   "fallback_keys": dev.fallback_key()})
    bob = await User.new(client, "bob")
    query = {"one_time_keys": {alice.user_id: {dev.device_id: "signed_curve25519"}}}
    got = []
    for _ in range(5):
        body = await bob.call("POST", "/keys/claim", json=query)
        got.append(next(iter(body["one_time_keys"][alice.user_id][dev.device_id])))
    assert got[:3] == sorted(set(got[:3])) and len(set(got[:3])) == 3
    assert got[3] == got[4] == "signed_curve25519:F1"
    sync = await alice.sync()
    assert sync["device_one_time_keys_count"] == {"signed_curve25519": 0}
    assert sync["device_unused_fallback_key_types"] == []
    # a new fallback key is unused again
    await alice.call("POST", "/keys/upload", json={"fallback_keys": dev.fallback_key("F2")})
    assert (await alice.sync())["device_unused_fallback_key_types"] == ["signed_curve25519"]
    missing = await bob.call("POST", "/keys/claim", json={"one_time_keys": {alice.user_id: {"NOPE": "x"}}})
    assert missing["one_time_keys"] == {}


async def test_concurrent_claims_never_share_a_key(client: Any) -> None:
    alice, dev = await keyed(client, "alice")
    await alice.call("POST", "/keys/upload", json={"one_time_keys": dev.one_time_keys(20)})
    bob = await User.new(client, "bob")
    query = {"one_time_keys": {alice.user_id: {dev.device_id: "signed_curve25519"}}}
    bodies = await asyncio.gather(*(bob.call("POST", "/keys/claim", json=query) for _ in range(50)))
    keys = [k for b in bodies for k in b["one_time_keys"].get(alice.user_id, {}).get(dev.device_id, {})]
    assert len(keys) == 20 and len(set(keys)) == 20


async def test_device_lists_in_sync_and_changes(client: Any) -> None:
    alice, _ = await keyed(client, "alice")
    bob, bdev = await keyed(client, "bob")
    carol = await User.new(client, "carol")
    room = await alice.create_room(invite=[bob.user_id])
    first = await alice.sync()
    await bob.call("POST", f"/join/{room}")
    joined = await alice.sync(first["next_batch"])
    assert bob.user_id in joined["device_lists"]["changed"]  # a new member: their keys are news
    # bob's new keys wake alice's waiting sync
    waiting = asyncio.create_task(alice.sync(joined["next_batch"], timeout=10_000))
    await asyncio.sleep(0.2)
    bdev.curve25519 = "x" * 43
    await bob.call("POST", "/keys/upload", json={"device_keys": bdev.device_keys()})
    woke = await asyncio.wait_for(waiting, 5)
    assert woke["device_lists"]["changed"] == [bob.user_id]
    # carol shares no room: her keys are not news to alice
    cdev = Device(carol.user_id, (await carol.call("GET", "/account/whoami"))["device_id"])
    await carol.call("POST", "/keys/upload", json={"device_keys": cdev.device_keys()})
    quiet = await alice.sync(woke["next_batch"])
    assert carol.user_id not in quiet["device_lists"]["changed"]
    changes = await alice.call("GET", "/keys/changes", params={"from": first["next_batch"],
                                                              "to": quiet["next_batch"]})
    assert bob.user_id in changes["changed"] and carol.user_id not in changes["changed"]
    # bob leaves the only room they shared: left
    await bob.call("POST", f"/rooms/{room}/leave")
    after = await alice.sync(quiet["next_batch"])
    assert after["device_lists"]["left"] == [bob.user_id]
    assert bob.user_id not in after["device_lists"]["changed"]


async def test_deleting_a_device_removes_its_keys_and_tells_room_members(client: Any) -> None:
    alice, adev = await keyed(client, "alice")
    bob = await User.new(client, "bob")
    room = await alice.create_room(invite=[bob.user_id])
    await bob.call("POST", f"/join/{room}")
    second = await (await login(client, "alice")).json()
    dev2 = Device(alice.user_id, second["device_id"])
    h2 = auth(second["access_token"])
    resp = await client.post(f"{V3}/keys/upload", headers=h2, json={
        "device_keys": dev2.device_keys(), "one_time_keys": dev2.one_time_keys(2)})
    assert resp.status == 200
    mark = await bob.sync()
    found = await bob.call("POST", "/keys/query", json={"device_keys": {alice.user_id: []}})
    assert set(found["device_keys"][alice.user_id]) == {adev.device_id, dev2.device_id}
    resp = await client.post(f"{V3}/logout", headers=h2)
    assert resp.status == 200
    news = await bob.sync(mark["next_batch"])
    assert alice.user_id in news["device_lists"]["changed"]
    found = await bob.call("POST", "/keys/query", json={"device_keys": {alice.user_id: []}})
    assert set(found["device_keys"][alice.user_id]) == {adev.device_id}
    claim = await bob.call("POST", "/keys/claim", json={
        "one_time_keys": {alice.user_id: {dev2.device_id: "signed_curve25519"}}})
    assert claim["one_time_keys"] == {}


@pytest.fixture
async def two_workers() -> AsyncIterator[tuple[RunningServer, RunningServer]]:
    """Two Whispr processes on one PostgreSQL database and one Redis, as a deployment with workers."""
    need(POSTGRES_URL, "postgres")
    need(REDIS_URL, "redis")
    shared = {"redis": {"url": REDIS_URL, "key_prefix": f"whispr-test-{secrets.token_hex(4)}:"},
              "secrets": {"jwt_secret": secrets.token_hex(32)}}
    first = await asyncio.to_thread(start_whispr, db="postgres", pg=PostgresAdmin(POSTGRES_URL), extra_config=shared)
    try:
        url = yaml.safe_load(first.config_path.read_text())["database"]["url"]
        second = await asyncio.to_thread(start_whispr, db="postgres", pg=PostgresAdmin(POSTGRES_URL),
                                         server_name=first.server_name,
                                         extra_config={**shared, "database": {"engine": "postgres", "url": url}})
        try:
            yield first, second
        finally:
            await asyncio.to_thread(second.stop)
    finally:
        await asyncio.to_thread(first.stop)


class Http:
    def __init__(self, session: aiohttp.ClientSession) -> None:
        self.session = session

    async def call(self, base: str, method: str, path: str, body: Any = None, token: str | None = None,
                   params: dict[str, str] | None = None) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with self.session.request(method, base + V3 + path, json=body, headers=headers,
                                        params=params) as resp:
            return resp.status, await resp.json()

    async def register(self, base: str, name: str) -> dict[str, Any]:
        _, started = await self.call(base, "POST", "/register", {"username": name, "password": "pw-pw-pw-1"})
        status, body = await self.call(base, "POST", "/register", {
            "username": name, "password": "pw-pw-pw-1",
            "auth": {"type": "m.login.dummy", "session": started["session"]}})
        assert status == 200, body
        return dict(body)

    async def keyed_and_claimer(self, base: str, keys: Callable[[Device], dict[str, Any]]
                                ) -> tuple[dict[str, Any], dict[str, Any], Device]:
        """alice, with her device keys and `keys(device)` uploaded, and bob to claim them."""
        alice, bob = await self.register(base, "alice"), await self.register(base, "bob")
        dev = Device(alice["user_id"], alice["device_id"])
        status, _ = await self.call(base, "POST", "/keys/upload", {"device_keys": dev.device_keys(), **keys(dev)},
                                    alice["access_token"])
        assert status == 200
        return alice, bob, dev


async def test_concurrent_claims_across_two_processes_on_postgres(
        two_workers: tuple[RunningServer, RunningServer]) -> None:
    """50 claims split between two processes on one database, 20 keys: each handed out once."""
    first, second = two_workers
    async with aiohttp.ClientSession() as session:
        http = Http(session)
        alice, bob, dev = await http.keyed_and_claimer(first.base_url,
                                                       lambda d: {"one_time_keys": d.one_time_keys(20)})
        query = {"one_time_keys": {alice["user_id"]: {dev.device_id: "signed_curve25519"}}}
        answers = await asyncio.gather(*(
            http.call((first if i % 2 else second).base_url, "POST", "/keys/claim", query, bob["access_token"])
            for i in range(50)))
    assert all(status == 200 for status, _ in answers), answers
    keys = [k for _, body in answers for k in body["one_time_keys"].get(alice["user_id"], {})
            .get(dev.device_id, {})]
    assert len(keys) == 20 and len(set(keys)) == 20


async def test_to_device_and_device_lists_across_workers(two_workers: tuple[RunningServer, RunningServer]) -> None:
    """Sent and changed through one process, seen by a sync waiting on the other."""
    first, second = two_workers
    async with aiohttp.ClientSession() as session:
        http = Http(session)
        alice, bob = await http.register(first.base_url, "alice"), await http.register(first.base_url, "bob")
        _, made = await http.call(first.base_url, "POST", "/createRoom", {"invite": [bob["user_id"]]},
                                  alice["access_token"])
        await http.call(first.base_url, "POST", f"/join/{made['room_id']}", {}, bob["access_token"])
        _, start = await http.call(second.base_url, "GET", "/sync", token=bob["access_token"], params={"timeout": "0"})
        waiting = asyncio.create_task(http.call(second.base_url, "GET", "/sync", token=bob["access_token"],
                                                params={"since": start["next_batch"], "timeout": "10000"}))
        await asyncio.sleep(0.5)
        await http.call(first.base_url, "PUT", "/sendToDevice/m.x/t1", {
            "messages": {bob["user_id"]: {bob["device_id"]: {"hello": "bob"}}}}, alice["access_token"])
        status, woke = await asyncio.wait_for(waiting, 8)
        assert status == 200 and [e["content"] for e in woke["to_device"]["events"]] == [{"hello": "bob"}]
        dev = Device(alice["user_id"], alice["device_id"])
        await http.call(first.base_url, "POST", "/keys/upload", {"device_keys": dev.device_keys()},
                        alice["access_token"])
        deadline = asyncio.get_running_loop().time() + 8
        since, seen = woke["next_batch"], False
        while not seen and asyncio.get_running_loop().time() < deadline:
            _, body = await http.call(second.base_url, "GET", "/sync", token=bob["access_token"],
                                      params={"since": since, "timeout": "2000"})
            since, seen = body["next_batch"], alice["user_id"] in body["device_lists"]["changed"]
        assert seen


async def test_to_device_messages_sent_through_both_workers_arrive_once_each_in_order(
        two_workers: tuple[RunningServer, RunningServer]) -> None:
    """A process serves a device's messages from memory while it stored them all; one stored by the
    other process (heard of without its content) must still arrive, and nothing twice."""
    first, second = two_workers
    async with aiohttp.ClientSession() as session:
        http = Http(session)
        alice, bob = await http.register(first.base_url, "alice"), await http.register(first.base_url, "bob")
        _, body = await http.call(second.base_url, "GET", "/sync", token=bob["access_token"], params={"timeout": "0"})
        since, got, sent = body["next_batch"], [], []

        async def sync(timeout: str) -> None:
            nonlocal since
            _, body = await http.call(second.base_url, "GET", "/sync", token=bob["access_token"],
                                      params={"since": since, "timeout": timeout})
            since = body["next_batch"]
            got.extend(e["content"]["n"] for e in body["to_device"]["events"])

        for round_no in range(4):
            # A sync waiting on the second process as the messages come (as a device waits for a key share).
            waiting = asyncio.create_task(sync("5000"))
            await asyncio.sleep(0.3)
            for n, server in enumerate((first, second, second) if round_no % 2 else (second, first, second)):
                sent.append(f"{round_no}.{n}")
                status, _ = await http.call(server.base_url, "PUT", f"/sendToDevice/m.x/t{round_no}-{n}", {
                    "messages": {bob["user_id"]: {bob["device_id"]: {"n": sent[-1]}}}}, alice["access_token"])
                assert status == 200
            await waiting
            deadline = asyncio.get_running_loop().time() + 8
            while len(got) < len(sent) and asyncio.get_running_loop().time() < deadline:
                await sync("1000")
        _, body = await http.call(second.base_url, "GET", "/sync", token=bob["access_token"],
                                  params={"since": since, "timeout": "500"})
        got += [e["content"]["n"] for e in body["to_device"]["events"]]
    assert got == sent


async def test_keys_queried_on_one_worker_follow_changes_made_on_the_other(
        two_workers: tuple[RunningServer, RunningServer]) -> None:
    """Each process keeps the keys it read in memory: every change through the other one (new keys, a
    rename, a user-signing key that nobody else is told of, a deleted device) must reach its answers."""
    from tests.test_e2ee_cross_signing import CrossKey

    first, second = two_workers
    async with aiohttp.ClientSession() as session:
        http = Http(session)
        alice = await http.register(first.base_url, "alice")
        me, token = alice["user_id"], alice["access_token"]

        async def seen_on_second(check: Any) -> dict[str, Any]:
            deadline = asyncio.get_running_loop().time() + 8
            while True:
                status, body = await http.call(second.base_url, "POST", "/keys/query",
                                               {"device_keys": {me: []}}, token)
                assert status == 200, body
                if check(body) or asyncio.get_running_loop().time() > deadline:
                    return dict(body)
                await asyncio.sleep(0.1)

        assert (await seen_on_second(lambda b: True))["device_keys"] == {me: {}}
        dev = Device(me, alice["device_id"])
        await http.call(first.base_url, "POST", "/keys/upload", {"device_keys": dev.device_keys()}, token)
        body = await seen_on_second(lambda b: dev.device_id in b["device_keys"][me])
        assert body["device_keys"][me][dev.device_id]["keys"] == dev.device_keys()["keys"]
        await http.call(first.base_url, "PUT", f"/devices/{dev.device_id}", {"display_name": "kitchen"}, token)
        body = await seen_on_second(
            lambda b: b["device_keys"][me][dev.device_id].get("unsigned", {}).get("device_display_name"))
        assert body["device_keys"][me][dev.device_id]["unsigned"] == {"device_display_name": "kitchen"}
        msk = CrossKey(me, "master")
        await http.call(first.base_url, "POST", "/keys/device_signing/upload", {"master_key": msk.body()}, token)
        assert me in (await seen_on_second(lambda b: me in b["master_keys"]))["master_keys"]
        usk = CrossKey(me, "user_signing")
        status, asked = await http.call(first.base_url, "POST", "/keys/device_signing/upload",
                                        {"user_signing_key": usk.body(msk)}, token)
        assert status == 401  # a key added to existing ones needs the password
        status, _ = await http.call(first.base_url, "POST", "/keys/device_signing/upload", {
            "user_signing_key": usk.body(msk), "auth": {
                "type": "m.login.password", "identifier": {"type": "m.id.user", "user": me},
                "password": "pw-pw-pw-1", "session": asked["session"]}}, token)
        assert status == 200
        body = await seen_on_second(lambda b: me in b["user_signing_keys"])
        assert body["user_signing_keys"][me]["keys"] == {usk.key_id: usk.public}
        status, other = await http.call(first.base_url, "POST", "/login", {
            "type": "m.login.password", "identifier": {"type": "m.id.user", "user": me},
            "password": "pw-pw-pw-1"})
        second_dev = Device(me, other["device_id"])
        await http.call(first.base_url, "POST", "/keys/upload", {"device_keys": second_dev.device_keys()},
                        other["access_token"])
        assert set((await seen_on_second(lambda b: len(b["device_keys"][me]) == 2))["device_keys"][me]) == {
            dev.device_id, second_dev.device_id}
        await http.call(first.base_url, "POST", "/logout", {}, other["access_token"])
        body = await seen_on_second(lambda b: len(b["device_keys"][me]) == 1)
        assert set(body["device_keys"][me]) == {dev.device_id}


async def test_one_time_keys_are_handed_out_in_upload_order(client: Any) -> None:
    alice, dev = await keyed(client, "alice")
    keys = dev.one_time_keys(3)
    names = list(keys)
    for name in (names[2], names[0], names[1]):  # uploaded out of key ID order
        await alice.call("POST", "/keys/upload", json={"one_time_keys": {name: keys[name]}})
    bob = await User.new(client, "bob")
    query = {"one_time_keys": {alice.user_id: {dev.device_id: "signed_curve25519"}}}
    got = [next(iter((await bob.call("POST", "/keys/claim", json=query))["one_time_keys"][alice.user_id]
                     [dev.device_id])) for _ in range(3)]
    assert got == [names[2], names[0], names[1]]


async def test_bare_device_ids_and_unsigned_string_keys_as_old_suites_upload_them(client: Any) -> None:
    alice = await User.new(client, "alice")
    device = (await alice.call("GET", "/account/whoami"))["device_id"]
    body = await alice.call("POST", "/keys/upload/whatever_device", json={
        "device_keys": {"user_id": alice.user_id, "device_id": device},
        "one_time_keys": {"test_algorithm:test_id": "test+base64+key"}})
    assert body["one_time_key_counts"]["test_algorithm"] == 1
    bob = await User.new(client, "bob")
    claim = await bob.call("POST", "/keys/claim", json={"one_time_keys": {alice.user_id: {device: "test_algorithm"}}})
    assert claim["one_time_keys"][alice.user_id][device] == {"test_algorithm:test_id": "test+base64+key"}
    # keys present without a signature are still refused
    unsigned = {"user_id": alice.user_id, "device_id": device, "algorithms": [],
                "keys": {f"ed25519:{device}": "AAAA"}, "signatures": {}}
    bad = await alice.call("POST", "/keys/upload", json={"device_keys": unsigned}, expect=400)
    assert bad["errcode"] == "M_INVALID_PARAM"


async def test_new_renamed_and_deleted_devices_are_news_even_without_keys(client: Any) -> None:
    alice, bob = await User.new(client, "alice"), await User.new(client, "bob")
    room = await alice.create_room(invite=[bob.user_id])
    await bob.call("POST", f"/join/{room}")
    mark = (await alice.sync())["next_batch"]
    second = await (await login(client, "bob")).json()
    body = await alice.sync(mark)
    assert bob.user_id in body["device_lists"]["changed"]
    await bob.call("PUT", f"/devices/{second['device_id']}", json={"display_name": "wibble"})
    body2 = await alice.sync(body["next_batch"])
    assert bob.user_id in body2["device_lists"]["changed"]
    resp = await client.post(f"{V3}/logout", headers=auth(second["access_token"]))
    assert resp.status == 200
    body3 = await alice.sync(body2["next_batch"])
    assert bob.user_id in body3["device_lists"]["changed"]


async def test_a_join_hidden_in_a_timeline_gap_is_still_news(client: Any) -> None:
    alice, bob = await User.new(client, "alice"), await User.new(client, "bob")
    room = await alice.create_room(preset="public_chat")
    lazy = json.dumps({"room": {"timeline": {"limit": 1}, "state": {"lazy_load_members": True}}})
    mark = (await alice.sync(filter=lazy))["next_batch"]
    await bob.call("POST", f"/join/{room}")
    for i in range(3):
        await alice.send(room, f"m{i}")  # bob's join falls out of a one-event timeline
    body = await alice.sync(mark, filter=lazy)
    assert body["rooms"]["join"][room]["timeline"]["limited"]
    assert bob.user_id in body["device_lists"]["changed"]
    # plain messages afterwards move no membership: nothing to report
    await alice.send(room, "again")
    assert (await alice.sync(body["next_batch"], filter=lazy))["device_lists"]["changed"] == []


async def test_a_bad_part_of_an_upload_stores_nothing(client: Any) -> None:
    alice = await User.new(client, "alice")
    dev = Device(alice.user_id, (await alice.call("GET", "/account/whoami"))["device_id"])
    stranger = Device(alice.user_id, dev.device_id)  # same device ID, another identity key
    bad = await alice.call("POST", "/keys/upload", json={"device_keys": dev.device_keys(),
                                                         "one_time_keys": stranger.one_time_keys(2)}, expect=400)
    assert bad["errcode"] == "M_INVALID_PARAM"
    found = await alice.call("POST", "/keys/query", json={"device_keys": {alice.user_id: []}})
    assert found["device_keys"][alice.user_id] == {}
    assert (await alice.call("POST", "/keys/upload", json={}))["one_time_key_counts"] == {"signed_curve25519": 0}


async def test_one_claim_for_many_users(client: Any) -> None:
    owners = [await keyed(client, f"u{i}") for i in range(5)]
    for user, dev in owners:
        await user.call("POST", "/keys/upload", json={"one_time_keys": dev.one_time_keys(2),
                                                      "fallback_keys": dev.fallback_key()})
    bob = await User.new(client, "bob")
    query = {"one_time_keys": {u.user_id: {d.device_id: "signed_curve25519"} for u, d in owners}}
    seen: dict[str, list[str]] = {u.user_id: [] for u, _ in owners}
    for _ in range(3):
        body = await bob.call("POST", "/keys/claim", json=query)
        for user, dev in owners:
            seen[user.user_id] += list(body["one_time_keys"][user.user_id][dev.device_id])
    for keys in seen.values():
        assert keys == ["signed_curve25519:K00000", "signed_curve25519:K00001", "signed_curve25519:F1"]


async def test_concurrent_claims_for_many_users_run_into_the_fallback_keys(client: Any) -> None:
    owners = [await keyed(client, f"u{i}") for i in range(30)]
    for user, dev in owners:
        await user.call("POST", "/keys/upload", json={"one_time_keys": dev.one_time_keys(2),
                                                      "fallback_keys": dev.fallback_key()})
    bob = await User.new(client, "bob")
    query = {"one_time_keys": {u.user_id: {d.device_id: "signed_curve25519"} for u, d in owners}}
    bodies = await asyncio.gather(*(bob.call("POST", "/keys/claim", json=query) for _ in range(30)))
    for user, dev in owners:
        keys = sorted(k for b in bodies for k in b["one_time_keys"][user.user_id][dev.device_id])
        assert keys == ["signed_curve25519:F1"] * 28 + ["signed_curve25519:K00000", "signed_curve25519:K00001"]


async def test_uploading_the_same_one_time_keys_again_is_fine_and_other_content_is_not(client: Any) -> None:
    """Clients retry uploads; the stored spelling of a key (non-ASCII text included) must compare
    equal to the same key sent again."""
    from tests.e2ee_helpers import sign

    alice, dev = await keyed(client, "alice")
    key = {"signed_curve25519:AAAA": sign({"key": "k€y-ünïcode", "fallback": False}, alice.user_id,
                                          dev.key_id, dev.key)}
    for _ in range(2):
        counts = await alice.call("POST", "/keys/upload", json={"one_time_keys": key})
        assert counts["one_time_key_counts"] == {"signed_curve25519": 1}
    other = {"signed_curve25519:AAAA": sign({"key": "another"}, alice.user_id, dev.key_id, dev.key)}
    bad = await alice.call("POST", "/keys/upload", json={"one_time_keys": other}, expect=400)
    assert bad["errcode"] == "M_INVALID_PARAM"
    bob = await User.new(client, "bob")
    wanted = {alice.user_id: {dev.device_id: "signed_curve25519"}}
    claimed = await bob.call("POST", "/keys/claim", json={"one_time_keys": wanted})
    assert claimed["one_time_keys"][alice.user_id][dev.device_id] == key


async def test_keys_uploaded_after_running_out_are_claimed_again(client: Any) -> None:
    """Claims remember a device that has run out and go straight to its fallback key; an upload
    must end that at once."""
    alice, dev = await keyed(client, "alice")
    await alice.call("POST", "/keys/upload", json={"one_time_keys": dev.one_time_keys(1),
                                                   "fallback_keys": dev.fallback_key()})
    bob = await User.new(client, "bob")
    query = {"one_time_keys": {alice.user_id: {dev.device_id: "signed_curve25519"}}}

    async def claim() -> str:
        body = await bob.call("POST", "/keys/claim", json=query)
        return next(iter(body["one_time_keys"][alice.user_id][dev.device_id]))

    assert [await claim() for _ in range(3)] == ["signed_curve25519:K00000"] + ["signed_curve25519:F1"] * 2
    await alice.call("POST", "/keys/upload", json={"one_time_keys": dev.one_time_keys(2, start=1)})
    assert [await claim() for _ in range(3)] == ["signed_curve25519:K00001", "signed_curve25519:K00002",
                                                 "signed_curve25519:F1"]


async def test_keys_uploaded_through_one_worker_after_running_out_are_claimed_through_the_other(
        two_workers: tuple[RunningServer, RunningServer]) -> None:
    first, second = two_workers
    async with aiohttp.ClientSession() as session:
        http = Http(session)
        alice, bob, dev = await http.keyed_and_claimer(first.base_url,
                                                       lambda d: {"fallback_keys": d.fallback_key()})
        query = {"one_time_keys": {alice["user_id"]: {dev.device_id: "signed_curve25519"}}}

        async def claim() -> str:
            status, body = await http.call(second.base_url, "POST", "/keys/claim", query, bob["access_token"])
            assert status == 200, body
            return next(iter(body["one_time_keys"][alice["user_id"]][dev.device_id]))

        assert await claim() == await claim() == "signed_curve25519:F1"
        status, _ = await http.call(first.base_url, "POST", "/keys/upload",
                                    {"one_time_keys": dev.one_time_keys(1)}, alice["access_token"])
        assert status == 200
        for _ in range(50):  # the news travels through Redis
            key = await claim()
            if key != "signed_curve25519:F1":
                break
            await asyncio.sleep(0.1)
        assert key == "signed_curve25519:K00000"
