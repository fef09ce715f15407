"""Spaces over HTTP: /hierarchy (nesting, visibility, paging, depth, suggested rooms), /room_summary."""

from __future__ import annotations

from typing import Any

import aiohttp

from bench.servers import RunningServer
from federation.hierarchy import sanitised
from tests.conftest import auth
from tests.test_federation_older_endpoints import F1, refused
from tests.test_federation_receipt import ReceiptPeer, setup  # noqa: F401 (the fixture)
from tests.test_federation_whispr import Client
from tests.test_federation_whispr import pair, users_on_both  # noqa: F401 (fixture)
from tests.rooms_helpers import User

V1 = "/_matrix/client/v1"


async def v1(user: User, path: str, expect: int = 200, **params: Any) -> Any:
    resp = await user.client.get(V1 + path, headers=auth(user.token), params=params)
    body = await resp.json()
    assert resp.status == expect, (path, resp.status, body)
    return body


async def add_child(user: User, space: str, child: str, **content: Any) -> None:
    await user.call("PUT", f"/rooms/{space}/state/m.space.child/{child}", json={"via": ["test.local"], **content})


async def test_hierarchy_nesting_visibility_paging(client: Any) -> None:
    alice, bob = await User.new(client, "alice"), await User.new(client, "bob")
    space = await alice.create_room(name="Space", preset="public_chat", creation_content={"type": "m.space"},
                                    room_alias_name="space")
    sub = await alice.create_room(name="Sub", preset="public_chat", creation_content={"type": "m.space"})
    a = await alice.create_room(name="A", topic="first", preset="public_chat")
    secret = await alice.create_room(name="Secret", preset="private_chat")
    c = await alice.create_room(name="C", preset="public_chat")
    d = await alice.create_room(name="D", preset="private_chat")
    await alice.call("PUT", f"/rooms/{d}/state/m.room.history_visibility",
                     json={"history_visibility": "world_readable"})
    members_only = await alice.create_room(name="Members", preset="private_chat")
    await alice.call("PUT", f"/rooms/{members_only}/state/m.room.join_rules", json={
        "join_rule": "restricted", "allow": [{"type": "m.room_membership", "room_id": space}]})
    await add_child(alice, space, a, order="a", suggested=True)
    await add_child(alice, space, sub, order="b")
    await add_child(alice, space, secret)
    await add_child(alice, space, members_only)
    await alice.call("PUT", f"/rooms/{space}/state/m.space.child/!nowhere:test.local", json={})  # not a child
    await add_child(alice, sub, c)
    await add_child(alice, sub, d)

    create = await alice.call("GET", f"/rooms/{space}/state/m.room.create")
    assert create["type"] == "m.space"

    body = await v1(bob, f"/rooms/{space}/hierarchy")
    ids = [r["room_id"] for r in body["rooms"]]
    assert ids == [space, a, sub, c, d]  # depth first, in the children's order; secret and members-only hidden
    assert "next_batch" not in body
    top = body["rooms"][0]
    assert top["room_type"] == "m.space" and top["name"] == "Space" and top["join_rule"] == "public"
    assert top["canonical_alias"] == "#space:test.local" and top["num_joined_members"] == 1
    assert top["world_readable"] is False and top["guest_can_join"] is False and top["room_version"] == "10"
    assert [e["state_key"] for e in top["children_state"]] == [a, sub, secret, members_only]
    assert all(e["type"] == "m.space.child" and e["sender"] == alice.user_id and e["origin_server_ts"] > 0
               for e in top["children_state"])
    room_a = body["rooms"][1]
    assert room_a["topic"] == "first" and room_a["children_state"] == [] and "room_type" not in room_a
    assert body["rooms"][4]["world_readable"] is True and body["rooms"][4]["join_rule"] == "invite"

    # Members see their private rooms; members of the space see the room restricted to it.
    mine = await v1(alice, f"/rooms/{space}/hierarchy")
    assert [r["room_id"] for r in mine["rooms"]] == [space, a, sub, c, d, secret, members_only]
    await bob.call("POST", f"/join/{space}")
    body = await v1(bob, f"/rooms/{space}/hierarchy")
    assert [r["room_id"] for r in body["rooms"]] == [space, a, sub, c, d, members_only]
    assert body["rooms"][-1]["allowed_room_ids"] == [space] and body["rooms"][-1]["join_rule"] == "restricted"

    # Paging: the same walk, two rooms at a time.
    seen: list[str] = []
    page = await v1(bob, f"/rooms/{space}/hierarchy", limit="2")
    while True:
        assert len(page["rooms"]) <= 2
        seen += [r["room_id"] for r in page["rooms"]]
        if "next_batch" not in page:
            break
        token = page["next_batch"]
        page = await v1(bob, f"/rooms/{space}/hierarchy", limit="2", **{"from": token})
    assert seen == [space, a, sub, c, d, members_only]
    first = await v1(bob, f"/rooms/{space}/hierarchy", limit="1")
    bad = await v1(bob, f"/rooms/{space}/hierarchy", 400, suggested_only="true", **{"from": first["next_batch"]})
    assert bad["errcode"] == "M_INVALID_PARAM"
    await v1(bob, f"/rooms/{space}/hierarchy", 400, **{"from": "made-up"})
    await v1(alice, f"/rooms/{space}/hierarchy", 400, **{"from": first["next_batch"]})  # bob's token

    # Depth and suggested rooms.
    shallow = await v1(bob, f"/rooms/{space}/hierarchy", max_depth="1")
    assert [r["room_id"] for r in shallow["rooms"]] == [space, a, sub, members_only]
    assert [r["room_id"] for r in (await v1(bob, f"/rooms/{space}/hierarchy", max_depth="0"))["rooms"]] == [space]
    suggested = await v1(bob, f"/rooms/{space}/hierarchy", suggested_only="true")
    assert [r["room_id"] for r in suggested["rooms"]] == [space, a]

    # Bad parameters, and rooms one may not see.
    for params in ({"limit": "0"}, {"limit": "x"}, {"max_depth": "-1"}, {"suggested_only": "yes"}):
        assert (await v1(bob, f"/rooms/{space}/hierarchy", 400, **params))["errcode"] == "M_INVALID_PARAM"
    assert (await v1(bob, f"/rooms/{secret}/hierarchy", 403))["errcode"] == "M_FORBIDDEN"
    await v1(bob, "/rooms/!unknown:test.local/hierarchy", 403)


async def test_room_summary(client: Any) -> None:
    alice, bob = await User.new(client, "alice"), await User.new(client, "bob")
    room = await alice.create_room(name="Tea", topic="All about tea", preset="public_chat", room_alias_name="tea",
                                   creation_content={"type": "m.space"}, room_version="11")
    await alice.call("PUT", f"/rooms/{room}/state/m.room.encryption", json={"algorithm": "m.megolm.v1.aes-sha2"})
    secret = await alice.create_room(name="Secret", preset="private_chat")

    by_alias = await v1(bob, "/room_summary/%23tea:test.local")
    assert by_alias == {"room_id": room, "name": "Tea", "topic": "All about tea", "canonical_alias": "#tea:test.local",
                        "num_joined_members": 1, "world_readable": False, "guest_can_join": False,
                        "join_rule": "public", "room_type": "m.space", "encryption": "m.megolm.v1.aes-sha2",
                        "room_version": "11", "membership": "leave"}
    assert (await v1(alice, f"/room_summary/{room}"))["membership"] == "join"
    assert (await v1(bob, f"/room_summary/{secret}", 404))["errcode"] == "M_NOT_FOUND"
    await alice.call("POST", f"/rooms/{secret}/invite", json={"user_id": bob.user_id})
    invited = await v1(bob, f"/room_summary/{secret}")
    assert invited["membership"] == "invite" and invited["name"] == "Secret"
    await v1(bob, "/room_summary/%23nothing:test.local", 404)
    await v1(bob, "/room_summary/!nothing:test.local", 404)
    await v1(bob, "/room_summary/nonsense", 400)


async def test_hierarchy_across_servers(pair: tuple[RunningServer, RunningServer]) -> None:
    """A space on A with a subspace on B: each server walks into the other's rooms over federation's
    /hierarchy, and a room closed to the asking server stays hidden."""
    a, b = pair
    async with aiohttp.ClientSession() as session:
        alice, bob = await users_on_both(session, a, "alice", b, "bob")
        space_type = {"type": "m.space"}
        space = (await alice.call("POST", "/createRoom", json={"name": "Space", "preset": "public_chat",
                                                               "creation_content": space_type}))["room_id"]
        sub = (await bob.call("POST", "/createRoom", json={"name": "Sub", "preset": "public_chat",
                                                           "creation_content": space_type}))["room_id"]
        public = (await bob.call("POST", "/createRoom", json={"name": "Public", "preset": "public_chat"}))["room_id"]
        private = (await bob.call("POST", "/createRoom", json={"name": "Private"}))["room_id"]
        for child in (public, private):
            await bob.call("PUT", f"/rooms/{sub}/state/m.space.child/{child}", json={"via": [b.server_name]})
        await alice.call("PUT", f"/rooms/{space}/state/m.space.child/{sub}", json={"via": [b.server_name]})

        body = await alice.session.get(f"{a.base_url}{V1}/rooms/{space}/hierarchy", headers=alice.h)
        found = await body.json()
        assert body.status == 200, found
        assert [r["room_id"] for r in found["rooms"]] == [space, sub, public]
        remote_sub = found["rooms"][1]
        assert remote_sub["name"] == "Sub" and remote_sub["room_type"] == "m.space"
        assert {e["state_key"] for e in remote_sub["children_state"]} == {public, private}
        assert found["rooms"][2]["name"] == "Public" and found["rooms"][2]["num_joined_members"] == 1

        # B walks A's space (which it does not hold) into its own rooms, where bob sees his private one.
        resp = await bob.session.get(f"{b.base_url}{V1}/rooms/{space}/hierarchy", headers=bob.h)
        found = await resp.json()
        assert resp.status == 200, found
        assert [r["room_id"] for r in found["rooms"]] == [space, sub, public, private]
        assert found["rooms"][0]["name"] == "Space"

        # A remote room summary, through the federation hierarchy.
        resp = await alice.session.get(f"{a.base_url}{V1}/room_summary/{public}", headers=alice.h,
                                       params={"via": b.server_name})
        summary = await resp.json()
        assert resp.status == 200, summary
        assert summary["name"] == "Public" and summary["membership"] == "leave" and summary["join_rule"] == "public"
        resp = await alice.session.get(f"{a.base_url}{V1}/room_summary/{private}", headers=alice.h,
                                       params={"via": b.server_name})
        assert resp.status == 404


async def test_federation_hierarchy_endpoint(setup: tuple[RunningServer, ReceiptPeer]) -> None:  # noqa: F811
    """What another server (a hand-built, signing peer) gets from our /hierarchy: the space, the
    children it may see, the ones it may not as inaccessible, 404 for what it may see nothing of."""
    server, peer = setup
    async with aiohttp.ClientSession() as session:
        alice = await Client.register(session, server, "alice")
        space = (await alice.call("POST", "/createRoom", json={
            "name": "Space", "preset": "public_chat", "creation_content": {"type": "m.space"}}))["room_id"]
        public = (await alice.call("POST", "/createRoom", json={"name": "Public", "preset": "public_chat"}))["room_id"]
        private = (await alice.call("POST", "/createRoom", json={"name": "Private"}))["room_id"]
        closed_space = (await alice.call("POST", "/createRoom", json={"creation_content": {"type": "m.space"}}))[
            "room_id"]
        await alice.call("PUT", f"/rooms/{space}/state/m.space.child/{public}",
                         json={"via": [server.server_name], "suggested": True})
        await alice.call("PUT", f"/rooms/{space}/state/m.space.child/{private}", json={"via": [server.server_name]})
        await alice.call("PUT", f"/rooms/{space}/state/m.space.child/!elsewhere:other.example",
                         json={"via": ["other.example"]})

        answer = await peer.client.get_json(server.server_name, f"{F1}/hierarchy/{space}")
        assert answer["room"]["room_id"] == space and answer["room"]["room_type"] == "m.space"
        children = {e["state_key"] for e in answer["room"]["children_state"]}
        assert children == {public, private, "!elsewhere:other.example"}
        assert [c["room_id"] for c in answer["children"]] == [public]
        assert answer["children"][0]["name"] == "Public" and answer["children"][0]["children_state"] == []
        assert answer["inaccessible_children"] == [private]  # the room we do not hold is left out
        suggested = await peer.client.get_json(server.server_name, f"{F1}/hierarchy/{space}",
                                               {"suggested_only": "true"})
        assert [c["room_id"] for c in suggested["children"]] == [public] and suggested["inaccessible_children"] == []

        await refused(peer.client.get_json(server.server_name, f"{F1}/hierarchy/{closed_space}"), 404, "M_NOT_FOUND")
        await refused(peer.client.get_json(server.server_name, f"{F1}/hierarchy/!nothing:{server.server_name}"),
                      404, "M_NOT_FOUND")
        await refused(peer.client.get_json(server.server_name, f"{F1}/hierarchy/{space}", {"suggested_only": "1"}),
                      400, "M_INVALID_PARAM")
        # timestamp_to_event is for servers in the room.
        await refused(peer.client.get_json(server.server_name, f"{F1}/timestamp_to_event/{public}",
                                           {"ts": "0", "dir": "f"}), 403, "M_FORBIDDEN")


def test_remote_hierarchy_answers_are_sanitised() -> None:
    raw = {"room": {"room_id": "!s:x", "name": 5, "topic": "ok", "num_joined_members": -3, "world_readable": "yes",
                    "children_state": [{"type": "m.space.child", "state_key": "!c:x", "sender": "@a:x",
                                        "content": {"via": ["x"], "order": "a", "evil": True}, "origin_server_ts": 1},
                                       {"type": "m.room.name", "state_key": "", "sender": "@a:x", "content": {}},
                                       {"type": "m.space.child", "state_key": "!d:x", "sender": "@a:x",
                                        "content": {"via": []}}]},
           "children": [{"room_id": "not a room"}, {"room_id": "!c:x", "join_rule": "public"}, "junk"],
           "inaccessible_children": ["!p:x", 7]}
    clean = sanitised(raw)
    assert clean is not None
    assert clean["room"] == {"room_id": "!s:x", "topic": "ok", "num_joined_members": 0, "world_readable": False,
                             "guest_can_join": False, "join_rule": "invite", "children_state": [
                                 {"type": "m.space.child", "state_key": "!c:x", "sender": "@a:x",
                                  "content": {"via": ["x"], "order": "a"}, "origin_server_ts": 1}]}
    assert [c["room_id"] for c in clean["children"]] == ["!c:x"]
    assert clean["inaccessible_children"] == ["!p:x"]
    assert sanitised({"room": {"name": "no ID"}}) is None and sanitised([]) is None
