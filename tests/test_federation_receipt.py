"""Receipt of federation input that once failed or slipped through: gaps in a peer's history,
invites from servers, invite room state in both directions, profile queries.

A hand-built peer (tests/test_federation_forged.py `Peer`) talks to a running Whispr, on SQLite
and on PostgreSQL.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any, AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from bench.servers import PostgresAdmin, RunningServer, free_port, start_whispr
from federation.client import FederationError
from homeserver.events.client_format import stripped_state
from homeserver.events.crypto import compute_event_id, sign_event
from homeserver.events.event import Event
from homeserver.events.room_versions import KNOWN_ROOM_VERSIONS, ROOM_V10, ROOM_V12, RoomVersion
from tests.conftest import POSTGRES_URL, need
from tests.test_federation_forged import Peer
from tests.test_federation_whispr import Client, federation_config


class ReceiptPeer(Peer):
    """A peer that serves the events it holds (get_missing_events, event) and takes invites."""

    def __init__(self, tmp: Path) -> None:
        super().__init__(tmp)
        self.held: dict[str, dict[str, Any]] = {}  # event ID -> PDU, served on request
        self.missing_requests: list[dict[str, Any]] = []
        self.invites: list[dict[str, Any]] = []  # bodies of the invites we were sent

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/_matrix/federation/v1/get_missing_events/{room}", self._missing)
        app.router.add_get("/_matrix/federation/v1/event/{event_id}", self._event)
        app.router.add_put("/_matrix/federation/v2/invite/{room}/{event_id}", self._invite)

    def hold(self, pdu: dict[str, Any], version: RoomVersion = ROOM_V10) -> str:
        event_id = compute_event_id(pdu, version)
        self.held[event_id] = pdu
        return event_id

    async def _missing(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.missing_requests.append(body)
        earliest = set(body.get("earliest_events", []))
        return web.json_response({"events": [p for i, p in self.held.items() if i not in earliest]})

    async def _event(self, request: web.Request) -> web.Response:
        pdu = self.held.get(request.match_info["event_id"])
        if pdu is None:
            return web.json_response({"errcode": "M_NOT_FOUND", "error": "no such event"}, status=404)
        return web.json_response({"origin": self.name, "origin_server_ts": int(time.time() * 1000), "pdus": [pdu]})

    async def _invite(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.invites.append(body)
        version = KNOWN_ROOM_VERSIONS[body["room_version"]]
        return web.json_response({"event": sign_event(body["event"], self.name, self.key, version)})


@pytest.fixture(params=["sqlite", "postgres"])
async def setup(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[tuple[RunningServer, ReceiptPeer]]:
    engine: dict[str, Any] = {}
    if request.param == "postgres":
        need(POSTGRES_URL, "postgres")
        engine = {"db": "postgres", "pg": PostgresAdmin(POSTGRES_URL)}
    peer = ReceiptPeer(tmp_path)
    await peer.start()
    try:
        server = await asyncio.to_thread(start_whispr, server_name=f"127.0.0.1:{free_port()}",
                                         extra_config=federation_config(), **engine)
    except BaseException:
        await peer.close()
        raise
    try:
        yield server, peer
    finally:
        await asyncio.to_thread(server.stop)
        await peer.close()


async def join_room(peer: Peer, server: RunningServer, room: str, user: str) -> tuple[dict[str, Any], str]:
    """The peer's user joins a room on the server the way any server does: (join PDU, its ID)."""
    template = await peer.client.get_json(server.server_name, f"/_matrix/federation/v1/make_join/{room}/{user}",
                                          {"ver": ["10"]})
    join = {k: v for k, v in template["event"].items() if k != "origin"}
    join["origin_server_ts"] = int(time.time() * 1000)
    join = sign_event(join, peer.name, peer.key, ROOM_V10)
    join_id = compute_event_id(join, ROOM_V10)
    await peer.client.put_json(server.server_name, f"/_matrix/federation/v2/send_join/{room}/{join_id}", join)
    return join, join_id


async def create_room(client: Client, preset: str, version: str = "10") -> str:
    return (await client.call("POST", "/createRoom", json={"preset": preset, "room_version": version}))["room_id"]


async def room_state(client: Client, room: str) -> dict[tuple[str, str], str]:
    return {(e["type"], e["state_key"]): e["event_id"] for e in await client.call("GET", f"/rooms/{room}/state")}


async def test_a_gap_in_a_peers_history_is_fetched(setup: tuple[RunningServer, ReceiptPeer]) -> None:
    """A PDU whose prev event this server never saw: the transaction answers 200, the missing
    event is asked for with get_missing_events, and both are accepted. When the peer cannot give
    the missing event, that PDU alone gets an error, still in a 200."""
    server, peer = setup
    async with aiohttp.ClientSession() as session:
        alice = await Client.register(session, server, "alice")
        room = await create_room(alice, "public_chat")
        mallory = f"@mallory:{peer.name}"
        join, join_id = await join_room(peer, server, room, mallory)
        state = await room_state(alice, room)
        auth = [state[("m.room.create", "")], state[("m.room.power_levels", "")], join_id]
        text = {"msgtype": "m.text"}

        first = peer.event(room, mallory, "m.room.message", {**text, "body": "unseen"}, [join_id], auth,
                           join["depth"] + 1)
        first_id = peer.hold(first)
        second = peer.event(room, mallory, "m.room.message", {**text, "body": "after the gap"}, [first_id], auth,
                            join["depth"] + 2)
        second_id = compute_event_id(second, ROOM_V10)
        result = await peer.send(server.server_name, [second], "gap1")
        assert result["pdus"] == {second_id: {}}
        assert len(peer.missing_requests) == 1
        asked = peer.missing_requests[0]
        assert asked["latest_events"] == [second_id] and join_id in asked["earliest_events"]
        chunk = (await alice.call("GET", f"/rooms/{room}/messages", params={"dir": "b", "limit": "10"}))["chunk"]
        assert [e["content"].get("body") for e in chunk[:2]] == ["after the gap", "unseen"]

        # A prev event the peer cannot give: an error for that PDU only, in a 200.
        lost = peer.event(room, mallory, "m.room.message", {**text, "body": "lost"}, [second_id], auth,
                          join["depth"] + 3)
        lost_id = compute_event_id(lost, ROOM_V10)
        orphan = peer.event(room, mallory, "m.room.message", {**text, "body": "orphan"}, [lost_id], auth,
                            join["depth"] + 4)
        orphan_id = compute_event_id(orphan, ROOM_V10)
        fine = peer.event(room, mallory, "m.room.message", {**text, "body": "fine"}, [second_id], auth,
                          join["depth"] + 3)
        fine_id = compute_event_id(fine, ROOM_V10)
        result = await peer.send(server.server_name, [orphan, fine], "gap2")
        assert result["pdus"][orphan_id].get("error") and result["pdus"][fine_id] == {}
        await alice.call("GET", f"/rooms/{room}/event/{orphan_id}", expect=404)
        assert (await alice.call("GET", f"/rooms/{room}/event/{fine_id}"))["content"]["body"] == "fine"


async def test_profile_query_for_a_field_not_set(setup: tuple[RunningServer, ReceiptPeer]) -> None:
    """A user without an avatar: 200 without avatar_url (the spec, Synapse); an unknown user: 404."""
    server, peer = setup
    async with aiohttp.ClientSession() as session:
        alice = await Client.register(session, server, "alice")
        path = "/_matrix/federation/v1/query/profile"
        asked = await peer.client.get_json(server.server_name, path, {"user_id": alice.user_id, "field": "avatar_url"})
        assert asked.get("avatar_url") is None
        await alice.call("PUT", f"/profile/{alice.user_id}/displayname", json={"displayname": "Alice"})
        asked = await peer.client.get_json(server.server_name, path, {"user_id": alice.user_id, "field": "displayname"})
        assert asked == {"displayname": "Alice"}
        with pytest.raises(FederationError) as err:
            await peer.client.get_json(server.server_name, path, {"user_id": f"@nobody:{server.server_name}",
                                                                   "field": "avatar_url"})
        assert err.value.status == 404 and err.value.errcode == "M_NOT_FOUND"


async def send_invite(peer: Peer, server: RunningServer, pdu: dict[str, Any], version: RoomVersion = ROOM_V10,
                      invite_room_state: list[Any] | None = None) -> dict[str, Any]:
    event_id = compute_event_id(pdu, version)
    return await peer.client.put_json(
        server.server_name, f"/_matrix/federation/v2/invite/{pdu['room_id']}/{event_id}",
        {"event": pdu, "room_version": version.identifier, "invite_room_state": invite_room_state or []})


async def test_an_invite_from_a_server_with_nobody_in_the_room_is_refused(
        setup: tuple[RunningServer, ReceiptPeer]) -> None:
    """A peer with no member in a private room invites its former and banned members: 403, and
    the forged member events reach no timeline, no state and no invitee's /sync."""
    server, peer = setup
    async with aiohttp.ClientSession() as session:
        alice, bob, carol, dave = [await Client.register(session, server, n) for n in ("alice", "bob", "carol", "dave")]
        room = await create_room(alice, "private_chat")
        for member in (bob, carol, dave):
            await alice.call("POST", f"/rooms/{room}/invite", json={"user_id": member.user_id})
            await member.call("POST", f"/join/{room}", json={})
        await dave.call("POST", f"/rooms/{room}/leave", json={})
        await alice.call("POST", f"/rooms/{room}/ban", json={"user_id": carol.user_id})
        state = await room_state(alice, room)
        latest = (await alice.call("GET", f"/rooms/{room}/messages", params={"dir": "b", "limit": "1"}))["chunk"][0]
        base = [state[("m.room.create", "")], state[("m.room.power_levels", "")], state[("m.room.join_rules", "")]]
        mallory = f"@mallory:{peer.name}"
        forged = {"membership": "invite", "displayname": "FORGED", "reason": "forged by a stranger"}

        # The inviter's membership missing from the auth events, then a forged join the rules refuse.
        bare = peer.event(room, mallory, "m.room.member", forged, [latest["event_id"]], base, 100,
                          state_key=dave.user_id)
        fake_join = peer.event(room, mallory, "m.room.member", {"membership": "join"}, [latest["event_id"]], base,
                               100, state_key=mallory)
        with_join = peer.event(room, mallory, "m.room.member", forged, [peer.hold(fake_join)],
                               base + [compute_event_id(fake_join, ROOM_V10)], 101, state_key=carol.user_id)
        for pdu in (bare, with_join):
            with pytest.raises(FederationError) as err:
                await send_invite(peer, server, pdu, invite_room_state=[
                    {"type": "m.room.name", "state_key": "", "sender": mallory, "content": {"name": "FORGED"}}])
            assert err.value.status == 403 and err.value.errcode == "M_FORBIDDEN"

        assert await room_state(alice, room) == state
        for member in (alice, bob):
            chunk = (await member.call("GET", f"/rooms/{room}/messages", params={"dir": "b", "limit": "50"}))["chunk"]
            assert all(e["sender"] != mallory for e in chunk)
            timeline = (await member.call("GET", "/sync"))["rooms"]["join"][room]["timeline"]["events"]
            assert all(e["sender"] != mallory for e in timeline)
        for member in (carol, dave):
            assert room not in (await member.call("GET", "/sync"))["rooms"]["invite"]


async def test_an_invite_from_a_joined_member_of_another_server(setup: tuple[RunningServer, ReceiptPeer]) -> None:
    """The same endpoint lets a joined member of another server invite with the invite level:
    the invite is an event of the room, seen by its members and the invitee."""
    server, peer = setup
    async with aiohttp.ClientSession() as session:
        alice, carol = await Client.register(session, server, "alice"), await Client.register(session, server, "carol")
        room = await create_room(alice, "public_chat")
        mallory = f"@mallory:{peer.name}"
        join, join_id = await join_room(peer, server, room, mallory)
        state = await room_state(alice, room)
        auth = [state[("m.room.create", "")], state[("m.room.power_levels", "")], state[("m.room.join_rules", "")],
                join_id]
        pdu = peer.event(room, mallory, "m.room.member", {"membership": "invite"}, [join_id], auth,
                         join["depth"] + 1, state_key=carol.user_id)
        signed = (await send_invite(peer, server, pdu))["event"]
        assert server.server_name in signed["signatures"] and peer.name in signed["signatures"]
        invite_id = compute_event_id(pdu, ROOM_V10)
        assert (await room_state(alice, room))[("m.room.member", carol.user_id)] == invite_id
        invite = (await carol.call("GET", "/sync"))["rooms"]["invite"][room]["invite_state"]["events"]
        assert {"type": "m.room.join_rules", "state_key": "", "sender": alice.user_id,
                "content": {"join_rule": "public"}} in invite
        await carol.call("POST", f"/join/{room}", json={})
        assert (await room_state(alice, room))[("m.room.member", carol.user_id)] != invite_id


def peer_room(peer: Peer, version: RoomVersion) -> tuple[str, list[dict[str, Any]]]:
    """A room of the peer's own, never shared with the server under test: (room ID, its state PDUs)."""
    owner = f"@peter:{peer.name}"
    pdus: list[dict[str, Any]] = []
    room = f"!preview:{peer.name}"

    def add(etype: str, content: dict[str, Any], state_key: str = "") -> None:
        prev = [compute_event_id(pdus[-1], version)] if pdus else []
        auth = [compute_event_id(p, version) for p in pdus[:2]
                if version.create_event_in_auth_events or p["type"] != "m.room.create"]
        pdu: dict[str, Any] = {"sender": owner, "type": etype, "state_key": state_key, "content": content,
                               "prev_events": prev, "auth_events": auth, "depth": len(pdus) + 1,
                               "origin_server_ts": int(time.time() * 1000)}
        if pdus or not version.room_id_from_create_event:
            pdu["room_id"] = room
        pdus.append(sign_event(pdu, peer.name, peer.key, version))

    add("m.room.create", {"creator": owner, "room_version": version.identifier} if version.create_event_in_auth_events
        else {"room_version": version.identifier})
    if version.room_id_from_create_event:
        room = "!" + compute_event_id(pdus[0], version)[1:]
    add("m.room.member", {"membership": "join"}, owner)
    add("m.room.power_levels", {"users": {owner: 100}})
    add("m.room.join_rules", {"join_rule": "invite"})
    add("m.room.name", {"name": "Preview"})
    add("m.room.topic", {"topic": "what the invitee sees"})
    add("m.room.history_visibility", {"history_visibility": "shared"})  # not a preview type
    return room, pdus


@pytest.mark.parametrize("version", [ROOM_V10, ROOM_V12], ids=["v10", "v12"])
async def test_the_invite_state_a_server_sends_is_shown(setup: tuple[RunningServer, ReceiptPeer],
                                                        version: RoomVersion) -> None:
    """An invite to a room on another server shows the invitee the room as that server described
    it (stripped events, or full PDUs in v12): name, topic, join rules, create event, inviter;
    junk and events of other rooms are dropped."""
    server, peer = setup
    async with aiohttp.ClientSession() as session:
        carol = await Client.register(session, server, "carol")
        await carol.sync_until(lambda _: True)
        room, pdus = peer_room(peer, version)
        owner = pdus[0]["sender"]
        invite = {"room_id": room, "sender": owner, "type": "m.room.member", "state_key": carol.user_id,
                  "content": {"membership": "invite"}, "prev_events": [compute_event_id(pdus[-1], version)],
                  "auth_events": [compute_event_id(p, version) for p in pdus[1:4]], "depth": len(pdus) + 1,
                  "origin_server_ts": int(time.time() * 1000)}
        invite = sign_event(invite, peer.name, peer.key, version)
        full = version is ROOM_V12
        sent = [p if full else stripped_state(Event(compute_event_id(p, version), p)) for p in pdus]
        _, others = peer_room(peer, ROOM_V12)
        junk: list[Any] = ["junk", 7, None, {"type": "m.room.name"},
                           {**stripped_state(Event("$x", pdus[4])), "content": "x"},
                           {"type": "m.room.member", "state_key": carol.user_id, "sender": owner,
                            "content": {"membership": "join"}}]
        if full:  # full PDUs of another room, a create event among them
            junk += [others[0], others[4]]
        await send_invite(peer, server, invite, version, junk + sent)

        body = await carol.sync_until(lambda b: room in b["rooms"]["invite"])
        shown = body["rooms"]["invite"][room]["invite_state"]["events"]
        assert all(set(e) == {"type", "state_key", "sender", "content"} for e in shown)
        by_key = {(e["type"], e["state_key"]): e for e in shown}
        assert set(by_key) == {("m.room.create", ""), ("m.room.member", owner), ("m.room.join_rules", ""),
                               ("m.room.name", ""), ("m.room.topic", ""), ("m.room.member", carol.user_id)}
        assert by_key[("m.room.name", "")]["content"] == {"name": "Preview"}
        assert by_key[("m.room.create", "")]["content"]["room_version"] == version.identifier
        assert by_key[("m.room.member", carol.user_id)]["content"]["membership"] == "invite"
        assert len(shown) == len(by_key)
        # The same on a first sync.
        first = (await carol.call("GET", "/sync"))["rooms"]["invite"][room]["invite_state"]["events"]
        assert sorted(map(str, first)) == sorted(map(str, shown))


@pytest.mark.parametrize("version", [ROOM_V10, ROOM_V12], ids=["v10", "v12"])
async def test_invites_we_send_carry_the_room_state(setup: tuple[RunningServer, ReceiptPeer],
                                                    version: RoomVersion) -> None:
    """Inviting a user of another server sends invite_room_state with the create event: full PDUs,
    as stored and signed, in room version 12 (MSC4311); stripped events before it."""
    server, peer = setup
    async with aiohttp.ClientSession() as session:
        alice = await Client.register(session, server, "alice")
        room = (await alice.call("POST", "/createRoom", json={"preset": "private_chat", "name": "Ours",
                                                              "room_version": version.identifier}))["room_id"]
        await alice.call("POST", f"/rooms/{room}/invite", json={"user_id": f"@xavier:{peer.name}"})
        [body] = peer.invites
        assert body["room_version"] == version.identifier
        state = await room_state(alice, room)
        sent = body["invite_room_state"]
        keys = {(e["type"], e["state_key"]) for e in sent}
        assert {("m.room.create", ""), ("m.room.name", ""), ("m.room.join_rules", ""),
                ("m.room.member", alice.user_id)} <= keys
        if version is ROOM_V12:
            for pdu in sent:
                assert {"auth_events", "prev_events", "depth", "hashes", "signatures"} <= set(pdu)
                assert server.server_name in pdu["signatures"]
                assert compute_event_id(pdu, version) == state[(pdu["type"], pdu["state_key"])]
            create = next(p for p in sent if p["type"] == "m.room.create")
            assert "!" + compute_event_id(create, version)[1:] == room
        else:
            assert all(set(e) == {"type", "state_key", "sender", "content"} for e in sent)


async def test_a_pdu_that_fails_here_fails_alone(setup: tuple[RunningServer, ReceiptPeer]) -> None:
    """A PDU that breaks something of ours (a depth no database column holds) gets its own error in a
    200; the transaction's other PDUs are accepted and nothing is retried."""
    server, peer = setup
    async with aiohttp.ClientSession() as session:
        alice = await Client.register(session, server, "alice")
        room = await create_room(alice, "public_chat")
        mallory = f"@mallory:{peer.name}"
        join, join_id = await join_room(peer, server, room, mallory)
        state = await room_state(alice, room)
        auth = [state[("m.room.create", "")], state[("m.room.power_levels", "")], join_id]
        deep = peer.event(room, mallory, "m.room.message", {"msgtype": "m.text", "body": "deep"}, [join_id], auth,
                          2**70)
        fine = peer.event(room, mallory, "m.room.message", {"msgtype": "m.text", "body": "fine"}, [join_id], auth,
                          join["depth"] + 1)
        result = await peer.send(server.server_name, [deep, fine], "deep1")
        assert result["pdus"][compute_event_id(deep, ROOM_V10)].get("error")
        assert result["pdus"][compute_event_id(fine, ROOM_V10)] == {}
        await alice.call("GET", f"/rooms/{room}/event/{compute_event_id(deep, ROOM_V10)}", expect=404)
