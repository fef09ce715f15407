"""What a user who left or was banned sees of a room: its members and state as of their leaving."""

from __future__ import annotations

from typing import Any

from tests.rooms_helpers import User


def _memberships(members: dict[str, Any]) -> dict[str, str]:
    return {e["state_key"]: e["content"]["membership"] for e in members["chunk"]}


async def test_members_and_state_after_leaving_are_as_of_the_leave(client: Any) -> None:
    alice, bob, carol = [await User.new(client, n) for n in ("alice", "bob", "carol")]
    room = await alice.create_room(preset="public_chat", name="Before")
    await bob.call("POST", f"/join/{room}")
    await bob.call("POST", f"/rooms/{room}/leave")
    # Everything from here on happened after bob left: he must see none of it.
    await carol.call("POST", f"/join/{room}")
    await alice.call("PUT", f"/rooms/{room}/state/m.room.name", json={"name": "After"})
    await alice.call("PUT", f"/rooms/{room}/state/m.room.topic", json={"topic": "secret plans"})

    assert _memberships(await bob.call("GET", f"/rooms/{room}/members")) == {
        alice.user_id: "join", bob.user_id: "leave"}
    joined = await bob.call("GET", f"/rooms/{room}/members", params={"membership": "join"})
    assert _memberships(joined) == {alice.user_id: "join"}
    not_left = await bob.call("GET", f"/rooms/{room}/members", params={"not_membership": "leave"})
    assert _memberships(not_left) == {alice.user_id: "join"}

    state = {(e["type"], e["state_key"]): e["content"] for e in await bob.call("GET", f"/rooms/{room}/state")}
    assert state[("m.room.name", "")] == {"name": "Before"}
    assert ("m.room.topic", "") not in state and ("m.room.member", carol.user_id) not in state
    assert state[("m.room.member", bob.user_id)]["membership"] == "leave"
    assert (await bob.call("GET", f"/rooms/{room}/state/m.room.name")) == {"name": "Before"}
    await bob.call("GET", f"/rooms/{room}/state/m.room.topic", expect=404)
    await bob.call("GET", f"/rooms/{room}/state/m.room.member/{carol.user_id}", expect=404)
    # joined_members is for members of the room only (the spec's 403).
    assert (await bob.call("GET", f"/rooms/{room}/joined_members", expect=403))["errcode"] == "M_FORBIDDEN"

    # Members still in the room see it as it is now.
    assert _memberships(await alice.call("GET", f"/rooms/{room}/members")) == {
        alice.user_id: "join", bob.user_id: "leave", carol.user_id: "join"}
    assert set((await carol.call("GET", f"/rooms/{room}/joined_members"))["joined"]) == {
        alice.user_id, carol.user_id}


async def test_members_after_a_ban_are_as_of_the_ban(client: Any) -> None:
    alice, dave, erin, stranger = [await User.new(client, n) for n in ("alice", "dave", "erin", "stranger")]
    room = await alice.create_room(preset="public_chat")
    await dave.call("POST", f"/join/{room}")
    await alice.call("POST", f"/rooms/{room}/ban", json={"user_id": dave.user_id})
    await erin.call("POST", f"/join/{room}")
    await alice.call("POST", f"/rooms/{room}/kick", json={"user_id": erin.user_id})

    assert _memberships(await dave.call("GET", f"/rooms/{room}/members")) == {
        alice.user_id: "join", dave.user_id: "ban"}
    await dave.call("GET", f"/rooms/{room}/joined_members", expect=403)
    # erin was kicked (a leave by someone else): as of her kick, dave's ban is there and she is gone.
    assert _memberships(await erin.call("GET", f"/rooms/{room}/members")) == {
        alice.user_id: "join", dave.user_id: "ban", erin.user_id: "leave"}
    # Never a member: 403, whatever the room.
    await stranger.call("GET", f"/rooms/{room}/members", expect=403)
    await stranger.call("GET", f"/rooms/{room}/state", expect=403)
