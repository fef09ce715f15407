"""Profiles: display name, avatar, Whispr bio, validation and permissions."""

from __future__ import annotations

from typing import Any

from tests.conftest import auth, register

V3 = "/_matrix/client/v3"


async def test_profile_round_trip_with_bio(client: Any) -> None:
    alice = await register(client, "alice")
    me = alice["user_id"]
    h = auth(alice["access_token"])
    assert (await client.put(f"{V3}/profile/{me}/displayname", headers=h, json={"displayname": "Alice"})).status == 200
    assert (await client.put(f"{V3}/profile/{me}/avatar_url", headers=h,
                             json={"avatar_url": "mxc://test.local/abc123"})).status == 200
    assert (await client.put(f"{V3}/profile/{me}/org.whispr.bio", headers=h,
                             json={"org.whispr.bio": "I like tea"})).status == 200
    profile = await (await client.get(f"{V3}/profile/{me}")).json()
    assert profile == {"displayname": "Alice", "avatar_url": "mxc://test.local/abc123", "org.whispr.bio": "I like tea"}
    assert await (await client.get(f"{V3}/profile/{me}/displayname")).json() == {"displayname": "Alice"}
    assert (await client.delete(f"{V3}/profile/{me}/org.whispr.bio", headers=h)).status == 200
    resp = await client.get(f"{V3}/profile/{me}/org.whispr.bio")
    assert resp.status == 404 and (await resp.json())["errcode"] == "M_NOT_FOUND"


async def test_profile_validation(client: Any) -> None:
    alice = await register(client, "alice")
    me, h = alice["user_id"], auth(alice["access_token"])
    cases = [
        ("displayname", {"displayname": "x" * 257}),
        ("displayname", {"displayname": 42}),
        ("avatar_url", {"avatar_url": "https://example.org/a.png"}),
        ("org.whispr.bio", {"org.whispr.bio": "b" * 1025}),
        ("displayname", {}),
    ]
    for key, body in cases:
        resp = await client.put(f"{V3}/profile/{me}/{key}", headers=h, json=body)
        assert resp.status == 400, (key, body)
        assert (await resp.json())["errcode"] == "M_BAD_JSON"
    resp = await client.put(f"{V3}/profile/{me}/notnamespaced", headers=h, json={"notnamespaced": 1})
    assert resp.status == 400
    # Nothing was stored by the refused requests.
    assert await (await client.get(f"{V3}/profile/{me}")).json() == {"displayname": "alice"}


async def test_cannot_edit_someone_else_and_unknown_user(client: Any) -> None:
    alice = await register(client, "alice")
    bob = await register(client, "bob")
    resp = await client.put(f"{V3}/profile/{bob['user_id']}/displayname", headers=auth(alice["access_token"]),
                            json={"displayname": "hacked"})
    assert resp.status == 403 and (await resp.json())["errcode"] == "M_FORBIDDEN"
    resp = await client.put(f"{V3}/profile/{bob['user_id']}/displayname", json={"displayname": "anon"})
    assert resp.status == 401
    resp = await client.get(f"{V3}/profile/@ghost:test.local")
    assert resp.status == 404 and (await resp.json())["errcode"] == "M_NOT_FOUND"
    resp = await client.get(f"{V3}/profile/not-a-user-id")
    assert resp.status == 400


async def _member_events(user: Any, since: str | None, room: str, who: str) -> tuple[list[dict[str, Any]], str]:
    body = await user.sync(since, timeout=2000)
    section = body["rooms"]["join"].get(room, {})
    events = [e for e in section.get("timeline", {}).get("events", [])
              if e["type"] == "m.room.member" and e["state_key"] == who]
    return events, body["next_batch"]


async def test_profile_changes_reach_every_joined_room(client: Any) -> None:
    from tests.rooms_helpers import User
    alice, bob = await User.new(client, "alice"), await User.new(client, "bob")
    rooms = [await alice.create_room(preset="public_chat") for _ in range(2)]
    for room in rooms:
        await bob.call("POST", f"/join/{room}")
    left = await alice.create_room(preset="public_chat")
    await alice.call("POST", f"/rooms/{left}/leave")
    since = (await bob.sync())["next_batch"]
    await alice.call("PUT", f"/profile/{alice.user_id}/displayname", json={"displayname": "Alice A."})
    await alice.call("PUT", f"/profile/{alice.user_id}/avatar_url", json={"avatar_url": "mxc://test.local/av1"})
    for room in rooms:
        state = {}
        for _ in range(20):  # the updates go out in the background
            state = await alice.call("GET", f"/rooms/{room}/state/m.room.member/{alice.user_id}")
            if state.get("avatar_url") == "mxc://test.local/av1":
                break
            import asyncio
            await asyncio.sleep(0.05)
        assert state == {"membership": "join", "displayname": "Alice A.", "avatar_url": "mxc://test.local/av1"}
    seen, _ = await _member_events(bob, since, rooms[0], alice.user_id)
    assert seen and seen[-1]["content"]["displayname"] == "Alice A."
    assert seen[-1]["unsigned"]["prev_content"]["membership"] == "join"
    # Not in a room she left.
    left_state = await alice.call("GET", f"/rooms/{left}/state/m.room.member/{alice.user_id}")
    assert left_state["membership"] == "leave" and "avatar_url" not in left_state


async def test_per_room_display_name(client: Any) -> None:
    from tests.rooms_helpers import User
    alice, bob = await User.new(client, "alice"), await User.new(client, "bob")
    room = await alice.create_room(preset="public_chat")
    await bob.call("POST", f"/join/{room}")
    member = f"/rooms/{room}/state/m.room.member/{alice.user_id}"
    await alice.call("PUT", member, json={"membership": "join", "displayname": "Alice here"})
    assert (await bob.call("GET", member))["displayname"] == "Alice here"
    # Membership itself is not changed this way, nor another user's member event.
    body = await alice.call("PUT", member, expect=403, json={"membership": "leave"})
    assert body["errcode"] == "M_FORBIDDEN"
    await alice.call("PUT", f"/rooms/{room}/state/m.room.member/{bob.user_id}", expect=403,
                     json={"membership": "join", "displayname": "Not Bob"})
    await alice.call("PUT", member, expect=400, json={"membership": "join", "displayname": 5})
    assert (await bob.call("GET", member))["displayname"] == "Alice here"
