"""The room directory follows the room version's power rules: v12 creators outrank everyone."""

from __future__ import annotations

from typing import Any

from tests.rooms_helpers import User


async def test_v12_creators_manage_the_room_directory(client: Any) -> None:
    alice, bob, carol = [await User.new(client, n) for n in ("alice", "bob", "carol")]
    room = await alice.create_room(room_version="12", preset="public_chat",
                                   creation_content={"additional_creators": [bob.user_id]})
    levels = await alice.call("GET", f"/rooms/{room}/state/m.room.power_levels")
    assert alice.user_id not in levels.get("users", {}) and bob.user_id not in levels.get("users", {})
    for user in (bob, carol):
        await user.call("POST", f"/join/{room}")

    await alice.call("PUT", f"/directory/list/room/{room}", json={"visibility": "public"})
    assert [r["room_id"] for r in (await carol.call("GET", "/publicRooms"))["chunk"]] == [room]
    await bob.call("PUT", f"/directory/list/room/{room}", json={"visibility": "private"})
    # An ordinary member (level 0) may not.
    await carol.call("PUT", f"/directory/list/room/{room}", json={"visibility": "public"}, expect=403)
    assert (await carol.call("GET", "/publicRooms"))["chunk"] == []
    # A creator may remove an alias someone else made.
    alias = "%23v12:test.local"  # #v12:test.local, percent-encoded in the path
    await carol.call("PUT", f"/directory/room/{alias}", json={"room_id": room})
    await bob.call("DELETE", f"/directory/room/{alias}")


async def test_v10_levels_still_decide(client: Any) -> None:
    alice, bob = await User.new(client, "alice"), await User.new(client, "bob")
    room = await alice.create_room(room_version="10", preset="public_chat")
    await bob.call("POST", f"/join/{room}")
    await bob.call("PUT", f"/directory/list/room/{room}", json={"visibility": "public"}, expect=403)
    await alice.call("PUT", f"/directory/list/room/{room}", json={"visibility": "public"})
