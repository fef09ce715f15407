"""Rooms of every room version (1-12) on one server over HTTP, on both backends: create, join, send,
redact, state, read back; the event ID formats clients see."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import quote

import pytest

from homeserver.events.room_versions import KNOWN_ROOM_VERSIONS
from tests.rooms_helpers import User

OLD_AND_NEW = list(KNOWN_ROOM_VERSIONS)
_OPAQUE = re.compile(r"^\$[A-Za-z]+:.+$")
_BASE64 = re.compile(r"^\$[A-Za-z0-9+/]{43}$")
_URLSAFE = re.compile(r"^\$[A-Za-z0-9_-]{43}$")


def q(event_id: str) -> str:
    """Event IDs of v3 rooms may hold '/': clients escape them in paths."""
    return quote(event_id, safe="")


def id_pattern(version: str) -> re.Pattern[str]:
    return _OPAQUE if version in ("1", "2") else _BASE64 if version == "3" else _URLSAFE


async def messages(user: User, room: str) -> list[dict[str, Any]]:
    return (await user.call("GET", f"/rooms/{room}/messages", params={"dir": "b", "limit": "50"}))["chunk"]


@pytest.mark.parametrize("version", OLD_AND_NEW)
async def test_room_of_each_version(client: Any, version: str) -> None:
    alice, bob = await User.new(client, "alice"), await User.new(client, "bob")
    room = await alice.create_room(preset="public_chat", room_version=version, name=f"v{version}")
    create = await alice.call("GET", f"/rooms/{room}/state/m.room.create")
    assert create["room_version"] == version
    await bob.call("POST", f"/join/{room}", json={})
    hello = await bob.send(room, "hello")
    assert id_pattern(version).match(hello), hello
    if version in ("1", "2"):
        assert hello.endswith(":" + alice.user_id.split(":", 1)[1])
    bye = await alice.send(room, "bye")
    await alice.call("PUT", f"/rooms/{room}/state/m.room.topic", json={"topic": f"topic {version}"})
    # Bob redacts his own message; Alice (the room's admin) redacts nothing of Bob's but may.
    redaction = (await bob.call("PUT", f"/rooms/{room}/redact/{q(hello)}/r1", json={"reason": "oops"}))["event_id"]
    assert id_pattern(version).match(redaction)
    await alice.call("PUT", f"/rooms/{room}/redact/{q(bye)}/r2", json={})
    chunk = await messages(bob, room)
    by_id = {e["event_id"]: e for e in chunk}
    assert by_id[hello]["content"] == {} and by_id[bye]["content"] == {}
    assert by_id[redaction]["redacts"] == hello
    assert (await bob.call("GET", f"/rooms/{room}/event/{q(hello)}"))["content"] == {}
    assert (await bob.call("GET", f"/rooms/{room}/state/m.room.topic"))["topic"] == f"topic {version}"
    # Bob cannot redact Alice's events without the redact level, in any version.
    still = await alice.send(room, "still here")
    await bob.call("PUT", f"/rooms/{room}/redact/{q(still)}/r3", json={}, expect=403)
    members = (await alice.call("GET", f"/rooms/{room}/joined_members"))["joined"]
    assert set(members) == {alice.user_id, bob.user_id}


async def test_default_version_stays_10_and_capabilities_list_every_version(client: Any) -> None:
    alice = await User.new(client, "alice")
    room = await alice.create_room()
    assert (await alice.call("GET", f"/rooms/{room}/state/m.room.create"))["room_version"] == "10"
    caps = (await alice.call("GET", "/capabilities"))["capabilities"]["m.room_versions"]
    assert caps["default"] == "10"
    assert caps["available"] == {str(n): "stable" for n in range(1, 13)}
    await alice.call("POST", "/createRoom", json={"room_version": "13"}, expect=400)


async def sync_rooms(user: User) -> dict[str, Any]:
    return (await user.call("GET", "/sync"))["rooms"]


@pytest.mark.parametrize("version", ["7", "10", "12"])
async def test_knocking_on_a_local_room(client: Any, version: str) -> None:
    alice, bob = await User.new(client, "alice"), await User.new(client, "bob")
    room = await alice.create_room(preset="private_chat", room_version=version, name="knock here",
                                   initial_state=[{"type": "m.room.join_rules", "content": {"join_rule": "knock"}}])
    await bob.call("POST", f"/join/{room}", json={}, expect=403)
    assert (await bob.call("POST", f"/knock/{room}", json={"reason": "let me in"}))["room_id"] == room
    knock = (await sync_rooms(bob))["knock"][room]["knock_state"]["events"]
    shown = {e["type"]: e for e in knock}
    assert shown["m.room.name"]["content"]["name"] == "knock here"
    assert shown["m.room.join_rules"]["content"]["join_rule"] == "knock"
    assert shown["m.room.member"]["content"]["membership"] == "knock"
    member = await alice.call("GET", f"/rooms/{room}/state/m.room.member/{bob.user_id}")
    assert member["membership"] == "knock" and member["reason"] == "let me in"
    await bob.call("POST", f"/knock/{room}", json={})  # knocking again is allowed (knock to knock)
    await alice.call("POST", f"/rooms/{room}/invite", json={"user_id": bob.user_id})
    assert room in (await sync_rooms(bob))["invite"]
    await bob.call("POST", f"/knock/{room}", json={}, expect=403)  # invited: just join
    await bob.call("POST", f"/join/{room}", json={})
    await bob.send(room, "in")
    await bob.call("POST", f"/knock/{room}", json={}, expect=403)


async def test_knocking_needs_v7_and_a_knock_join_rule(client: Any) -> None:
    alice, bob = await User.new(client, "alice"), await User.new(client, "bob")
    old = await alice.create_room(room_version="6",
                                  initial_state=[{"type": "m.room.join_rules", "content": {"join_rule": "knock"}}])
    await bob.call("POST", f"/knock/{old}", json={}, expect=403)
    public = await alice.create_room(preset="public_chat", room_version="7")
    await bob.call("POST", f"/knock/{public}", json={}, expect=403)
    await bob.call("POST", "/knock/!nowhere:test.local", json={}, expect=404)
    # Retracting a knock is leaving.
    knock = await alice.create_room(room_version="7",
                                    initial_state=[{"type": "m.room.join_rules", "content": {"join_rule": "knock"}}])
    await bob.call("POST", f"/knock/{knock}", json={})
    await bob.call("POST", f"/rooms/{knock}/leave", json={})
    assert (await alice.call("GET", f"/rooms/{knock}/state/m.room.member/{bob.user_id}"))["membership"] == "leave"


@pytest.mark.parametrize("version", ["8", "9", "10"])
async def test_restricted_join_on_one_server(client: Any, version: str) -> None:
    alice, bob, zara = await User.new(client, "alice"), await User.new(client, "bob"), await User.new(client, "zara")
    space = await alice.create_room(preset="public_chat", room_version=version)
    allow = [{"type": "m.room_membership", "room_id": space}]
    room = await alice.create_room(preset="private_chat", room_version=version, initial_state=[
        {"type": "m.room.join_rules", "content": {"join_rule": "restricted", "allow": allow}}])
    await bob.call("POST", f"/join/{room}", json={}, expect=403)  # not in the allowed room yet
    await bob.call("POST", f"/join/{space}", json={})
    await bob.call("POST", f"/join/{room}", json={})
    member = await alice.call("GET", f"/rooms/{room}/state/m.room.member/{bob.user_id}")
    assert member["membership"] == "join" and member["join_authorised_via_users_server"] == alice.user_id
    await bob.send(room, "in through the space")
    # An invited user needs no authoriser.
    await alice.call("POST", f"/rooms/{room}/invite", json={"user_id": zara.user_id})
    await zara.call("POST", f"/join/{room}", json={})
    assert "join_authorised_via_users_server" not in await alice.call(
        "GET", f"/rooms/{room}/state/m.room.member/{zara.user_id}")


async def test_restricted_join_rule_unknown_before_v8(client: Any) -> None:
    alice, bob = await User.new(client, "alice"), await User.new(client, "bob")
    space = await alice.create_room(preset="public_chat", room_version="7")
    room = await alice.create_room(room_version="7", initial_state=[{"type": "m.room.join_rules", "content": {
        "join_rule": "restricted", "allow": [{"type": "m.room_membership", "room_id": space}]}}])
    await bob.call("POST", f"/join/{space}", json={})
    await bob.call("POST", f"/join/{room}", json={}, expect=403)


@pytest.mark.parametrize("version", ["1", "9", "10"])
async def test_string_power_levels_from_a_client(client: Any, version: str) -> None:
    """Before v10 levels may be integer strings (rooms of older servers hold them, and clients send the
    content back with one entry changed); v10 refuses them with M_BAD_JSON."""
    alice, bob = await User.new(client, "alice"), await User.new(client, "bob")
    room = await alice.create_room(preset="public_chat", room_version=version)
    await bob.call("POST", f"/join/{room}", json={})
    levels = await alice.call("GET", f"/rooms/{room}/state/m.room.power_levels")
    levels["users"] = {alice.user_id: "100", bob.user_id: " 50 "}
    levels["events"] = {**levels.get("events", {}), "m.room.topic": "50"}
    if version == "10":
        refused = await alice.call("PUT", f"/rooms/{room}/state/m.room.power_levels", json=levels, expect=400)
        assert refused["errcode"] == "M_BAD_JSON"
        return
    await alice.call("PUT", f"/rooms/{room}/state/m.room.power_levels", json=levels)
    await bob.call("PUT", f"/rooms/{room}/state/m.room.topic", json={"topic": "bob's, with level \" 50 \""})
    assert (await bob.call("GET", f"/rooms/{room}/state/m.room.power_levels"))["users"][bob.user_id] == " 50 "
    await bob.call("PUT", f"/rooms/{room}/state/m.room.power_levels", json=levels, expect=403)  # needs 100


@pytest.mark.parametrize("version,accepted", [("1", True), ("5", True), ("6", False), ("10", False)])
async def test_floats_in_content_before_v6(client: Any, version: str, accepted: bool) -> None:
    """Canonical JSON (no floats) is enforced from room version 6; before, the spec says not to."""
    alice = await User.new(client, "alice")
    room = await alice.create_room(room_version=version)
    body = {"msgtype": "m.text", "body": "rated", "rating": 4.5}
    if not accepted:
        refused = await alice.call("PUT", f"/rooms/{room}/send/m.room.message/f1", json=body, expect=400)
        assert refused["errcode"] == "M_BAD_JSON"
        return
    event_id = (await alice.call("PUT", f"/rooms/{room}/send/m.room.message/f1", json=body))["event_id"]
    assert (await alice.call("GET", f"/rooms/{room}/event/{q(event_id)}"))["content"]["rating"] == 4.5


async def test_knock_restricted_from_v10(client: Any) -> None:
    """knock_restricted (v10+): a member of the allowed room joins straight in; anyone else may knock."""
    alice, bob, zara = await User.new(client, "alice"), await User.new(client, "bob"), await User.new(client, "zara")
    space = await alice.create_room(preset="public_chat", room_version="10")
    rules = {"join_rule": "knock_restricted", "allow": [{"type": "m.room_membership", "room_id": space}]}
    room = await alice.create_room(room_version="10", initial_state=[{"type": "m.room.join_rules", "content": rules}])
    await bob.call("POST", f"/join/{space}", json={})
    await bob.call("POST", f"/join/{room}", json={})
    await zara.call("POST", f"/join/{room}", json={}, expect=403)
    await zara.call("POST", f"/knock/{room}", json={})
    assert (await alice.call("GET", f"/rooms/{room}/state/m.room.member/{zara.user_id}"))["membership"] == "knock"
    # In v9 the same rule is unknown: nobody gets in by it, nor knocks.
    old = await alice.create_room(room_version="9", initial_state=[{"type": "m.room.join_rules",
                                                                   "content": {**rules, "allow": []}}])
    await zara.call("POST", f"/knock/{old}", json={}, expect=403)
