"""History visibility (m.room.history_visibility) decides what a member reads of the room's past,
through /messages, /context, /event and the first /sync of a room, on both engines."""

from __future__ import annotations

from typing import Any

import pytest

from tests.rooms_helpers import User

BIG = '{"room": {"timeline": {"limit": 50}}}'


def bodies(events: list[dict[str, Any]]) -> list[str]:
    return [e["content"]["body"] for e in events if e["type"] == "m.room.message"]


async def story(client: Any, setting: str) -> tuple[User, User, str, dict[str, str]]:
    """alice's room under `setting`: a message before bob is invited, one while he is invited,
    one after he joins."""
    alice, bob = await User.new(client, "alice"), await User.new(client, "bob")
    room = await alice.create_room(preset="private_chat")
    await alice.call("PUT", f"/rooms/{room}/state/m.room.history_visibility", json={"history_visibility": setting})
    ids = {"before": await alice.send(room, "before")}
    await alice.call("POST", f"/rooms/{room}/invite", json={"user_id": bob.user_id})
    ids["invited"] = await alice.send(room, "invited")
    await bob.call("POST", f"/join/{room}")
    ids["joined"] = await alice.send(room, "joined")
    return alice, bob, room, ids


@pytest.mark.parametrize("setting, seen", [
    ("world_readable", ["before", "invited", "joined"]),
    ("shared", ["before", "invited", "joined"]),
    ("invited", ["invited", "joined"]),
    ("joined", ["joined"]),
])
async def test_what_a_new_member_reads(client: Any, setting: str, seen: list[str]) -> None:
    alice, bob, room, ids = await story(client, setting)
    chunk = (await bob.call("GET", f"/rooms/{room}/messages", params={"dir": "b", "limit": "50"}))["chunk"]
    assert bodies(chunk)[::-1] == seen
    assert bodies((await alice.call("GET", f"/rooms/{room}/messages", params={"dir": "b", "limit": "50"}))
                  ["chunk"])[::-1] == ["before", "invited", "joined"]  # alice was there all along
    timeline = (await bob.sync(filter=BIG))["rooms"]["join"][room]["timeline"]["events"]
    assert bodies(timeline) == seen
    for name, event_id in ids.items():
        await bob.call("GET", f"/rooms/{room}/event/{event_id}", expect=200 if name in seen else 404)
    context = await bob.call("GET", f"/rooms/{room}/context/{ids['joined']}", params={"limit": "20"})
    assert bodies(context["events_before"])[::-1] == seen[:-1]
    if "before" not in seen:
        await bob.call("GET", f"/rooms/{room}/context/{ids['before']}", expect=404)


async def test_a_visibility_change_applies_from_then_on(client: Any) -> None:
    """History written under `shared` stays readable after a switch to `joined`, later history not;
    the switch itself is visible to members who were there."""
    alice, bob = await User.new(client, "alice"), await User.new(client, "bob")
    carol = await User.new(client, "carol")
    room = await alice.create_room(preset="public_chat")
    await alice.send(room, "shared era")
    await bob.call("POST", f"/join/{room}")
    await alice.call("PUT", f"/rooms/{room}/state/m.room.history_visibility", json={"history_visibility": "joined"})
    await alice.send(room, "joined era")
    await carol.call("POST", f"/join/{room}")
    await alice.send(room, "carol is here")
    chunk = (await carol.call("GET", f"/rooms/{room}/messages", params={"dir": "b", "limit": "50"}))["chunk"]
    assert bodies(chunk)[::-1] == ["shared era", "carol is here"]
    chunk = (await bob.call("GET", f"/rooms/{room}/messages", params={"dir": "b", "limit": "50"}))["chunk"]
    assert bodies(chunk)[::-1] == ["shared era", "joined era", "carol is here"]
    assert any(e["type"] == "m.room.history_visibility" and e["content"]["history_visibility"] == "joined"
               for e in chunk)
