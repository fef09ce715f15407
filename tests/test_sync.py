"""/sync and the SSE stream: initial, incremental, long-poll wake-ups, ephemeral, resume."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from tests.rooms_helpers import User


def timeline(body: dict[str, Any], room: str) -> list[dict[str, Any]]:
    return body["rooms"]["join"].get(room, {}).get("timeline", {}).get("events", [])


def bodies(body: dict[str, Any], room: str) -> list[str]:
    return [e["content"]["body"] for e in timeline(body, room) if e["type"] == "m.room.message"]


async def test_initial_and_incremental_sync(client: Any) -> None:
    alice, bob = await User.new(client, "alice"), await User.new(client, "bob")
    room = await alice.create_room(name="Chat", invite=[bob.user_id])
    first = await bob.sync()
    assert room in first["rooms"]["invite"]
    invite_state = {e["type"] for e in first["rooms"]["invite"][room]["invite_state"]["events"]}
    assert {"m.room.name", "m.room.member", "m.room.create"} <= invite_state
    await bob.call("POST", f"/join/{room}")
    joined = await bob.sync(first["next_batch"])
    assert room in joined["rooms"]["join"]
    state_types = {e["type"] for e in joined["rooms"]["join"][room]["state"]["events"]} | {
        e["type"] for e in timeline(joined, room)}
    assert {"m.room.create", "m.room.power_levels", "m.room.name"} <= state_types
    await alice.send(room, "hi bob")
    inc = await bob.sync(joined["next_batch"])
    assert bodies(inc, room) == ["hi bob"]
    sent = timeline(inc, room)[0]
    assert sent["sender"] == alice.user_id and sent["unsigned"]["age"] >= 0
    # nothing new: an immediate empty answer with the same position
    empty = await bob.sync(inc["next_batch"])
    assert empty["rooms"]["join"] == {} and empty["next_batch"] == inc["next_batch"]


async def test_own_sends_carry_transaction_id(client: Any) -> None:
    alice = await User.new(client, "alice")
    room = await alice.create_room()
    await alice.call("PUT", f"/rooms/{room}/send/m.room.message/my-txn", json={"msgtype": "m.text", "body": "x"})
    body = await alice.sync()
    assert timeline(body, room)[-1]["unsigned"]["transaction_id"] == "my-txn"


async def test_limited_timeline_and_prev_batch(client: Any) -> None:
    alice = await User.new(client, "alice")
    room = await alice.create_room()
    start = await alice.sync()
    for i in range(15):
        await alice.send(room, f"m{i}")
    inc = await alice.sync(start["next_batch"], filter=json.dumps({"room": {"timeline": {"limit": 5}}}))
    r = inc["rooms"]["join"][room]
    assert r["timeline"]["limited"] is True and bodies(inc, room) == [f"m{i}" for i in range(10, 15)]
    older = await alice.call("GET", f"/rooms/{room}/messages", params={"from": r["timeline"]["prev_batch"],
                                                                        "dir": "b", "limit": "5"})
    assert [e["content"]["body"] for e in older["chunk"]] == [f"m{i}" for i in range(9, 4, -1)]


async def test_long_poll_wakes_on_message(client: Any) -> None:
    alice, bob = await User.new(client, "alice"), await User.new(client, "bob")
    room = await alice.create_room(preset="public_chat")
    await bob.call("POST", f"/join/{room}")
    since = (await bob.sync())["next_batch"]
    poll = asyncio.create_task(bob.sync(since, timeout=10_000))
    await asyncio.sleep(0.2)
    assert not poll.done()
    started = time.monotonic()
    await alice.send(room, "wake up")
    body = await asyncio.wait_for(poll, 5)
    assert bodies(body, room) == ["wake up"] and time.monotonic() - started < 2


async def test_long_poll_times_out_empty(client: Any) -> None:
    alice = await User.new(client, "alice")
    since = (await alice.sync())["next_batch"]
    started = time.monotonic()
    body = await alice.sync(since, timeout=500)
    assert body["rooms"]["join"] == {} and 0.4 < time.monotonic() - started < 3


async def test_typing_and_receipts_and_unread(client: Any) -> None:
    alice, bob = await User.new(client, "alice"), await User.new(client, "bob")
    room = await alice.create_room(preset="public_chat")
    await bob.call("POST", f"/join/{room}")
    since = (await bob.sync())["next_batch"]
    await alice.call("PUT", f"/rooms/{room}/typing/{alice.user_id}", json={"typing": True, "timeout": 10000})
    body = await bob.sync(since)
    eph = body["rooms"]["join"][room]["ephemeral"]["events"]
    assert {"type": "m.typing", "content": {"user_ids": [alice.user_id]}} in eph
    ids = [await alice.send(room, f"m{i}") for i in range(3)]
    body = await bob.sync(body["next_batch"])
    assert body["rooms"]["join"][room]["unread_notifications"]["notification_count"] == 3
    await bob.call("POST", f"/rooms/{room}/receipt/m.read/{ids[1]}", json={})
    body2 = await alice.sync(body["next_batch"])
    receipts = [e for e in body2["rooms"]["join"][room]["ephemeral"]["events"] if e["type"] == "m.receipt"]
    assert receipts and bob.user_id in receipts[0]["content"][ids[1]]["m.read"]
    bob_view = await bob.sync(body["next_batch"])
    assert bob_view["rooms"]["join"][room]["unread_notifications"]["notification_count"] == 1
    # private receipts are only seen by their owner
    await bob.call("POST", f"/rooms/{room}/receipt/m.read.private/{ids[2]}", json={})
    alice_view = await alice.sync(body2["next_batch"])
    for e in alice_view["rooms"]["join"].get(room, {}).get("ephemeral", {}).get("events", []):
        assert "m.read.private" not in json.dumps(e)
    await bob.call("POST", f"/rooms/{room}/read_markers", json={"m.fully_read": ids[2]})
    data = await bob.sync(bob_view["next_batch"])
    room_data = data["rooms"]["join"][room]["account_data"]["events"]
    assert {"type": "m.fully_read", "content": {"event_id": ids[2]}} in room_data


async def test_leave_section_and_lazy_members(client: Any) -> None:
    alice, bob = await User.new(client, "alice"), await User.new(client, "bob")
    room = await alice.create_room(preset="public_chat")
    await bob.call("POST", f"/join/{room}")
    since = (await bob.sync())["next_batch"]
    await alice.call("POST", f"/rooms/{room}/kick", json={"user_id": bob.user_id})
    body = await bob.sync(since)
    assert room in body["rooms"]["leave"]
    lazy = await alice.sync(filter=json.dumps({"room": {"state": {"lazy_load_members": True},
                                                        "timeline": {"limit": 1}}}))
    members = [e["state_key"] for e in lazy["rooms"]["join"][room]["state"]["events"] if e["type"] == "m.room.member"]
    assert bob.user_id not in members


async def test_chat_list_with_last_message_from_sync(client: Any) -> None:
    alice, bob = await User.new(client, "alice"), await User.new(client, "bob")
    rooms = []
    for i in range(3):
        room = await alice.create_room(name=f"chat{i}", invite=[bob.user_id])
        await bob.call("POST", f"/join/{room}")
        await alice.send(room, f"last in {i}")
        rooms.append(room)
    body = await bob.sync(filter=json.dumps({"room": {"timeline": {"limit": 1}}}))
    for i, room in enumerate(rooms):
        r = body["rooms"]["join"][room]
        assert [e["content"]["body"] for e in r["timeline"]["events"]] == [f"last in {i}"]
        names = [e["content"]["name"] for e in r["state"]["events"] if e["type"] == "m.room.name"]
        assert names == [f"chat{i}"]


async def read_sse(resp: Any, n: int, timeout: float = 10.0) -> list[tuple[str, dict[str, Any]]]:
    """Read n `sync` events (id, data) from an SSE response."""
    out: list[tuple[str, dict[str, Any]]] = []
    event_id, data = "", ""
    async def loop() -> None:
        nonlocal event_id, data
        while len(out) < n:
            line = (await resp.content.readline()).decode().rstrip("\r\n")
            if line.startswith("id:"):
                event_id = line[3:].strip()
            elif line.startswith("data:"):
                data += line[5:].strip()
            elif line == "" and data:
                out.append((event_id, json.loads(data)))
                data = ""
    await asyncio.wait_for(loop(), timeout)
    return out


async def test_sse_stream_resumes_without_gap_or_duplicate(client: Any) -> None:
    alice, bob = await User.new(client, "alice"), await User.new(client, "bob")
    room = await alice.create_room(preset="public_chat")
    await bob.call("POST", f"/join/{room}")
    url = "/_matrix/client/unstable/org.whispr/sync/stream"
    resp = await client.get(url, params={"access_token": bob.token})
    assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/event-stream")
    (first_id, _first), = await read_sse(resp, 1)
    received: list[str] = []
    last_id = first_id
    for i in range(5):
        await alice.send(room, f"a{i}")
    while len(received) < 5:
        for event_id, body in await read_sse(resp, 1):
            received += bodies(body, room)
            last_id = event_id
    resp.close()
    # sent while disconnected
    for i in range(5):
        await alice.send(room, f"b{i}")
    resumed = await client.get(url, headers={"Authorization": f"Bearer {bob.token}", "Last-Event-ID": last_id})
    while len(received) < 10:
        for _event_id, body in await read_sse(resumed, 1):
            received += bodies(body, room)
    resumed.close()
    assert received == [f"a{i}" for i in range(5)] + [f"b{i}" for i in range(5)]


async def test_sse_needs_a_token(client: Any) -> None:
    resp = await client.get("/_matrix/client/unstable/org.whispr/sync/stream")
    assert resp.status == 401 and (await resp.json())["errcode"] == "M_MISSING_TOKEN"


async def test_bad_since_token(client: Any) -> None:
    alice = await User.new(client, "alice")
    body = await alice.call("GET", "/sync", expect=400, params={"since": "garbage"})
    assert body["errcode"] == "M_INVALID_PARAM"


async def test_summary_heroes_exclude_self_in_join_order(client: Any) -> None:
    # Registered so that join order and alphabetical order differ.
    alice, zed, amy = (await User.new(client, "alice"), await User.new(client, "zed"),
                       await User.new(client, "amy"))
    room = await alice.create_room(preset="public_chat")
    await zed.call("POST", f"/join/{room}")
    await amy.call("POST", f"/join/{room}")
    bob = await User.new(client, "bob")
    await alice.call("POST", f"/rooms/{room}/invite", json={"user_id": bob.user_id})
    summary = (await alice.sync())["rooms"]["join"][room]["summary"]
    assert summary["m.heroes"] == [zed.user_id, amy.user_id, bob.user_id]
    assert summary["m.joined_member_count"] == 3 and summary["m.invited_member_count"] == 1
    amy_summary = (await amy.sync())["rooms"]["join"][room]["summary"]
    assert amy_summary["m.heroes"] == [alice.user_id, zed.user_id, bob.user_id]


def _members_in(body: Any, room: str) -> list[str]:
    section = body["rooms"]["join"].get(room, {})
    return [e["state_key"] for e in section.get("state", {}).get("events", []) if e["type"] == "m.room.member"]


async def test_lazy_members_in_incremental_syncs(client: Any) -> None:
    alice, bob, carol = (await User.new(client, "alice"), await User.new(client, "bob"),
                         await User.new(client, "carol"))
    room = await alice.create_room(preset="public_chat")
    await bob.call("POST", f"/join/{room}")
    await carol.call("POST", f"/join/{room}")
    lazy = json.dumps({"room": {"state": {"lazy_load_members": True}, "timeline": {"limit": 1}}})
    first = await alice.sync(filter=lazy)  # timeline: carol's join only
    assert bob.user_id not in _members_in(first, room)
    await bob.send(room, "hello")
    second = await alice.sync(first["next_batch"], filter=lazy)  # not limited: one new event
    assert not second["rooms"]["join"][room]["timeline"]["limited"]
    assert _members_in(second, room) == [bob.user_id]  # bob's member event was never sent to this device
    await bob.send(room, "again")
    third = await alice.sync(second["next_batch"], filter=lazy)
    assert _members_in(third, room) == []  # already sent: not again
    # A limited incremental sync brings the senders it has not sent yet, too.
    for i in range(3):
        await carol.send(room, f"carol {i}")
    fourth = await alice.sync(third["next_batch"], filter=lazy)
    assert fourth["rooms"]["join"][room]["timeline"]["limited"]
    assert carol.user_id not in _members_in(fourth, room)  # her join was in the first timeline
    # include_redundant_members sends them every time.
    redundant = json.dumps({"room": {"state": {"lazy_load_members": True, "include_redundant_members": True},
                                     "timeline": {"limit": 1}}})
    await bob.send(room, "third")
    fifth = await alice.sync(fourth["next_batch"], filter=redundant)
    assert _members_in(fifth, room) == [bob.user_id]
    # Another device of the same user has been sent nothing yet.
    other = User(client, {"user_id": alice.user_id, "access_token": (await (await client.post(
        "/_matrix/client/v3/login", json={"type": "m.login.password", "identifier": {"type": "m.id.user",
        "user": "alice"}, "password": "correct horse"})).json())["access_token"]})
    await carol.send(room, "between")
    start = await other.sync(filter=lazy)  # timeline: carol's message
    await bob.send(room, "fourth")
    assert _members_in(await other.sync(start["next_batch"], filter=lazy), room) == [bob.user_id]
