"""m.ignored_user_list honoured: an ignored user's invites and messages are hidden from the
ignorer's /sync (incremental and initial), /messages and /context; their state events stay."""

from __future__ import annotations

from typing import Any

from tests.rooms_helpers import User


def bodies(events: list[dict[str, Any]]) -> list[str]:
    return [e["content"].get("body") for e in events if e["type"] == "m.room.message"]


async def ignore(user: User, *others: User) -> None:
    await user.call("PUT", f"/user/{user.user_id}/account_data/m.ignored_user_list",
                    json={"ignored_users": {o.user_id: {} for o in others}})


async def test_ignored_users_messages_and_invites_are_hidden(client: Any) -> None:
    alice, bob, mallory = (await User.new(client, "alice"), await User.new(client, "bob"),
                           await User.new(client, "mallory"))
    room = await alice.create_room(preset="public_chat")
    await bob.call("POST", f"/join/{room}")
    await mallory.call("POST", f"/join/{room}")
    since = (await bob.sync())["next_batch"]
    await ignore(bob, mallory)
    await mallory.send(room, "spam")
    hello = await alice.send(room, "hello")
    other = await mallory.create_room()
    await mallory.call("POST", f"/rooms/{other}/invite", json={"user_id": bob.user_id})

    body = await bob.sync(since)
    assert bodies(body["rooms"]["join"][room]["timeline"]["events"]) == ["hello"]
    assert body["rooms"]["invite"] == {}
    full = await bob.sync()
    timeline = full["rooms"]["join"][room]["timeline"]["events"]
    assert "spam" not in bodies(timeline) and "hello" in bodies(timeline)
    assert any(e["type"] == "m.room.member" and e["state_key"] == mallory.user_id for e in
               timeline + full["rooms"]["join"][room]["state"]["events"])  # state stays
    assert full["rooms"]["invite"] == {}
    chunk = (await bob.call("GET", f"/rooms/{room}/messages", params={"dir": "b"}))["chunk"]
    assert "spam" not in bodies(chunk) and "hello" in bodies(chunk)
    context = await bob.call("GET", f"/rooms/{room}/context/{hello}", params={"limit": "10"})
    assert "spam" not in bodies(context["events_before"] + context["events_after"])
    # others still see everything; and once no longer ignored, so does bob
    assert "spam" in bodies((await alice.call("GET", f"/rooms/{room}/messages", params={"dir": "b"}))["chunk"])
    await ignore(bob)
    chunk = (await bob.call("GET", f"/rooms/{room}/messages", params={"dir": "b"}))["chunk"]
    assert "spam" in bodies(chunk)
    assert other in (await bob.sync())["rooms"]["invite"]
