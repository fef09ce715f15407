"""Rooms over HTTP: creation, membership, state, sending, redaction, history, directory."""

from __future__ import annotations

import asyncio

from typing import Any

import pytest

from tests.rooms_helpers import User


async def test_create_room_with_presets_name_topic_alias(client: Any) -> None:
    alice = await User.new(client, "alice")
    room = await alice.create_room(name="Tea", topic="All about tea", room_alias_name="tea", preset="public_chat",
                                   visibility="public")
    state = await alice.call("GET", f"/rooms/{room}/state")
    by_type = {(e["type"], e["state_key"]): e for e in state}
    assert by_type[("m.room.create", "")]["content"]["room_version"] == "10"
    assert by_type[("m.room.create", "")]["content"]["creator"] == alice.user_id
    assert by_type[("m.room.join_rules", "")]["content"]["join_rule"] == "public"
    assert by_type[("m.room.name", "")]["content"]["name"] == "Tea"
    assert by_type[("m.room.topic", "")]["content"]["topic"] == "All about tea"
    assert by_type[("m.room.power_levels", "")]["content"]["users"] == {alice.user_id: 100}
    assert by_type[("m.room.canonical_alias", "")]["content"]["alias"] == "#tea:test.local"
    resolved = await alice.call("GET", "/directory/room/%23tea:test.local")
    assert resolved["room_id"] == room
    public = await alice.call("GET", "/publicRooms")
    assert [r["room_id"] for r in public["chunk"]] == [room]
    assert public["chunk"][0]["name"] == "Tea" and public["chunk"][0]["num_joined_members"] == 1
    await alice.call("POST", "/createRoom", expect=400, json={"room_alias_name": "tea"})


async def test_room_version_11_and_unsupported(client: Any) -> None:
    alice = await User.new(client, "alice")
    room = await alice.create_room(room_version="11")
    create = await alice.call("GET", f"/rooms/{room}/state/m.room.create")
    assert create["room_version"] == "11" and "creator" not in create
    body = await alice.call("POST", "/createRoom", expect=400, json={"room_version": "999"})
    assert body["errcode"] == "M_UNSUPPORTED_ROOM_VERSION"


async def test_invite_join_send_leave_flow(client: Any) -> None:
    alice, bob = await User.new(client, "alice"), await User.new(client, "bob")
    room = await alice.create_room(name="Group")
    # bob cannot join an invite-only room uninvited, nor read or send
    await bob.call("POST", f"/rooms/{room}/join", expect=403)
    await bob.call("GET", f"/rooms/{room}/messages", expect=403)
    assert (await bob.send(room, "hi", expect=403))["errcode"] == "M_FORBIDDEN"
    await alice.call("POST", f"/rooms/{room}/invite", json={"user_id": bob.user_id})
    await bob.call("POST", f"/join/{room}")
    await bob.send(room, "hello alice")
    members = await alice.call("GET", f"/rooms/{room}/joined_members")
    assert set(members["joined"]) == {alice.user_id, bob.user_id}
    assert room in (await bob.call("GET", "/joined_rooms"))["joined_rooms"]
    await bob.call("POST", f"/rooms/{room}/leave")
    assert room not in (await bob.call("GET", "/joined_rooms"))["joined_rooms"]
    await bob.call("POST", f"/rooms/{room}/forget")


async def test_kick_ban_unban_and_power(client: Any) -> None:
    alice, bob, carol = [await User.new(client, n) for n in ("alice", "bob", "carol")]
    room = await alice.create_room(preset="public_chat")
    await bob.call("POST", f"/join/{room}")
    await carol.call("POST", f"/join/{room}")
    # bob (power 0) cannot kick carol; alice (100) can
    await bob.call("POST", f"/rooms/{room}/kick", expect=403, json={"user_id": carol.user_id})
    await alice.call("POST", f"/rooms/{room}/kick", json={"user_id": carol.user_id, "reason": "bye"})
    await alice.call("POST", f"/rooms/{room}/ban", json={"user_id": bob.user_id})
    await bob.call("POST", f"/join/{room}", expect=403)
    await alice.call("POST", f"/rooms/{room}/unban", json={"user_id": bob.user_id})
    await bob.call("POST", f"/join/{room}")
    # bob cannot change the name (state_default 50)
    await bob.call("PUT", f"/rooms/{room}/state/m.room.name", expect=403, json={"name": "hijack"})


async def test_send_is_idempotent_per_txn(client: Any) -> None:
    alice = await User.new(client, "alice")
    room = await alice.create_room()
    path = f"/rooms/{room}/send/m.room.message/same-txn"
    first = await alice.call("PUT", path, json={"msgtype": "m.text", "body": "once"})
    second = await alice.call("PUT", path, json={"msgtype": "m.text", "body": "once"})
    assert first["event_id"] == second["event_id"]
    msgs = await alice.call("GET", f"/rooms/{room}/messages", params={"dir": "b", "limit": "50"})
    assert sum(1 for e in msgs["chunk"] if e["type"] == "m.room.message") == 1


async def test_concurrent_retries_of_one_txn_store_one_event(client: Any) -> None:
    """A client that retries before the first attempt has answered gets the same event, once;
    the other senders' messages in between all land."""
    alice, bob = await User.new(client, "alice"), await User.new(client, "bob")
    room = await alice.create_room(preset="public_chat")
    await bob.call("POST", f"/join/{room}")
    path = f"/rooms/{room}/send/m.room.message/retry-txn"
    results = await asyncio.gather(
        *[alice.call("PUT", path, json={"msgtype": "m.text", "body": "once"}) for _ in range(5)],
        *[bob.send(room, f"bob {i}") for i in range(10)])
    assert len({r["event_id"] for r in results[:5]}) == 1
    msgs = await alice.call("GET", f"/rooms/{room}/messages", params={"dir": "b", "limit": "50"})
    chunk = msgs["chunk"]
    bodies = [e["content"]["body"] for e in chunk if e["type"] == "m.room.message"]
    assert bodies.count("once") == 1 and sorted(b for b in bodies if b != "once") == sorted(
        f"bob {i}" for i in range(10))


async def test_bad_content_is_refused_and_nothing_stored(client: Any) -> None:
    alice = await User.new(client, "alice")
    room = await alice.create_room()
    before = await alice.call("GET", f"/rooms/{room}/messages", params={"limit": "100"})
    levels = await alice.call("GET", f"/rooms/{room}/state/m.room.power_levels")
    bad = dict(levels, ban="50")
    body = await alice.call("PUT", f"/rooms/{room}/state/m.room.power_levels", expect=400, json=bad)
    assert body["errcode"] == "M_BAD_JSON"
    body = await alice.call("PUT", f"/rooms/{room}/send/m.room.message/big", expect=413,
                            json={"msgtype": "m.text", "body": "x" * 70_000})
    assert body["errcode"] == "M_TOO_LARGE"
    # impersonating another user's state key is refused by the auth rules
    await alice.call("PUT", f"/rooms/{room}/state/m.custom/@bob:test.local", expect=403, json={})
    after = await alice.call("GET", f"/rooms/{room}/messages", params={"limit": "100"})
    assert [e["event_id"] for e in after["chunk"]] == [e["event_id"] for e in before["chunk"]]


async def test_unknown_room(client: Any) -> None:
    alice = await User.new(client, "alice")
    await alice.call("PUT", "/rooms/!nope:test.local/send/m.room.message/1", expect=403, json={"body": "x"})
    body = await alice.call("POST", "/join/!nope:test.local", expect=404)
    assert body["errcode"] == "M_NOT_FOUND"
    await alice.call("POST", "/join/%23missing:test.local", expect=404)


async def test_messages_pagination_both_directions(client: Any) -> None:
    alice = await User.new(client, "alice")
    room = await alice.create_room()
    sent = [await alice.send(room, f"m{i}") for i in range(25)]
    seen: list[str] = []
    token = None
    while True:
        params = {"dir": "b", "limit": "10", "filter": '{"types": ["m.room.message"]}'}
        if token:
            params["from"] = token
        page = await alice.call("GET", f"/rooms/{room}/messages", params=params)
        seen += [e["event_id"] for e in page["chunk"]]
        if "end" not in page:
            break
        token = page["end"]
    assert seen == list(reversed(sent))
    forward = await alice.call("GET", f"/rooms/{room}/messages", params={"dir": "f", "limit": "1000"})
    ids = [e["event_id"] for e in forward["chunk"] if e["type"] == "m.room.message"]
    assert ids == sent


async def test_redaction_context_and_event(client: Any) -> None:
    alice = await User.new(client, "alice")
    room = await alice.create_room()
    ids = [await alice.send(room, f"m{i}") for i in range(5)]
    red = await alice.call("PUT", f"/rooms/{room}/redact/{ids[2]}/r1", json={"reason": "oops"})
    ev = await alice.call("GET", f"/rooms/{room}/event/{ids[2]}")
    assert ev["content"] == {} and ev["unsigned"]["redacted_because"]["event_id"] == red["event_id"]
    ctx = await alice.call("GET", f"/rooms/{room}/context/{ids[2]}", params={"limit": "4"})
    assert [e["event_id"] for e in ctx["events_before"]] == [ids[1], ids[0]]
    assert [e["event_id"] for e in ctx["events_after"]] == [ids[3], ids[4]]
    assert any(e["type"] == "m.room.create" for e in ctx["state"])
    await alice.call("GET", f"/rooms/{room}/event/$nope", expect=404)


def _timeline(sync: dict[str, Any], room: str) -> dict[str, dict[str, Any]]:
    events = sync["rooms"]["join"][room]["timeline"]["events"]
    return {e["event_id"]: e for e in events}


@pytest.mark.parametrize("version", ["10", "11", "12"])
async def test_redacting_others_events_needs_the_redact_level(client: Any, version: str) -> None:
    alice, bob = await User.new(client, "alice"), await User.new(client, "bob")
    room = await alice.create_room(preset="public_chat", room_version=version)
    await bob.call("POST", f"/join/{room}")
    levels = await alice.call("GET", f"/rooms/{room}/state")
    levels_id = next(e["event_id"] for e in levels if e["type"] == "m.room.power_levels")
    levels_before = await alice.call("GET", f"/rooms/{room}/state/m.room.power_levels")
    admin_msg = await alice.send(room, "from the admin")

    # bob (level 0) may redact neither the admin's message nor the power levels, by any route.
    refused = [await bob.call("PUT", f"/rooms/{room}/redact/{admin_msg}/r1", expect=403, json={}),
               await bob.call("PUT", f"/rooms/{room}/redact/{levels_id}/r2", expect=403, json={}),
               await bob.call("PUT", f"/rooms/{room}/send/m.room.redaction/r3", expect=403,
                              json={"redacts": admin_msg})]
    assert all(body["errcode"] == "M_FORBIDDEN" for body in refused)
    for reader in (alice, bob):
        seen = await reader.call("GET", f"/rooms/{room}/event/{admin_msg}")
        assert seen["content"]["body"] == "from the admin" and "redacted_because" not in seen["unsigned"]
        chunk = (await reader.call("GET", f"/rooms/{room}/messages", params={"limit": "50"}))["chunk"]
        assert not any(e["type"] == "m.room.redaction" for e in chunk)  # nothing was stored
        assert next(e for e in chunk if e["event_id"] == admin_msg)["content"]["body"] == "from the admin"
        synced = _timeline(await reader.sync(filter='{"room": {"timeline": {"limit": 50}}}'), room)
        assert synced[admin_msg]["content"]["body"] == "from the admin"
    assert await alice.call("GET", f"/rooms/{room}/state/m.room.power_levels") == levels_before

    # One's own events may be redacted at the events level; the admin may redact anyone's.
    own, others = await bob.send(room, "mine"), await bob.send(room, "rude")
    since = (await bob.sync())["next_batch"]
    own_red = await bob.call("PUT", f"/rooms/{room}/redact/{own}/r4", json={})
    admin_red = await alice.call("PUT", f"/rooms/{room}/redact/{others}/r5", json={"reason": "rude"})
    synced = _timeline(await bob.sync(since), room)
    for target, red in ((own, own_red), (others, admin_red)):
        seen = await bob.call("GET", f"/rooms/{room}/event/{target}")
        assert seen["content"] == {} and seen["unsigned"]["redacted_because"]["event_id"] == red["event_id"]
        assert synced[red["event_id"]]["redacts"] == target
    assert synced[admin_red["event_id"]]["content"].get("reason") == "rude"


async def test_redacting_unknown_or_other_rooms_events_is_not_found(client: Any) -> None:
    alice = await User.new(client, "alice")
    room, other = await alice.create_room(), await alice.create_room()
    elsewhere = await alice.send(other, "in the other room")
    for target in ("$unknown", elsewhere):
        body = await alice.call("PUT", f"/rooms/{room}/redact/{target}/r{target[1:4]}", expect=404, json={})
        assert body["errcode"] == "M_NOT_FOUND"
    body = await alice.call("PUT", f"/rooms/{room}/state/m.room.redaction/k", expect=404, json={"redacts": elsewhere})
    assert body["errcode"] == "M_NOT_FOUND"  # a state event of that type is checked the same way
    body = await alice.call("PUT", f"/rooms/{room}/send/m.room.redaction/r9", expect=400, json={"reason": "x"})
    assert body["errcode"] == "M_BAD_JSON"  # a redaction must name its target
    assert (await alice.call("GET", f"/rooms/{other}/event/{elsewhere}"))["content"]["body"] == "in the other room"


async def test_account_data_filters_and_user_directory(client: Any) -> None:
    alice = await User.new(client, "alice")
    bob = await User.new(client, "bob")
    await alice.call("PUT", f"/user/{alice.user_id}/account_data/org.example.x", json={"a": 1})
    assert await alice.call("GET", f"/user/{alice.user_id}/account_data/org.example.x") == {"a": 1}
    await bob.call("GET", f"/user/{alice.user_id}/account_data/org.example.x", expect=403)
    fid = (await alice.call("POST", f"/user/{alice.user_id}/filter", json={"room": {"timeline": {"limit": 3}}}))
    got = await alice.call("GET", f"/user/{alice.user_id}/filter/{fid['filter_id']}")
    assert got == {"room": {"timeline": {"limit": 3}}}
    await alice.call("POST", f"/user/{alice.user_id}/filter", expect=400, json={"room": {"timeline": {"limit": "x"}}})
    await alice.create_room(preset="private_chat", invite=[bob.user_id])
    await bob.call("POST", f"/join/{(await bob.sync())['rooms']['invite'].popitem()[0]}")
    found = await alice.call("POST", "/user_directory/search", json={"search_term": "bo"})
    assert [r["user_id"] for r in found["results"]] == [bob.user_id]


async def test_direct_chat_sets_m_direct_for_both(client: Any) -> None:
    alice, bob = await User.new(client, "alice"), await User.new(client, "bob")
    room = await alice.create_room(is_direct=True, invite=[bob.user_id], preset="trusted_private_chat")
    assert await alice.call("GET", f"/user/{alice.user_id}/account_data/m.direct") == {bob.user_id: [room]}
    await bob.call("POST", f"/join/{room}")
    assert await bob.call("GET", f"/user/{bob.user_id}/account_data/m.direct") == {alice.user_id: [room]}


async def test_group_chat_add_remove_rename(client: Any) -> None:
    alice, bob = await User.new(client, "alice"), await User.new(client, "bob")
    room = await alice.create_room(name="Friends", topic="our group")
    await alice.call("POST", f"/rooms/{room}/invite", json={"user_id": bob.user_id})
    await bob.call("POST", f"/rooms/{room}/join")
    await alice.call("PUT", f"/rooms/{room}/state/m.room.name", json={"name": "Best friends"})
    await alice.call("PUT", f"/rooms/{room}/state/m.room.topic", json={"topic": "new bio"})
    await alice.call("PUT", f"/rooms/{room}/state/m.room.avatar", json={"url": "mxc://test.local/av"})
    assert (await bob.call("GET", f"/rooms/{room}/state/m.room.name"))["name"] == "Best friends"
    await alice.call("POST", f"/rooms/{room}/kick", json={"user_id": bob.user_id})
    await bob.send(room, "still here?", expect=403)


async def test_room_version_12_room_id_from_create_event(client: Any) -> None:
    alice, bob = await User.new(client, "alice"), await User.new(client, "bob")
    room = await alice.create_room(room_version="12", preset="public_chat", name="v12")
    create = await alice.call("GET", f"/rooms/{room}/state/m.room.create", params={"format": "event"})
    assert room == "!" + create["event_id"][1:] and ":" not in room
    levels = await alice.call("GET", f"/rooms/{room}/state/m.room.power_levels")
    assert alice.user_id not in levels.get("users", {})
    await bob.call("POST", f"/join/{room}")
    await bob.send(room, "hello v12")
    # the creator keeps unlimited power: kicks work, bob (power 0) cannot rename
    await bob.call("PUT", f"/rooms/{room}/state/m.room.name", expect=403, json={"name": "mine"})
    await alice.call("POST", f"/rooms/{room}/kick", json={"user_id": bob.user_id})
