"""User directory search: by default only users who share a room with the searcher or are in public rooms."""

from __future__ import annotations

from typing import Any

from tests.rooms_helpers import User


async def _found(user: User, term: str, **extra: Any) -> dict[str, Any]:
    return await user.call("POST", "/user_directory/search", json={"search_term": term, **extra})


def _ids(found: dict[str, Any]) -> list[str]:
    return [r["user_id"] for r in found["results"]]


async def test_search_sees_room_mates_and_public_room_members_only(client: Any) -> None:
    alice, bob, carol, dana, erin = [await User.new(client, n) for n in ("alice", "bob", "carol", "dana", "erin")]
    # alice and bob share a private room; carol is alone in a public room (not in the room directory);
    # dana is alone in a private room; erin is in no room at all.
    shared = await alice.create_room(preset="private_chat", invite=[bob.user_id])
    await bob.call("POST", f"/join/{shared}")
    await carol.create_room(preset="public_chat")
    await dana.create_room(preset="private_chat")

    assert _ids(await _found(alice, "")) == [alice.user_id, bob.user_id, carol.user_id]
    assert _ids(await _found(erin, "")) == [carol.user_id]
    assert _ids(await _found(erin, "bo")) == []
    assert _ids(await _found(bob, "ali")) == [alice.user_id]
    # Only a joined member counts: after bob leaves, he and alice no longer see each other.
    await bob.call("POST", f"/rooms/{shared}/leave")
    assert _ids(await _found(alice, "bo")) == []
    assert _ids(await _found(bob, "ali")) == []
    # A room that turns public exposes its members to everyone.
    await dana.call("PUT", f"/rooms/{(await dana.call('GET', '/joined_rooms'))['joined_rooms'][0]}"
                           "/state/m.room.join_rules", json={"join_rule": "public"})
    assert _ids(await _found(erin, "da")) == [dana.user_id]


async def test_search_all_users_switch_and_limit(serve: Any) -> None:
    client = await serve(user_directory={"search_all_users": True})
    alice = await User.new(client, "alice")
    others = [await User.new(client, f"bob{i}") for i in range(4)]
    # Nobody shares a room, yet every local user is found.
    found = await _found(alice, "bob", limit=3)
    assert _ids(found) == [u.user_id for u in others[:3]] and found["limited"] is True
    found = await _found(alice, "bob", limit=4)
    assert len(found["results"]) == 4 and found["limited"] is False
    found = await _found(alice, "bob", limit=0)
    assert found["results"] == [] and found["limited"] is True
    # LIKE wildcards in the term are plain characters.
    assert _ids(await _found(alice, "%")) == [] and _ids(await _found(alice, "b_b")) == []
    body = await alice.call("POST", "/user_directory/search", expect=400, json={"search_term": "b", "limit": -1})
    assert body["errcode"] == "M_BAD_JSON"
