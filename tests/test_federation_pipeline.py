"""Every branch of the PDU receipt pipeline (federation/ingest.py), driven by a hand-built peer.

Unknown prev events fetched with get_missing_events; a gap get_missing_events cannot fill bridged
with state_ids and /event; forks resolved by state resolution; missing auth events fetched; and
each failure kept as the spec says: a bad signature dropped (never stored), a bad hash kept
redacted, an event failing its own auth events or the state before it rejected, one failing only
the current state soft-failed (stored, never shown to clients, never a prev event of ours).
On SQLite and on PostgreSQL.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator

import aiohttp
import pytest
from aiohttp import web
from signedjson.key import generate_signing_key

from bench.servers import PostgresAdmin, RunningServer, free_port, start_whispr
from federation.client import FederationError
from homeserver.events.crypto import compute_event_id
from homeserver.events.room_versions import ROOM_V10, ROOM_V12, RoomVersion
from tests.conftest import POSTGRES_URL, need
from tests.test_federation_receipt import ReceiptPeer, room_state
from tests.test_federation_whispr import Client, federation_config

# Each test in v10 and in v12 (room ID from the create event, which no auth_events list).
by_version = pytest.mark.parametrize("version", [ROOM_V10, ROOM_V12], ids=["v10", "v12"])


class PipelinePeer(ReceiptPeer):
    """A peer that also answers state_ids for the events it holds, records what it is asked and
    sent, and can refuse to fill gaps (get_missing_events answering nothing)."""

    def __init__(self, tmp: Path) -> None:
        super().__init__(tmp)
        self.fill_gaps = True
        self.missing_limit: int | None = None
        self.state_before: dict[str, list[str]] = {}  # event ID -> the state IDs before it
        self.state_ids_requests: list[str] = []
        self.event_requests: list[str] = []
        self.received: list[dict[str, Any]] = []  # PDUs the server under test sent us

    def routes(self, app: web.Application) -> None:
        super().routes(app)
        app.router.add_get("/_matrix/federation/v1/state_ids/{room}", self._state_ids)

    async def _missing(self, request: web.Request) -> web.Response:
        if not self.fill_gaps:
            self.missing_requests.append(await request.json())
            return web.json_response({"events": []})
        if self.missing_limit is not None:  # only the newest of the events asked for
            body = await request.json()
            self.missing_requests.append(body)
            held = [p for i, p in self.held.items() if i not in set(body.get("earliest_events", []))]
            return web.json_response({"events": sorted(held, key=lambda p: p["depth"])[-self.missing_limit:]})
        return await super()._missing(request)

    async def _event(self, request: web.Request) -> web.Response:
        self.event_requests.append(request.match_info["event_id"])
        return await super()._event(request)

    async def _state_ids(self, request: web.Request) -> web.Response:
        event_id = request.query.get("event_id", "")
        self.state_ids_requests.append(event_id)
        if event_id not in self.state_before:
            return web.json_response({"errcode": "M_NOT_FOUND", "error": "no such event"}, status=404)
        ids = self.state_before[event_id]
        return web.json_response({"pdu_ids": ids, "auth_chain_ids": ids})

    async def _send(self, request: web.Request) -> web.Response:
        self.received.extend((await request.json()).get("pdus", []))
        return web.json_response({"pdus": {}})


Setup = tuple[RunningServer, PipelinePeer]


@dataclass
class Room:
    """A room on the server under test with two users of the peer: trent (level 100) and mallory (50)."""

    room_id: str
    version: RoomVersion
    state: dict[tuple[str, str], str]
    levels: dict[str, Any]
    latest: str
    trent: str
    mallory: str
    depth: int = 1000
    txns: int = 0
    sent: list[str] = field(default_factory=list)

    @property
    def create(self) -> str:
        return self.state[("m.room.create", "")]

    def make(self, peer: PipelinePeer, sender: str, etype: str, content: dict[str, Any], prev: list[str],
             state_key: str | None = None, auth: list[str] | None = None,
             key: Any = None) -> tuple[str, dict[str, Any]]:
        """A PDU of the peer's; its auth events default to the create event, the power levels and
        the sender's membership as the room state holds them."""
        self.depth += 1
        if auth is None:
            auth = [self.create, self.state[("m.room.power_levels", "")], self.state[("m.room.member", sender)]]
        if not self.version.create_event_in_auth_events:
            auth = [a for a in auth if a != self.create]
        pdu = peer.event(self.room_id, sender, etype, content, prev, auth, self.depth, state_key=state_key, key=key,
                         version=self.version)
        return compute_event_id(pdu, self.version), pdu

    def hold(self, peer: PipelinePeer, *made: tuple[str, dict[str, Any]]) -> None:
        for _, pdu in made:
            peer.hold(pdu, self.version)

    async def send(self, peer: PipelinePeer, server: RunningServer, *pdus: dict[str, Any]) -> dict[str, Any]:
        self.txns += 1
        return (await peer.send(server.server_name, list(pdus), f"{self.room_id}-{self.txns}"))["pdus"]


@pytest.fixture(params=["sqlite", "postgres"])
async def setup(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[tuple[RunningServer, PipelinePeer]]:
    engine: dict[str, Any] = {}
    if request.param == "postgres":
        need(POSTGRES_URL, "postgres")
        engine = {"db": "postgres", "pg": PostgresAdmin(POSTGRES_URL)}
    peer = PipelinePeer(tmp_path)
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


async def shared_room(alice: Client, peer: PipelinePeer, version: RoomVersion) -> Room:
    """alice's public room with trent (100) and mallory (50) of the peer joined, and a topic."""
    room = (await alice.call("POST", "/createRoom", json={"preset": "public_chat",
                                                          "room_version": version.identifier}))["room_id"]
    trent, mallory = f"@trent:{peer.name}", f"@mallory:{peer.name}"
    for user in (trent, mallory):
        await peer.join(alice.server.server_name, room, user, version)
    levels = await alice.call("GET", f"/rooms/{room}/state/m.room.power_levels")
    levels["users"].update({trent: 100, mallory: 50})
    await alice.call("PUT", f"/rooms/{room}/state/m.room.power_levels", json=levels)
    latest = (await alice.call("PUT", f"/rooms/{room}/state/m.room.topic", json={"topic": "original"}))["event_id"]
    return Room(room, version, await room_state(alice, room), levels, latest, trent, mallory)


async def timeline(client: Client, room: str, limit: int = 50) -> list[dict[str, Any]]:
    return (await client.call("GET", f"/rooms/{room}/messages", params={"dir": "b", "limit": str(limit)}))["chunk"]


async def received(peer: PipelinePeer, r: Room, event_id: str, timeout: float = 10) -> dict[str, Any]:
    """The PDU of ours the peer was sent with that ID (the sender delivers it in the background)."""
    for _ in range(int(timeout / 0.05)):
        for pdu in peer.received:
            if compute_event_id(pdu, r.version) == event_id:
                return pdu
        await asyncio.sleep(0.05)
    pytest.fail(f"{event_id} never reached the peer")


@by_version
async def test_unknown_prev_events_are_fetched_with_get_missing_events(setup: Setup, version: RoomVersion) -> None:
    """A PDU on three events this server never saw (a state change among them): get_missing_events
    fetches them, all four are accepted into the timeline in order, and the state change applies."""
    server, peer = setup
    async with aiohttp.ClientSession() as session:
        alice = await Client.register(session, server, "alice")
        r = await shared_room(alice, peer, version)
        text = {"msgtype": "m.text"}
        one = r.make(peer, r.trent, "m.room.message", {**text, "body": "one"}, [r.latest])
        topic = r.make(peer, r.trent, "m.room.topic", {"topic": "in the gap"}, [one[0]], state_key="")
        two = r.make(peer, r.trent, "m.room.message", {**text, "body": "two"}, [topic[0]])
        last = r.make(peer, r.trent, "m.room.message", {**text, "body": "last"}, [two[0]])
        r.hold(peer, one, topic, two)
        assert await r.send(peer, server, last[1]) == {last[0]: {}}
        assert len(peer.missing_requests) == 1 and peer.missing_requests[0]["latest_events"] == [last[0]]
        assert r.latest in peer.missing_requests[0]["earliest_events"]
        assert peer.state_ids_requests == [] and peer.event_requests == []  # nothing else was needed
        ids = [e["event_id"] for e in await timeline(alice, r.room_id, 4)]
        assert ids == [last[0], two[0], topic[0], one[0]]
        assert (await alice.call("GET", f"/rooms/{r.room_id}/state/m.room.topic")) == {"topic": "in the gap"}


@by_version
async def test_a_gap_get_missing_events_cannot_fill_is_bridged_with_state_ids(
        setup: Setup, version: RoomVersion) -> None:
    """The prev event is a power levels change this server never saw and get_missing_events gives
    nothing: its auth event is fetched with /event, the state before it with state_ids, the PDU is
    accepted, and the room's state takes the change (resolved against our current state)."""
    server, peer = setup
    async with aiohttp.ClientSession() as session:
        alice = await Client.register(session, server, "alice")
        r = await shared_room(alice, peer, version)
        peer.fill_gaps = False
        demoted = {**r.levels, "users": {**r.levels["users"], r.mallory: 0}}
        change = r.make(peer, r.trent, "m.room.power_levels", demoted, [r.latest], state_key="")
        r.hold(peer, change)
        peer.state_before[change[0]] = list(r.state.values())
        message = r.make(peer, r.trent, "m.room.message", {"msgtype": "m.text", "body": "after"}, [change[0]],
                         auth=[r.create, change[0], r.state[("m.room.member", r.trent)]])
        assert await r.send(peer, server, message[1]) == {message[0]: {}}
        assert len(peer.missing_requests) == 1
        assert change[0] in peer.event_requests and peer.state_ids_requests == [change[0]]
        assert (await timeline(alice, r.room_id, 1))[0]["event_id"] == message[0]
        assert (await alice.call("GET", f"/rooms/{r.room_id}/state/m.room.power_levels")) == demoted

        # mallory's topic, citing the power levels before the change as its auth events: those
        # allow it, the state before it does not: rejected, the topic unchanged.
        topic = r.make(peer, r.mallory, "m.room.topic", {"topic": "mallory's"}, [message[0]], state_key="")
        result = await r.send(peer, server, topic[1])
        assert "rejected" in result[topic[0]]["error"]
        assert (await alice.call("GET", f"/rooms/{r.room_id}/state/m.room.topic")) == {"topic": "original"}
        await alice.call("GET", f"/rooms/{r.room_id}/event/{topic[0]}", expect=404)


@by_version
async def test_a_gap_get_missing_events_fills_in_part_is_bridged_at_its_start(
        setup: Setup, version: RoomVersion) -> None:
    """get_missing_events gives only the newest of the missing events: the oldest one it gave is
    accepted on the state state_ids gives for its unknown prev event (a topic change, fetched with
    /event), and the rest follow on it."""
    server, peer = setup
    async with aiohttp.ClientSession() as session:
        alice = await Client.register(session, server, "alice")
        r = await shared_room(alice, peer, version)
        peer.missing_limit = 2
        text = {"msgtype": "m.text"}
        topic = r.make(peer, r.trent, "m.room.topic", {"topic": "bridged"}, [r.latest], state_key="")
        one = r.make(peer, r.trent, "m.room.message", {**text, "body": "one"}, [topic[0]])
        two = r.make(peer, r.trent, "m.room.message", {**text, "body": "two"}, [one[0]])
        last = r.make(peer, r.trent, "m.room.message", {**text, "body": "last"}, [two[0]])
        r.hold(peer, topic, one, two)
        peer.state_before[topic[0]] = list(r.state.values())
        assert await r.send(peer, server, last[1]) == {last[0]: {}}
        assert len(peer.missing_requests) == 1 and peer.state_ids_requests == [topic[0]]
        assert topic[0] in peer.event_requests
        assert [e["event_id"] for e in await timeline(alice, r.room_id, 3)] == [last[0], two[0], one[0]]
        assert (await alice.call("GET", f"/rooms/{r.room_id}/state/m.room.topic")) == {"topic": "bridged"}


@by_version
async def test_a_prev_event_first_seen_as_an_auth_event_still_joins_the_timeline(
        setup: Setup, version: RoomVersion) -> None:
    """A transaction listing a PDU before the power levels change it is built on (and authorised
    by): the change is fetched as the message's prev event and both are in the timeline, not
    only in the state."""
    server, peer = setup
    async with aiohttp.ClientSession() as session:
        alice = await Client.register(session, server, "alice")
        r = await shared_room(alice, peer, version)
        raised = {**r.levels, "users": {**r.levels["users"], r.mallory: 75}}
        change = r.make(peer, r.trent, "m.room.power_levels", raised, [r.latest], state_key="")
        r.hold(peer, change)
        message = r.make(peer, r.mallory, "m.room.message", {"msgtype": "m.text", "body": "promoted"}, [change[0]],
                         auth=[r.create, change[0], r.state[("m.room.member", r.mallory)]])
        assert await r.send(peer, server, message[1], change[1]) == {message[0]: {}, change[0]: {}}
        assert [e["event_id"] for e in await timeline(alice, r.room_id, 2)] == [message[0], change[0]]
        assert (await alice.call("GET", f"/rooms/{r.room_id}/state/m.room.power_levels")) == raised
        assert peer.state_ids_requests == []


@by_version
@pytest.mark.parametrize("power_change", ["demotion", "ban"])
async def test_a_fork_is_resolved_by_state_resolution(setup: Setup, version: RoomVersion, power_change: str) -> None:
    """Two branches from the peer on the same event: mallory's topic (accepted first) and trent's
    demotion or ban of mallory. State resolution applies the power change first, under which
    mallory's topic does not hold: the topic stays the original; a merge of both branches is
    accepted on the resolved state."""
    server, peer = setup
    async with aiohttp.ClientSession() as session:
        alice = await Client.register(session, server, "alice")
        r = await shared_room(alice, peer, version)
        topic = r.make(peer, r.mallory, "m.room.topic", {"topic": "mallory's"}, [r.latest], state_key="")
        assert await r.send(peer, server, topic[1]) == {topic[0]: {}}
        assert (await alice.call("GET", f"/rooms/{r.room_id}/state/m.room.topic")) == {"topic": "mallory's"}

        if power_change == "demotion":
            demoted = {**r.levels, "users": {**r.levels["users"], r.mallory: 0}}
            change = r.make(peer, r.trent, "m.room.power_levels", demoted, [r.latest], state_key="")
        else:
            change = r.make(peer, r.trent, "m.room.member", {"membership": "ban"}, [r.latest], state_key=r.mallory,
                            auth=[r.create, r.state[("m.room.power_levels", "")], r.state[("m.room.member", r.trent)],
                                  r.state[("m.room.member", r.mallory)]])
        assert await r.send(peer, server, change[1]) == {change[0]: {}}
        assert (await alice.call("GET", f"/rooms/{r.room_id}/state/m.room.topic")) == {"topic": "original"}
        if power_change == "demotion":
            assert (await alice.call("GET", f"/rooms/{r.room_id}/state/m.room.power_levels")) == demoted
        else:
            member = await alice.call("GET", f"/rooms/{r.room_id}/state/m.room.member/{r.mallory}")
            assert member["membership"] == "ban"
        # Both branches are in the timeline: the topic is part of the room's history.
        assert {topic[0], change[0]} <= {e["event_id"] for e in await timeline(alice, r.room_id, 5)}

        merge = r.make(peer, r.trent, "m.room.message", {"msgtype": "m.text", "body": "merged"},
                       [topic[0], change[0]])
        assert await r.send(peer, server, merge[1]) == {merge[0]: {}}
        assert (await timeline(alice, r.room_id, 1))[0]["event_id"] == merge[0]
        assert (await alice.call("GET", f"/rooms/{r.room_id}/state/m.room.topic")) == {"topic": "original"}
        # Our next event descends from the merge alone.
        mine = await alice.send(r.room_id, "after the merge")
        assert (await received(peer, r, mine))["prev_events"] == [merge[0]]
        assert peer.state_ids_requests == []


@by_version
async def test_each_failure_is_kept_as_the_spec_says(setup: Setup, version: RoomVersion) -> None:
    """A bad signature: dropped, never stored (an event citing it makes us ask for it again). A bad
    hash: kept redacted. Failing its own auth events, or the state before it: rejected, stored as
    such (re-sent, still an error; cited, never fetched again). Failing only the current state:
    soft-failed, stored, never shown to clients nor used as a prev event of ours."""
    server, peer = setup
    async with aiohttp.ClientSession() as session:
        alice = await Client.register(session, server, "alice")
        r = await shared_room(alice, peer, version)
        text = {"msgtype": "m.text"}
        levels_before = await alice.call("GET", f"/rooms/{r.room_id}/state/m.room.power_levels")

        forged = r.make(peer, r.mallory, "m.room.message", {**text, "body": "forged"}, [r.latest],
                        key=generate_signing_key(peer.key.version))
        assert (await r.send(peer, server, forged[1]))[forged[0]].get("error")
        tampered = r.make(peer, r.mallory, "m.room.message", {**text, "body": "original"}, [r.latest])
        tampered[1]["content"] = {**text, "body": "changed in transit"}
        assert await r.send(peer, server, tampered[1]) == {tampered[0]: {}}
        assert (await alice.call("GET", f"/rooms/{r.room_id}/event/{tampered[0]}"))["content"] == {}

        grab = r.make(peer, r.mallory, "m.room.power_levels",
                      {**r.levels, "users": {**r.levels["users"], r.mallory: 100}}, [tampered[0]], state_key="")
        assert "rejected" in (await r.send(peer, server, grab[1]))[grab[0]]["error"]

        ban = (await alice.call("POST", f"/rooms/{r.room_id}/ban", json={"user_id": r.mallory}))
        assert ban == {}
        ban_id = (await room_state(alice, r.room_id))[("m.room.member", r.mallory)]
        # On the ban, citing mallory's join as its auth event: fails the state before it.
        after_ban = r.make(peer, r.mallory, "m.room.message", {**text, "body": "after the ban"}, [ban_id])
        assert "rejected" in (await r.send(peer, server, after_ban[1]))[after_ban[0]]["error"]
        # Beside the ban, on the state before it: passes that, fails the current state.
        beside = r.make(peer, r.mallory, "m.room.message", {**text, "body": "beside the ban"}, [tampered[0]])
        assert await r.send(peer, server, beside[1]) == {beside[0]: {}}

        for event_id in (forged[0], grab[0], after_ban[0], beside[0]):
            await alice.call("GET", f"/rooms/{r.room_id}/event/{event_id}", expect=404)
        assert await alice.call("GET", f"/rooms/{r.room_id}/state/m.room.power_levels") == levels_before
        bodies = [e["content"].get("body") for e in await timeline(alice, r.room_id)]
        synced = (await alice.call("GET", "/sync"))["rooms"]["join"][r.room_id]["timeline"]["events"]
        for shown in (bodies, [e["content"].get("body") for e in synced]):
            assert not {"forged", "after the ban", "beside the ban"} & set(shown)

        # Re-sent, the rejected events are still refused; the soft-failed one is taken as before.
        result = await r.send(peer, server, grab[1], after_ban[1], beside[1])
        assert "rejected" in result[grab[0]]["error"] and "rejected" in result[after_ban[0]]["error"]
        assert result[beside[0]] == {}
        # Cited as auth events: the rejected one is known (refused without asking the peer), the
        # dropped one was never stored (asked for).
        peer.event_requests.clear()
        for cited in (grab[0], forged[0]):
            bad = r.make(peer, r.trent, "m.room.message", {**text, "body": "cites"}, [ban_id],
                         auth=[r.create, r.state[("m.room.power_levels", "")], r.state[("m.room.member", r.trent)],
                               cited])
            assert (await r.send(peer, server, bad[1]))[bad[0]].get("error")
        assert peer.event_requests == [forged[0]]

        # Our next event does not build on the soft-failed one.
        mine = await alice.send(r.room_id, "from alice")
        assert (await received(peer, r, mine))["prev_events"] == [ban_id]
        # Still part of the room's graph: an event of trent's on it and ours is accepted on the state
        # computed here (no state_ids round trip), which the soft-failed event did not change.
        peer.state_ids_requests.clear()
        on_top = r.make(peer, r.trent, "m.room.message", {**text, "body": "on top"}, [beside[0], mine])
        assert await r.send(peer, server, on_top[1]) == {on_top[0]: {}}
        assert peer.state_ids_requests == []
        assert (await timeline(alice, r.room_id, 1))[0]["event_id"] == on_top[0]
        # So is one on the event rejected against the state before it (the spec: allowed if it passes
        # the auth rules, on the state as if the rejected event were not there).
        on_rejected = r.make(peer, r.trent, "m.room.message", {**text, "body": "on the rejected"},
                             [after_ban[0], on_top[0]])
        assert await r.send(peer, server, on_rejected[1]) == {on_rejected[0]: {}}
        assert peer.state_ids_requests == []
        # Other servers asking for the state at a rejected event get none; at a soft-failed one, the real one.
        name = server.server_name
        with pytest.raises(FederationError) as err:
            await peer.client.get_json(name, f"/_matrix/federation/v1/state_ids/{r.room_id}", {"event_id": grab[0]})
        assert err.value.status == 404
        at_beside = await peer.client.get_json(name, f"/_matrix/federation/v1/state_ids/{r.room_id}",
                                               {"event_id": beside[0]})
        assert set(at_beside["pdu_ids"]) == set(r.state.values())  # before the ban, as its prev left it


@by_version
async def test_missing_auth_events_are_fetched_and_checked(setup: Setup, version: RoomVersion) -> None:
    """Auth events this server never saw are fetched with /event, their own missing auth events too,
    each checked against its auth events: a PDU on a valid chain is accepted, one citing an auth
    event the rules refuse is rejected (and stays so)."""
    server, peer = setup
    async with aiohttp.ClientSession() as session:
        alice = await Client.register(session, server, "alice")
        r = await shared_room(alice, peer, version)
        member, levels = r.state[("m.room.member", r.trent)], r.state[("m.room.power_levels", "")]

        def raise_mallory(to: int, on: str, sender: str) -> tuple[str, dict[str, Any]]:
            content = {**r.levels, "users": {**r.levels["users"], r.mallory: to}}
            return r.make(peer, sender, "m.room.power_levels", content, [r.latest], state_key="",
                          auth=[r.create, on, r.state[("m.room.member", sender)]])

        first = raise_mallory(60, levels, r.trent)
        second = raise_mallory(70, first[0], r.trent)
        r.hold(peer, first, second)
        ok = r.make(peer, r.trent, "m.room.message", {"msgtype": "m.text", "body": "ok"}, [r.latest],
                    auth=[r.create, second[0], member])
        assert await r.send(peer, server, ok[1]) == {ok[0]: {}}
        assert peer.event_requests == [second[0], first[0]] and peer.missing_requests == []
        assert (await timeline(alice, r.room_id, 1))[0]["event_id"] == ok[0]

        grab = raise_mallory(100, levels, r.mallory)  # mallory (50) may not raise herself
        r.hold(peer, grab)
        bad = r.make(peer, r.trent, "m.room.message", {"msgtype": "m.text", "body": "bad"}, [ok[0]],
                     auth=[r.create, grab[0], member])
        assert "auth events" in (await r.send(peer, server, bad[1]))[bad[0]]["error"]
        assert peer.event_requests[2:] == [grab[0]]
        assert "rejected" in (await r.send(peer, server, bad[1]))[bad[0]]["error"]
        assert peer.event_requests[3:] == []  # known as rejected: not asked for again
        await alice.call("GET", f"/rooms/{r.room_id}/event/{bad[0]}", expect=404)
        assert (await alice.call("GET", f"/rooms/{r.room_id}/state/m.room.power_levels"))["users"][r.mallory] == 50

        # Held as an outlier, the second change arrives as a PDU of its own: it joins the timeline, and
        # the room's state (resolved with ours, on which it is a fork).
        assert await r.send(peer, server, second[1]) == {second[0]: {}}
        assert (await timeline(alice, r.room_id, 1))[0]["event_id"] == second[0]
        assert (await alice.call("GET", f"/rooms/{r.room_id}/state/m.room.power_levels"))["users"][r.mallory] == 70


@by_version
async def test_prev_events_of_another_room_are_refused(setup: Setup, version: RoomVersion) -> None:
    """A PDU whose prev event is an event of another room (one this server holds) must not take
    that room's state as the state before it: refused, and neither room's state changes."""
    server, peer = setup
    async with aiohttp.ClientSession() as session:
        alice = await Client.register(session, server, "alice")
        r = await shared_room(alice, peer, version)
        other = await shared_room(alice, peer, version)
        before, other_before = await room_state(alice, r.room_id), await room_state(alice, other.room_id)
        text = {"msgtype": "m.text"}
        for prev in ([other.latest], [r.latest, other.latest]):
            made = r.make(peer, r.mallory, "m.room.message", {**text, "body": "across"}, prev)
            assert (await r.send(peer, server, made[1]))[made[0]].get("error")
            await alice.call("GET", f"/rooms/{r.room_id}/event/{made[0]}", expect=404)
        assert await room_state(alice, r.room_id) == before
        assert await room_state(alice, other.room_id) == other_before
        assert peer.missing_requests == [] and peer.state_ids_requests == []

        # Nor from a state_ids answer naming the other room's events as the state before a gap.
        peer.fill_gaps = False
        unseen = r.make(peer, r.trent, "m.room.message", {**text, "body": "unseen"}, [r.latest])
        r.hold(peer, unseen)
        peer.state_before[unseen[0]] = list(other_before.values())
        on_unseen = r.make(peer, r.trent, "m.room.message", {**text, "body": "on the unseen"}, [unseen[0]])
        assert (await r.send(peer, server, on_unseen[1]))[on_unseen[0]].get("error")
        assert peer.state_ids_requests == [unseen[0]]
        assert await room_state(alice, r.room_id) == before
        assert await room_state(alice, other.room_id) == other_before
        # The room still takes the next PDU on its own graph.
        fine = r.make(peer, r.mallory, "m.room.message", {**text, "body": "fine"}, [r.latest])
        assert await r.send(peer, server, fine[1]) == {fine[0]: {}}
        assert await room_state(alice, r.room_id) == before
