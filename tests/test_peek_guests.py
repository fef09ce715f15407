"""Peeking (room previews of world_readable rooms) and GET /rooms/{roomId}/initialSync, on both engines."""

from __future__ import annotations

import asyncio
from typing import Any

import nio

from tests.conftest import register
from tests.rooms_helpers import V3, User

def bodies(events: list[dict[str, Any]]) -> list[str]:
    return [e["content"]["body"] for e in events if e["type"] == "m.room.message"]


async def readable_room(alice: User) -> tuple[str, dict[str, str]]:
    """A public room with a message under `shared`, then made world_readable, with two more."""
    room = await alice.create_room(preset="public_chat", name="lobby")
    ids = {"shared": await alice.send(room, "shared")}
    await alice.call("PUT", f"/rooms/{room}/state/m.room.history_visibility",
                     json={"history_visibility": "world_readable"})
    ids["one"] = await alice.send(room, "one")
    ids["two"] = await alice.send(room, "two")
    return room, ids


async def test_a_non_member_reads_a_world_readable_room(client: Any) -> None:
    alice, bob = await User.new(client, "alice"), await User.new(client, "bob")
    room, ids = await readable_room(alice)

    chunk = (await bob.call("GET", f"/rooms/{room}/messages", params={"dir": "b", "limit": "50"}))["chunk"]
    assert bodies(chunk)[::-1] == ["one", "two"]  # what was sent before it was world_readable stays hidden
    forward = (await bob.call("GET", f"/rooms/{room}/messages", params={"dir": "f", "limit": "50"}))["chunk"]
    assert bodies(forward) == ["one", "two"]
    state = await bob.call("GET", f"/rooms/{room}/state")
    assert {e["type"] for e in state} >= {"m.room.create", "m.room.name", "m.room.history_visibility"}
    assert (await bob.call("GET", f"/rooms/{room}/state/m.room.name"))["name"] == "lobby"
    assert (await bob.call("GET", f"/rooms/{room}/state/m.room.name/", params={"format": "event"}))["type"] \
        == "m.room.name"
    assert (await bob.call("GET", f"/rooms/{room}/event/{ids['one']}"))["content"]["body"] == "one"
    await bob.call("GET", f"/rooms/{room}/event/{ids['shared']}", expect=404)
    context = await bob.call("GET", f"/rooms/{room}/context/{ids['two']}", params={"limit": "10"})
    assert context["event"]["event_id"] == ids["two"] and bodies(context["events_before"]) == ["one"]
    members = (await bob.call("GET", f"/rooms/{room}/members"))["chunk"]
    assert [m["state_key"] for m in members] == [alice.user_id]

    snapshot = await bob.call("GET", f"/rooms/{room}/initialSync")
    assert snapshot["room_id"] == room and "membership" not in snapshot
    assert bodies(snapshot["messages"]["chunk"]) == ["one", "two"]
    assert snapshot["visibility"] == "private"  # not in the directory
    assert {e["type"] for e in snapshot["state"]} >= {"m.room.create", "m.room.member", "m.room.name"}
    # Its `end` continues forwards (the next message), its `start` backwards.
    third = await alice.send(room, "three")
    after = await bob.call("GET", f"/rooms/{room}/messages",
                           params={"dir": "f", "from": snapshot["messages"]["end"]})
    assert [e["event_id"] for e in after["chunk"]] == [third]
    # Still not a member: no sending, no joined-member list.
    await bob.send(room, "lurker speaks", expect=403)
    await bob.call("GET", f"/rooms/{room}/joined_members", expect=403)


async def test_other_rooms_stay_closed_to_non_members(client: Any) -> None:
    alice, bob = await User.new(client, "alice"), await User.new(client, "bob")
    room = await alice.create_room(preset="public_chat")
    event_id = await alice.send(room, "members only")
    paths = [f"/rooms/{room}/messages", f"/rooms/{room}/state", f"/rooms/{room}/state/m.room.create",
             f"/rooms/{room}/event/{event_id}", f"/rooms/{room}/context/{event_id}", f"/rooms/{room}/members",
             f"/rooms/{room}/initialSync", "/rooms/!unknown:test.local/initialSync"]
    for path in paths:
        assert (await bob.call("GET", path, expect=403))["errcode"] == "M_FORBIDDEN", path
    # A room that stops being world_readable closes again.
    readable, _ = await readable_room(alice)
    await bob.call("GET", f"/rooms/{readable}/initialSync")
    await alice.call("PUT", f"/rooms/{readable}/state/m.room.history_visibility", json={"history_visibility": "shared"})
    assert (await bob.call("GET", f"/rooms/{readable}/messages", expect=403))["errcode"] == "M_FORBIDDEN"


async def test_initial_sync_of_members_and_of_those_who_left(client: Any) -> None:
    alice, bob = await User.new(client, "alice"), await User.new(client, "bob")
    room = await alice.create_room(preset="public_chat", visibility="public")
    await bob.call("POST", f"/join/{room}")
    for i in range(5):
        await alice.send(room, f"m{i}")
    await bob.call("PUT", f"/user/{bob.user_id}/rooms/{room}/tags/u.work", json={"order": 0.5})

    snapshot = await bob.call("GET", f"/rooms/{room}/initialSync", params={"limit": "3"})
    assert snapshot["membership"] == "join" and snapshot["visibility"] == "public"
    assert bodies(snapshot["messages"]["chunk"]) == ["m2", "m3", "m4"]
    assert {"type": "m.tag", "content": {"tags": {"u.work": {"order": 0.5}}}} in snapshot["account_data"]
    earlier = await bob.call("GET", f"/rooms/{room}/messages",
                             params={"dir": "b", "from": snapshot["messages"]["start"], "limit": "2"})
    assert bodies(earlier["chunk"]) == ["m1", "m0"]

    await bob.call("POST", f"/rooms/{room}/leave")
    await alice.send(room, "after bob left")
    await alice.call("PUT", f"/rooms/{room}/state/m.room.topic", json={"topic": "new topic"})
    left = await bob.call("GET", f"/rooms/{room}/initialSync")
    assert left["membership"] == "leave"
    assert "after bob left" not in bodies(left["messages"]["chunk"])
    assert bodies(left["messages"]["chunk"])[-1] == "m4"  # the last he saw while there
    assert "m.room.topic" not in {e["type"] for e in left["state"]}
    await bob.call("GET", f"/rooms/{room}/initialSync", params={"limit": "x"}, expect=400)


async def test_matrix_nio_peeks_into_a_world_readable_room(client: Any) -> None:
    alice = await User.new(client, "alice")
    room, _ = await readable_room(alice)
    reg = await register(client, "nio")
    peeker = nio.AsyncClient(str(client.server.make_url("")).rstrip("/"), reg["user_id"])
    peeker.restore_login(reg["user_id"], reg["device_id"], reg["access_token"])
    try:
        page = await peeker.room_messages(room, start="", limit=10)
        assert isinstance(page, nio.RoomMessagesResponse), page
        assert [e.body for e in page.chunk if isinstance(e, nio.RoomMessageText)] == ["two", "one"]
        state = await peeker.room_get_state(room)
        assert isinstance(state, nio.RoomGetStateResponse), state
        assert any(e["type"] == "m.room.name" and e["content"]["name"] == "lobby" for e in state.events)
        name = await peeker.room_get_state_event(room, "m.room.name")
        assert isinstance(name, nio.RoomGetStateEventResponse) and name.content["name"] == "lobby"
    finally:
        await peeker.close()
