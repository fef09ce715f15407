"""Older federation endpoints that peers still call, in the shapes of the spec's OpenAPI: v1
send_join and send_leave (`[200, {...}]`), v1 invite (`[200, {"event": ...}]`), the published room
directory (GET/POST /publicRooms, and our clients reading other servers' through it), /event_auth,
and /state (full PDUs, not only IDs).

Driven by a hand-built peer's signed requests, on SQLite and PostgreSQL; /publicRooms also by a
real Synapse, whose users browse our directory through it.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any, AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from bench.servers import RunningServer, free_port, start_synapse, start_whispr, synapse_python
from federation.client import FederationError
from homeserver.events.crypto import compute_event_id, sign_event
from homeserver.events.room_versions import ROOM_V10, get_room_version
from tests.synapse_peer import federation_listener, synapse_federation_config
from tests.test_federation_receipt import ReceiptPeer, room_state, setup  # noqa: F401 (the fixture)
from tests.test_federation_whispr import Client, federation_config

F1 = "/_matrix/federation/v1"
Setup = tuple[RunningServer, ReceiptPeer]


async def refused(call: Any, status: int, errcode: str) -> None:
    with pytest.raises(FederationError) as err:
        await call
    assert (err.value.status, err.value.errcode) == (status, errcode), err.value


async def membership(peer: ReceiptPeer, server: RunningServer, kind: str, room: str,
                     user: str) -> tuple[dict[str, Any], str]:
    """The peer's user's join or leave, from the make_join / make_leave template, signed by the peer."""
    template = await peer.client.get_json(server.server_name, f"{F1}/make_{kind}/{room}/{user}",
                                          {"ver": ["10"]} if kind == "join" else None)
    pdu = {k: v for k, v in template["event"].items() if k != "origin"}
    pdu["origin_server_ts"] = int(time.time() * 1000)
    pdu = sign_event(pdu, peer.name, peer.key, ROOM_V10)
    return pdu, compute_event_id(pdu, ROOM_V10)


async def test_v1_send_join_and_send_leave(setup: Setup) -> None:  # noqa: F811
    """v1 send_join answers `[200, {state, auth_chain, event}]` with the room's state before the
    join; v1 send_leave answers `[200, {}]`; both change the room as their v2 forms do."""
    server, peer = setup
    async with aiohttp.ClientSession() as session:
        alice = await Client.register(session, server, "alice")
        room = (await alice.call("POST", "/createRoom", json={"preset": "public_chat", "room_version": "10"}))[
            "room_id"]
        before = await room_state(alice, room)
        mallory = f"@mallory:{peer.name}"
        join, join_id = await membership(peer, server, "join", room, mallory)
        answer = await peer.client.put_json(server.server_name, f"{F1}/send_join/{room}/{join_id}", join)
        assert isinstance(answer, list) and len(answer) == 2 and answer[0] == 200
        body = answer[1]
        assert {(e["type"], e["state_key"]): compute_event_id(e, ROOM_V10) for e in body["state"]} == before
        chain = {compute_event_id(e, ROOM_V10) for e in body["auth_chain"]}
        assert {before[("m.room.create", "")], before[("m.room.power_levels", "")]} <= chain
        assert all({"hashes", "signatures", "auth_events"} <= set(e) for e in body["state"] + body["auth_chain"])
        assert compute_event_id(body["event"], ROOM_V10) == join_id
        assert (await room_state(alice, room))[("m.room.member", mallory)] == join_id

        leave, leave_id = await membership(peer, server, "leave", room, mallory)
        assert await peer.client.put_json(server.server_name, f"{F1}/send_leave/{room}/{leave_id}", leave) == [200, {}]
        assert (await room_state(alice, room))[("m.room.member", mallory)] == leave_id

        # The same refusals as v2: a join for another event ID, a leave of a user not of the origin.
        again, again_id = await membership(peer, server, "join", room, mallory)
        await refused(peer.client.put_json(server.server_name, f"{F1}/send_join/{room}/{leave_id}", again),
                      400, "M_INVALID_PARAM")
        forged = sign_event({**leave, "sender": alice.user_id, "state_key": alice.user_id}, peer.name, peer.key,
                            ROOM_V10)
        await refused(peer.client.put_json(server.server_name,
                                           f"{F1}/send_leave/{room}/{compute_event_id(forged, ROOM_V10)}", forged),
                      400, "M_INVALID_PARAM")
        assert (await room_state(alice, room))[("m.room.member", alice.user_id)] == before[
            ("m.room.member", alice.user_id)]
        assert again_id not in (await room_state(alice, room)).values()
        for junk in ([again], 7, {"type": "m.room.member"}):
            await refused(peer.client.put_json(server.server_name, f"{F1}/send_join/{room}/{again_id}", junk),
                          400, "M_INVALID_PARAM")


async def test_v1_invite(setup: Setup) -> None:  # noqa: F811
    """v1 invite: the body is the event (its room state under `unsigned`), the answer `[200, {event}]`
    with our signature added. Into a room we hold, it is an event of the room; into one we do not,
    its room version is taken to be 1, as the spec says."""
    server, peer = setup
    async with aiohttp.ClientSession() as session:
        alice, carol = await Client.register(session, server, "alice"), await Client.register(session, server, "carol")
        room = (await alice.call("POST", "/createRoom", json={"preset": "public_chat", "room_version": "10"}))[
            "room_id"]
        mallory = f"@mallory:{peer.name}"
        join, join_id = await membership(peer, server, "join", room, mallory)
        await peer.client.put_json(server.server_name, f"/_matrix/federation/v2/send_join/{room}/{join_id}", join)
        state = await room_state(alice, room)
        auth = [state[("m.room.create", "")], state[("m.room.power_levels", "")], state[("m.room.join_rules", "")],
                join_id]
        invite = peer.event(room, mallory, "m.room.member", {"membership": "invite"}, [join_id], auth,
                            join["depth"] + 1, state_key=carol.user_id)
        invite_id = compute_event_id(invite, ROOM_V10)
        sent = {**invite, "unsigned": {"invite_room_state": [
            {"type": "m.room.join_rules", "state_key": "", "sender": alice.user_id,
             "content": {"join_rule": "public"}}]}}
        answer = await peer.client.put_json(server.server_name, f"{F1}/invite/{room}/{invite_id}", sent)
        assert isinstance(answer, list) and answer[0] == 200 and set(answer[1]) == {"event"}
        signed = answer[1]["event"]
        assert compute_event_id(signed, ROOM_V10) == invite_id
        assert {server.server_name, peer.name} <= set(signed["signatures"])
        assert (await room_state(alice, room))[("m.room.member", carol.user_id)] == invite_id
        assert room in (await carol.call("GET", "/sync"))["rooms"]["invite"]

        # Not an invite: refused as in v2, and nothing recorded.
        message = peer.event(room, mallory, "m.room.message", {"msgtype": "m.text", "body": "x"}, [invite_id],
                             auth, join["depth"] + 2)
        await refused(peer.client.put_json(server.server_name,
                                           f"{F1}/invite/{room}/{compute_event_id(message, ROOM_V10)}", message),
                      400, "M_INVALID_PARAM")

        for junk in ([invite], "invite", {"content": {"membership": "invite"}}):
            await refused(peer.client.put_json(server.server_name, f"{F1}/invite/{room}/{invite_id}", junk),
                          400, "M_BAD_JSON" if not isinstance(junk, dict) else "M_INVALID_PARAM")

        # A room we do not hold: version 1.
        elsewhere = f"!elsewhere:{peer.name}"
        dave = await Client.register(session, server, "dave")
        v1 = get_room_version("1")
        pdu: dict[str, Any] = {"room_id": elsewhere, "sender": mallory, "type": "m.room.member",
                               "state_key": dave.user_id, "content": {"membership": "invite"},
                               "prev_events": [], "auth_events": [], "depth": 5,
                               "origin_server_ts": int(time.time() * 1000)}
        if v1 is None:  # room versions before 10 are not supported (yet): a clear refusal
            pdu = sign_event(pdu, peer.name, peer.key, ROOM_V10)
            event_id = compute_event_id(pdu, ROOM_V10)
            with pytest.raises(FederationError) as err:
                await peer.client.put_json(server.server_name, f"{F1}/invite/{elsewhere}/{event_id}", pdu)
            assert (err.value.status, err.value.errcode) == (400, "M_INCOMPATIBLE_ROOM_VERSION")
            assert err.value.body.get("room_version") == "1"
            assert elsewhere not in (await dave.call("GET", "/sync"))["rooms"]["invite"]
        else:
            pdu["event_id"] = f"$v1invite:{peer.name}"  # v1 and v2 events carry their ID
            pdu = sign_event(pdu, peer.name, peer.key, v1)
            answer = await peer.client.put_json(server.server_name, f"{F1}/invite/{elsewhere}/{pdu['event_id']}",
                                                pdu)
            assert answer[0] == 200 and server.server_name in answer[1]["event"]["signatures"]
            assert elsewhere in (await dave.call("GET", "/sync"))["rooms"]["invite"]


async def published(alice: Client, name: str, topic: str | None = None, publish: bool = True,
                    **extra: Any) -> str:
    body: dict[str, Any] = {"preset": "public_chat", "name": name, **extra}
    if topic:
        body["topic"] = topic
    room = (await alice.call("POST", "/createRoom", json=body))["room_id"]
    if publish:
        await alice.call("PUT", f"/directory/list/room/{room}", json={"visibility": "public"})
    return room


async def test_public_rooms_over_federation(setup: Setup) -> None:  # noqa: F811
    """GET and POST /publicRooms: only the rooms published in our directory, most members first,
    paginated by limit/since, filtered by search term and room type; bad parameters are 400s."""
    server, peer = setup
    name = server.server_name
    async with aiohttp.ClientSession() as session:
        alice, bob = await Client.register(session, server, "alice"), await Client.register(session, server, "bob")
        cheese = await published(alice, "Cheese", "Tasty tasty cheese")
        await bob.call("POST", f"/join/{cheese}", json={})
        wine = await published(alice, "Wine")
        space = await published(alice, "Places", creation_content={"type": "m.space"})
        await published(alice, "Unlisted", publish=False)
        local = await published(alice, "Only here", creation_content={"m.federate": False})
        assert local in {r["room_id"] for r in (await alice.call("GET", "/publicRooms"))["chunk"]}

        everything = await peer.client.get_json(name, f"{F1}/publicRooms")
        assert [r["room_id"] for r in everything["chunk"]][:1] == [cheese]
        assert {r["room_id"] for r in everything["chunk"]} == {cheese, wine, space}
        assert everything["total_room_count_estimate"] == 3 and "next_batch" not in everything
        first = next(r for r in everything["chunk"] if r["room_id"] == cheese)
        assert first == {"room_id": cheese, "name": "Cheese", "topic": "Tasty tasty cheese", "num_joined_members": 2,
                         "world_readable": False, "guest_can_join": False, "join_rule": "public"}
        assert next(r for r in everything["chunk"] if r["room_id"] == space)["room_type"] == "m.space"

        page = await peer.client.get_json(name, f"{F1}/publicRooms", {"limit": "2", "include_all_networks": "true"})
        assert [r["room_id"] for r in page["chunk"]] == [r["room_id"] for r in everything["chunk"][:2]]
        rest = await peer.client.get_json(name, f"{F1}/publicRooms", {"limit": "2", "since": page["next_batch"]})
        assert [r["room_id"] for r in rest["chunk"]] == [everything["chunk"][2]["room_id"]]
        assert "next_batch" not in rest and "prev_batch" in rest

        async def search(body: dict[str, Any]) -> list[str]:
            return [r["room_id"] for r in (await peer.client.post_json(name, f"{F1}/publicRooms", body))["chunk"]]

        assert await search({"filter": {"generic_search_term": "tasty"}}) == [cheese]
        assert set(await search({})) == {cheese, wine, space}
        assert await search({"filter": {"room_types": ["m.space"]}}) == [space]
        assert set(await search({"filter": {"room_types": [None]}, "include_all_networks": True})) == {cheese, wine}
        assert len(await search({"limit": 1})) == 1
        assert await search({"third_party_instance_id": "irc-libera"}) == []  # no bridged networks here

        for query in ({"limit": "-1"}, {"limit": "many"}, {"include_all_networks": "yes"},
                      {"include_all_networks": "true", "third_party_instance_id": "irc"}):
            await refused(peer.client.get_json(name, f"{F1}/publicRooms", query), 400, "M_INVALID_PARAM")
        for body in ({"limit": "3"}, {"limit": -1}, {"since": 5}, {"include_all_networks": "true"}):
            await refused(peer.client.post_json(name, f"{F1}/publicRooms", body), 400, "M_INVALID_PARAM")
        for body in ([], {"filter": "cheese"}, {"filter": {"room_types": "m.space"}}):
            await refused(peer.client.post_json(name, f"{F1}/publicRooms", body), 400, "M_BAD_JSON")
        async with session.get(f"https://{name}{F1}/publicRooms", ssl=False) as resp:  # unsigned
            assert resp.status == 401 and (await resp.json())["errcode"] == "M_UNAUTHORIZED"


async def test_event_auth_and_state(setup: Setup) -> None:  # noqa: F811
    """/event_auth gives an event's whole auth chain as PDUs (not the event); /state the state before
    an event and its auth chain as full PDUs, the same events /state_ids names. Both only for a
    server in the room, about an event of that room."""
    server, peer = setup
    name = server.server_name
    async with aiohttp.ClientSession() as session:
        alice = await Client.register(session, server, "alice")
        room = (await alice.call("POST", "/createRoom", json={"preset": "public_chat", "room_version": "10"}))[
            "room_id"]
        await alice.call("PUT", f"/rooms/{room}/state/m.room.topic", json={"topic": "the topic"})
        join, join_id = await membership(peer, server, "join", room, f"@mallory:{peer.name}")
        await peer.client.put_json(name, f"/_matrix/federation/v2/send_join/{room}/{join_id}", join)
        message = await alice.send(room, "hello")
        state = await room_state(alice, room)

        chain = (await peer.client.get_json(name, f"{F1}/event_auth/{room}/{join_id}"))["auth_chain"]
        chain_ids = {compute_event_id(e, ROOM_V10) for e in chain}
        create, levels, rules = (state[("m.room.create", "")], state[("m.room.power_levels", "")],
                                 state[("m.room.join_rules", "")])
        alice_join = state[("m.room.member", alice.user_id)]
        assert chain_ids == {create, levels, rules, alice_join}  # the join rules' and levels' auth: create, alice
        assert join_id not in chain_ids and state[("m.room.topic", "")] not in chain_ids
        assert all({"hashes", "signatures"} <= set(e) for e in chain)

        answer = await peer.client.get_json(name, f"{F1}/state/{room}", {"event_id": message})
        ids = await peer.client.get_json(name, f"{F1}/state_ids/{room}", {"event_id": message})
        pdus = {compute_event_id(e, ROOM_V10): e for e in answer["pdus"]}
        assert set(pdus) == set(ids["pdu_ids"]) == set(state.values())
        assert {(e["type"], e["state_key"]) for e in pdus.values()} == set(state)
        assert {compute_event_id(e, ROOM_V10) for e in answer["auth_chain"]} == set(ids["auth_chain_ids"])
        assert {create, levels, alice_join} <= set(ids["auth_chain_ids"])
        # The state before the topic: without it.
        before_topic = await peer.client.get_json(name, f"{F1}/state/{room}",
                                                  {"event_id": state[("m.room.topic", "")]})
        assert ("m.room.topic", "") not in {(e["type"], e["state_key"]) for e in before_topic["pdus"]}

        await refused(peer.client.get_json(name, f"{F1}/state/{room}"), 400, "M_MISSING_PARAM")
        await refused(peer.client.get_json(name, f"{F1}/state/{room}", {"event_id": "$nope"}), 404, "M_NOT_FOUND")
        await refused(peer.client.get_json(name, f"{F1}/event_auth/{room}/$nope"), 404, "M_NOT_FOUND")
        other = (await alice.call("POST", "/createRoom", json={"preset": "public_chat"}))["room_id"]
        await refused(peer.client.get_json(name, f"{F1}/event_auth/{other}/{message}"), 403, "M_FORBIDDEN")
        await refused(peer.client.get_json(name, f"{F1}/state/{other}", {"event_id": message}), 403, "M_FORBIDDEN")
        mine = (await alice.call("GET", f"/rooms/{other}/state"))[0]["event_id"]  # an event of another room
        await refused(peer.client.get_json(name, f"{F1}/event_auth/{room}/{mine}"), 404, "M_NOT_FOUND")


class DirectoryPeer(ReceiptPeer):
    """A peer whose room directory holds one good entry among junk, and records what it is asked."""

    def __init__(self, tmp: Path) -> None:
        super().__init__(tmp)
        self.asked: list[Any] = []

    def routes(self, app: web.Application) -> None:
        app.router.add_post(f"{F1}/publicRooms", self._public_rooms)

    async def _public_rooms(self, request: web.Request) -> web.Response:
        self.asked.append(await request.json())
        good = {"room_id": f"!good:{self.name}", "name": "Good", "num_joined_members": 3, "world_readable": True,
                "guest_can_join": False, "join_rule": "public", "x-extra": "dropped"}
        junk: list[Any] = ["junk", 7, None, {"name": "no room ID"}, {"room_id": 5},
                           {"room_id": f"!typed:{self.name}", "name": 7, "num_joined_members": "many",
                            "world_readable": "yes", "topic": "t" * 10_000}]
        return web.json_response({"chunk": [good, *junk], "next_batch": "n2", "total_room_count_estimate": "lots"})


async def test_clients_read_other_servers_directories(tmp_path: Path) -> None:
    """`/publicRooms?server=` asks that server over federation (POST, the client's parameters
    passed on) and shows its answer as the spec's fields only; a bad server name is a 400, an
    unreachable server a 502, and signing in is needed."""
    peer = DirectoryPeer(tmp_path)
    await peer.start()
    server = await asyncio.to_thread(start_whispr, server_name=f"127.0.0.1:{free_port()}",
                                     extra_config=federation_config())
    try:
        async with aiohttp.ClientSession() as session:
            alice = await Client.register(session, server, "alice")
            listed = await alice.call("POST", "/publicRooms", params={"server": peer.name},
                                      json={"limit": 5, "filter": {"generic_search_term": "go"}})
            assert peer.asked == [{"limit": 5, "filter": {"generic_search_term": "go"}}]
            assert listed == {"chunk": [
                {"room_id": f"!good:{peer.name}", "name": "Good", "num_joined_members": 3, "world_readable": True,
                 "guest_can_join": False, "join_rule": "public"},
                {"room_id": f"!typed:{peer.name}", "num_joined_members": 0, "world_readable": False,
                 "guest_can_join": False}], "next_batch": "n2"}
            again = await alice.call("GET", "/publicRooms", params={"server": peer.name, "limit": "2", "since": "n2"})
            assert peer.asked[-1] == {"limit": 2, "since": "n2"} and len(again["chunk"]) == 2
            await alice.call("GET", "/publicRooms", params={"server": "not a server!"}, expect=400)
            await alice.call("GET", "/publicRooms", params={"server": f"127.0.0.1:{free_port()}"}, expect=502)
            await alice.call("GET", "/publicRooms", params={"server": peer.name, "limit": "-2"}, expect=400)
            resp = await session.get(server.base_url + "/_matrix/client/v3/publicRooms", params={"server": peer.name})
            assert resp.status == 401 and (await resp.json())["errcode"] == "M_MISSING_TOKEN"
            # Our own name is our own directory.
            ours = await alice.call("GET", "/publicRooms", params={"server": server.server_name})
            assert ours["chunk"] == [] and len(peer.asked) == 2
    finally:
        await asyncio.to_thread(server.stop)
        await peer.close()


@pytest.fixture
async def with_synapse(tmp_path: Path) -> AsyncIterator[tuple[RunningServer, RunningServer]]:
    python = synapse_python()
    whispr_port, synapse_port = free_port(), free_port()
    whispr_name, synapse_name = f"127.0.0.1:{whispr_port}", f"127.0.0.1:{synapse_port}"
    synapse = await asyncio.to_thread(
        start_synapse, python=python, server_name=synapse_name,
        extra_config={**synapse_federation_config(tmp_path, synapse_port, [whispr_name, synapse_name]),
                      "room_list_publication_rules": [{"action": "allow"}]},  # Synapse lets only admins by default
        extra_listeners=[federation_listener(synapse_port)])
    try:
        whispr = await asyncio.to_thread(start_whispr, server_name=whispr_name, extra_config=federation_config())
    except BaseException:
        synapse.stop()
        raise
    try:
        yield whispr, synapse
    finally:
        await asyncio.gather(asyncio.to_thread(whispr.stop), asyncio.to_thread(synapse.stop))


async def test_synapse_browses_our_directory(with_synapse: tuple[RunningServer, RunningServer]) -> None:
    """A Synapse user lists our published rooms (`/publicRooms?server=` makes Synapse call ours),
    searches them (POST with a filter), and joins one found there."""
    whispr, synapse = with_synapse
    async with aiohttp.ClientSession() as session:
        wanda, sam = await Client.register(session, whispr, "wanda"), await Client.register(session, synapse, "sam")
        cheese = await published(wanda, "Cheese", "Tasty tasty cheese")
        wine = await published(wanda, "Wine")
        await published(wanda, "Unlisted", publish=False)
        listed = await sam.call("GET", "/publicRooms", params={"server": whispr.server_name})
        assert {r["room_id"] for r in listed["chunk"]} == {cheese, wine}
        assert next(r for r in listed["chunk"] if r["room_id"] == cheese)["topic"] == "Tasty tasty cheese"
        found = await sam.call("POST", "/publicRooms", params={"server": whispr.server_name},
                               json={"filter": {"generic_search_term": "wine"}, "limit": 5})
        assert [r["room_id"] for r in found["chunk"]] == [wine]
        await sam.call("POST", f"/join/{wine}", params={"server_name": whispr.server_name}, json={})
        members = await wanda.call("GET", f"/rooms/{wine}/joined_members")
        assert sam.user_id in members["joined"]

        # And the other way: our user reads Synapse's directory.
        bread = (await sam.call("POST", "/createRoom", json={"preset": "public_chat", "name": "Bread",
                                                             "visibility": "public"}))["room_id"]
        for _ in range(100):  # Synapse may list a new room a moment later
            theirs = await wanda.call("GET", "/publicRooms", params={"server": synapse.server_name})
            if theirs["chunk"]:
                break
            await asyncio.sleep(0.1)
        assert [r["room_id"] for r in theirs["chunk"]] == [bread]
        assert theirs["chunk"][0]["name"] == "Bread" and theirs["chunk"][0]["num_joined_members"] == 1
        found = await wanda.call("POST", "/publicRooms", params={"server": synapse.server_name},
                                 json={"filter": {"generic_search_term": "bread"}, "limit": 1})
        assert [r["room_id"] for r in found["chunk"]] == [bread]
