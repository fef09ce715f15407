"""Room upgrades over HTTP: the replacement room, its copied state, aliases, the tombstone."""

from __future__ import annotations

from typing import Any

import aiohttp

from bench.servers import RunningServer
from tests.rooms_helpers import User
from tests.test_federation_whispr import membership_in_timeline, pair, users_on_both  # noqa: F401 (fixture)


def _by_key(state: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(e["type"], e["state_key"]): e for e in state}


async def test_upgrade_copies_state_moves_aliases_and_tombstones(client: Any) -> None:
    alice, bob, mallory = [await User.new(client, n) for n in ("alice", "bob", "mallory")]
    room = await alice.create_room(name="Tea", topic="All about tea", room_alias_name="tea", preset="public_chat",
                                   visibility="public", room_version="10")
    await alice.call("PUT", f"/rooms/{room}/state/m.room.avatar", json={"url": "mxc://test.local/tea"})
    await alice.call("PUT", f"/rooms/{room}/state/m.room.history_visibility",
                     json={"history_visibility": "world_readable"})
    await alice.call("PUT", f"/rooms/{room}/state/m.room.encryption", json={"algorithm": "m.megolm.v1.aes-sha2"})
    await alice.call("PUT", f"/rooms/{room}/state/m.room.server_acl", json={"allow": ["*"], "deny": ["evil.org"]})
    await bob.call("POST", f"/join/{room}")
    await mallory.call("POST", f"/join/{room}")
    await alice.call("POST", f"/rooms/{room}/ban", json={"user_id": mallory.user_id, "reason": "spam"})
    levels = await alice.call("GET", f"/rooms/{room}/state/m.room.power_levels")
    await alice.call("PUT", f"/rooms/{room}/state/m.room.power_levels",
                     json={**levels, "users": {**levels["users"], bob.user_id: 42}})
    await bob.call("PUT", f"/user/{bob.user_id}/rooms/{room}/tags/m.favourite", json={"order": 0.5})
    await bob.call("PUT", f"/user/{bob.user_id}/account_data/m.direct", json={alice.user_id: [room]})
    last = await bob.send(room, "last words")
    since = (await bob.sync())["next_batch"]

    new = (await alice.call("POST", f"/rooms/{room}/upgrade", json={"new_version": "11"}))["replacement_room"]
    assert new != room

    state = _by_key(await alice.call("GET", f"/rooms/{new}/state"))
    create = state[("m.room.create", "")]["content"]
    assert create["room_version"] == "11" and create["predecessor"] == {"room_id": room, "event_id": last}
    assert state[("m.room.name", "")]["content"] == {"name": "Tea"}
    assert state[("m.room.topic", "")]["content"] == {"topic": "All about tea"}
    assert state[("m.room.avatar", "")]["content"] == {"url": "mxc://test.local/tea"}
    assert state[("m.room.join_rules", "")]["content"] == {"join_rule": "public"}
    assert state[("m.room.history_visibility", "")]["content"] == {"history_visibility": "world_readable"}
    assert state[("m.room.encryption", "")]["content"] == {"algorithm": "m.megolm.v1.aes-sha2"}
    assert state[("m.room.server_acl", "")]["content"] == {"allow": ["*"], "deny": ["evil.org"]}
    assert state[("m.room.canonical_alias", "")]["content"] == {"alias": "#tea:test.local"}
    assert state[("m.room.power_levels", "")]["content"]["users"] == {alice.user_id: 100, bob.user_id: 42}
    assert state[("m.room.member", mallory.user_id)]["content"]["membership"] == "ban"
    assert ("m.room.member", bob.user_id) not in state  # members join themselves

    # The alias and the directory entry follow the room.
    assert (await alice.call("GET", "/directory/room/%23tea:test.local"))["room_id"] == new
    public = [r["room_id"] for r in (await alice.call("GET", "/publicRooms"))["chunk"]]
    assert public == [new]
    old_state = _by_key(await alice.call("GET", f"/rooms/{room}/state"))
    assert old_state[("m.room.canonical_alias", "")]["content"] == {}

    # The old room: a tombstone, and ordinary members silenced.
    assert old_state[("m.room.tombstone", "")]["content"]["replacement_room"] == new
    old_levels = old_state[("m.room.power_levels", "")]["content"]
    assert old_levels["events_default"] == 50 and old_levels["invite"] == 50
    await bob.send(room, "still here?", expect=403)
    body = await bob.sync(since)
    timeline = body["rooms"]["join"][room]["timeline"]["events"]
    tombstones = [e for e in timeline if e["type"] == "m.room.tombstone"]
    assert tombstones and tombstones[0]["content"]["replacement_room"] == new

    await bob.call("POST", f"/join/{new}")
    await bob.send(new, "moved")
    # Bob's tags and direct-chat entry follow him.
    assert (await bob.call("GET", f"/user/{bob.user_id}/rooms/{new}/tags"))["tags"] == {"m.favourite": {"order": 0.5}}
    direct = await bob.call("GET", f"/user/{bob.user_id}/account_data/m.direct")
    assert direct == {alice.user_id: [room, new]}


async def test_upgrade_v10_to_v12_and_v12_to_v12(client: Any) -> None:
    alice, bob, carol = [await User.new(client, n) for n in ("alice", "bob", "carol")]
    room = await alice.create_room(preset="public_chat", room_version="10", name="Old")
    await bob.call("POST", f"/join/{room}")
    levels = await alice.call("GET", f"/rooms/{room}/state/m.room.power_levels")
    await alice.call("PUT", f"/rooms/{room}/state/m.room.power_levels",
                     json={**levels, "users": {**levels["users"], bob.user_id: 100}})

    v12 = (await alice.call("POST", f"/rooms/{room}/upgrade",
                            json={"new_version": "12", "additional_creators": [carol.user_id]}))["replacement_room"]
    state = _by_key(await alice.call("GET", f"/rooms/{v12}/state"))
    create = state[("m.room.create", "")]
    assert create["content"]["room_version"] == "12" and create["sender"] == alice.user_id
    assert create["content"]["predecessor"] == {"room_id": room}  # v12 may leave the event out
    assert create["content"]["additional_creators"] == [carol.user_id]
    assert "creator" not in create["content"]
    # Creators are never listed in v12 power levels; bob keeps his level.
    assert state[("m.room.power_levels", "")]["content"]["users"] == {bob.user_id: 100}
    assert state[("m.room.name", "")]["content"] == {"name": "Old"}

    # Bob (a 100, not a creator) upgrades it again; additional creators are not carried over
    # unless asked for (the spec), but alice and carol, who were creators, keep the top level.
    await bob.call("POST", f"/join/{v12}")
    again = (await bob.call("POST", f"/rooms/{v12}/upgrade", json={"new_version": "12"}))["replacement_room"]
    state = _by_key(await bob.call("GET", f"/rooms/{again}/state"))
    create = state[("m.room.create", "")]
    assert create["sender"] == bob.user_id and "additional_creators" not in create["content"]
    assert create["content"]["predecessor"] == {"room_id": v12}
    assert state[("m.room.power_levels", "")]["content"]["users"] == {alice.user_id: 100, carol.user_id: 100}
    await alice.call("POST", f"/join/{again}")
    await alice.call("PUT", f"/rooms/{again}/state/m.room.topic", json={"topic": "alice still rules"})

    # Down to v11: the creator of the new room is listed again.
    down = (await bob.call("POST", f"/rooms/{again}/upgrade", json={"new_version": "11"}))["replacement_room"]
    state = _by_key(await bob.call("GET", f"/rooms/{down}/state"))
    assert state[("m.room.power_levels", "")]["content"]["users"][bob.user_id] == 100


async def test_upgrade_of_a_space_keeps_its_type_and_children(client: Any) -> None:
    alice = await User.new(client, "alice")
    space = await alice.create_room(preset="public_chat", creation_content={"type": "m.space", "m.federate": False})
    child = await alice.create_room(preset="public_chat")
    await alice.call("PUT", f"/rooms/{space}/state/m.space.child/{child}", json={"via": ["test.local"]})
    await alice.call("PUT", f"/rooms/{space}/state/m.room.join_rules", json={"join_rule": "knock"})
    new = (await alice.call("POST", f"/rooms/{space}/upgrade", json={"new_version": "6"}))["replacement_room"]
    state = _by_key(await alice.call("GET", f"/rooms/{new}/state"))
    create = state[("m.room.create", "")]["content"]
    assert create["type"] == "m.space" and create["m.federate"] is False and create["room_version"] == "6"
    assert state[("m.space.child", child)]["content"] == {"via": ["test.local"]}
    assert state[("m.room.join_rules", "")]["content"] == {"join_rule": "invite"}  # v6 cannot knock


async def test_upgrade_refused(client: Any) -> None:
    alice, bob, eve = [await User.new(client, n) for n in ("alice", "bob", "eve")]
    room = await alice.create_room(preset="public_chat")
    await bob.call("POST", f"/join/{room}")
    body = await bob.call("POST", f"/rooms/{room}/upgrade", expect=403, json={"new_version": "11"})
    assert body["errcode"] == "M_FORBIDDEN"
    await eve.call("POST", f"/rooms/{room}/upgrade", expect=403, json={"new_version": "11"})
    body = await alice.call("POST", f"/rooms/{room}/upgrade", expect=400, json={"new_version": "999"})
    assert body["errcode"] == "M_UNSUPPORTED_ROOM_VERSION"
    body = await alice.call("POST", f"/rooms/{room}/upgrade", expect=400, json={})
    assert body["errcode"] == "M_UNSUPPORTED_ROOM_VERSION"
    body = await alice.call("POST", f"/rooms/{room}/upgrade", expect=400,
                            json={"new_version": "12", "additional_creators": "carol"})
    assert body["errcode"] == "M_BAD_JSON"
    # Nothing changed.
    state = _by_key(await alice.call("GET", f"/rooms/{room}/state"))
    assert ("m.room.tombstone", "") not in state


async def test_federated_upgrade(pair: tuple[RunningServer, RunningServer]) -> None:
    """A member on another server sees the tombstone and joins the replacement room through it."""
    a, b = pair
    async with aiohttp.ClientSession() as session:
        alice, bob = await users_on_both(session, a, "alice", b, "bob")
        room = (await alice.call("POST", "/createRoom", json={"preset": "public_chat", "name": "Across",
                                                              "room_version": "10"}))["room_id"]
        await bob.call("POST", f"/join/{room}")
        await alice.sync_until(membership_in_timeline(room, bob.user_id, "join"))

        new = (await alice.call("POST", f"/rooms/{room}/upgrade", json={"new_version": "12"}))["replacement_room"]

        def tombstoned(body: dict[str, Any]) -> bool:
            events = body["rooms"]["join"].get(room, {}).get("timeline", {}).get("events", [])
            return any(e["type"] == "m.room.tombstone" and e["content"].get("replacement_room") == new
                       for e in events)

        await bob.sync_until(tombstoned)
        tombstone = await bob.call("GET", f"/rooms/{room}/state/m.room.tombstone", params={"format": "event"})
        via = tombstone["sender"].split(":", 1)[1]  # the spec: join through the sender's server
        await bob.call("POST", f"/join/{new}", params={"via": via})
        await alice.sync_until(membership_in_timeline(new, bob.user_id, "join"))
        create = await bob.call("GET", f"/rooms/{new}/state/m.room.create")
        assert create["predecessor"] == {"room_id": room} and create["room_version"] == "12"
        assert (await bob.call("GET", f"/rooms/{new}/state/m.room.name"))["name"] == "Across"
        await bob.send(new, "hello again")
        assert await alice.collect_messages(new, 1) == ["hello again"]
        # Old room: bob may no longer speak there.
        levels = await bob.call("GET", f"/rooms/{room}/state/m.room.power_levels")
        assert levels["events_default"] == 50
