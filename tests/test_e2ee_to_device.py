"""To-device messages: delivered in /sync and the SSE stream, idempotent, kept until seen, bounded."""

from __future__ import annotations

import asyncio
from typing import Any

from homeserver.e2ee import sync_section
from tests.conftest import auth, login
from tests.rooms_helpers import User
from tests.test_sync import read_sse


async def device_of(user: User) -> str:
    return str((await user.call("GET", "/account/whoami"))["device_id"])


def to_device(body: dict[str, Any]) -> list[dict[str, Any]]:
    return list(body["to_device"]["events"])


async def test_send_deliver_and_delete_once_seen(client: Any) -> None:
    alice, bob = await User.new(client, "alice"), await User.new(client, "bob")
    bob_dev = await device_of(bob)
    first = await bob.sync()
    waiting = asyncio.create_task(bob.sync(first["next_batch"], timeout=10_000))
    await asyncio.sleep(0.2)
    msg = {"messages": {bob.user_id: {bob_dev: {"algorithm": "m.megolm.v1.aes-sha2", "n": 1}}}}
    await alice.call("PUT", "/sendToDevice/m.room_key/t1", json=msg)
    await alice.call("PUT", "/sendToDevice/m.room_key/t1", json=msg)  # a retry of the same txn
    woke = await asyncio.wait_for(waiting, 5)
    assert to_device(woke) == [{"type": "m.room_key", "sender": alice.user_id,
                                "content": {"algorithm": "m.megolm.v1.aes-sha2", "n": 1}}]
    # not acknowledged yet: a sync from the same token gets it again
    again = await bob.sync(first["next_batch"])
    assert len(to_device(again)) == 1
    # syncing past it deletes it
    past = await bob.sync(woke["next_batch"])
    assert to_device(past) == []
    assert to_device(await bob.sync(first["next_batch"])) == []
    # unknown users and devices are dropped silently
    await alice.call("PUT", "/sendToDevice/m.x/t2", json={"messages": {
        "@ghost:test.local": {"D": {}}, bob.user_id: {"NODEVICE": {}}}})
    assert to_device(await bob.sync(past["next_batch"])) == []
    bad = await alice.call("PUT", "/sendToDevice/m.x/t3", json={"messages": {bob.user_id: "x"}}, expect=400)
    assert bad["errcode"] == "M_BAD_JSON"


async def test_star_reaches_every_device_and_the_sse_stream(client: Any) -> None:
    alice, bob = await User.new(client, "alice"), await User.new(client, "bob")
    second = await (await login(client, "bob")).json()
    await alice.call("PUT", "/sendToDevice/m.x/t1", json={"messages": {bob.user_id: {"*": {"hello": 1}}}})
    assert to_device(await bob.sync())[0]["content"] == {"hello": 1}
    resp = await client.get("/_matrix/client/unstable/org.whispr/sync/stream", headers=auth(second["access_token"]))
    assert resp.status == 200
    (_, body), = await read_sse(resp, 1)
    assert to_device(body)[0]["content"] == {"hello": 1}
    # and a message sent while the stream is open arrives on it
    await alice.call("PUT", "/sendToDevice/m.x/t2", json={"messages": {bob.user_id: {"*": {"hello": 2}}}})
    (_, body), = await read_sse(resp, 1)
    assert to_device(body)[0]["content"] == {"hello": 2}
    resp.close()


async def test_messages_survive_a_restart(serve: Any) -> None:
    client = await serve()
    alice, bob = await User.new(client, "alice"), await User.new(client, "bob")
    bob_dev = await device_of(bob)
    await alice.call("PUT", "/sendToDevice/m.x/t1", json={"messages": {bob.user_id: {bob_dev: {"k": "v"}}}})
    await client.close()
    client = await serve()
    bob.client = client
    assert to_device(await bob.sync())[0]["content"] == {"k": "v"}


async def test_a_long_queue_comes_in_pages(client: Any, monkeypatch: Any) -> None:
    monkeypatch.setattr(sync_section, "MAX_TO_DEVICE_PER_SYNC", 3)
    alice, bob = await User.new(client, "alice"), await User.new(client, "bob")
    bob_dev = await device_of(bob)
    start = await bob.sync()
    for i in range(7):
        await alice.call("PUT", f"/sendToDevice/m.x/t{i}", json={"messages": {bob.user_id: {bob_dev: {"i": i}}}})
    await alice.send(await alice.create_room(), "room traffic in between")
    seen, token = [], start["next_batch"]
    for _ in range(4):
        body = await bob.sync(token)
        seen += [e["content"]["i"] for e in to_device(body)]
        token = body["next_batch"]
    assert seen == list(range(7))


async def test_transaction_ids_are_forgotten_after_a_day(client: Any, monkeypatch: Any) -> None:
    from homeserver.e2ee import to_device as to_device_module

    alice, bob = await User.new(client, "alice"), await User.new(client, "bob")
    bob_dev = await device_of(bob)
    msg = {"messages": {bob.user_id: {bob_dev: {"n": 1}}}}
    await alice.call("PUT", "/sendToDevice/m.x/same", json=msg)
    await alice.call("PUT", "/sendToDevice/m.x/same", json=msg)
    assert len(to_device(await bob.sync())) == 1  # remembered: sent once
    monkeypatch.setattr(to_device_module, "TXN_MEMORY_MS", -1_000)  # as if a day went by
    await alice.call("PUT", "/sendToDevice/m.x/same", json=msg)
    assert len(to_device(await bob.sync())) == 2


async def test_a_full_inbox_takes_no_more_until_the_device_syncs(client: Any, monkeypatch: Any) -> None:
    from homeserver.e2ee import to_device as to_device_module

    monkeypatch.setattr(to_device_module, "MAX_PENDING_PER_DEVICE", 3)
    alice, bob = await User.new(client, "alice"), await User.new(client, "bob")
    bob_dev = await device_of(bob)
    other = await (await login(client, "bob")).json()
    start = await bob.sync()
    start = await bob.sync(start["next_batch"])  # acknowledged: its inbox is known to be empty
    for i in range(5):  # one call for both devices: the full inbox is only bob_dev's
        await alice.call("PUT", f"/sendToDevice/m.x/t{i}", json={"messages": {bob.user_id: {
            bob_dev: {"i": i}, **({other["device_id"]: {"i": i}} if i == 4 else {})}}})
    body = await bob.sync(start["next_batch"])
    assert [e["content"]["i"] for e in to_device(body)] == [0, 1, 2]
    assert [e["content"]["i"] for e in to_device(await bob.sync(start["next_batch"]))] == [0, 1, 2]  # as stored
    resp = await client.get("/_matrix/client/v3/sync", headers=auth(other["access_token"]))
    assert [e["content"]["i"] for e in to_device(await resp.json())] == [4]
    body = await bob.sync(body["next_batch"])  # seen: deleted, room again
    await alice.call("PUT", "/sendToDevice/m.x/t5", json={"messages": {bob.user_id: {bob_dev: {"i": 5}}}})
    assert [e["content"]["i"] for e in to_device(await bob.sync(body["next_batch"]))] == [5]
