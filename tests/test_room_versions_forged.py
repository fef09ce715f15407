"""Hostile input in old room versions, from a hand-built signed peer: v1/v2 event IDs and references,
the v1/v2 redaction auth rule, lenient JSON before v6, v5's signing-key validity, state resolution of a
fork, and the knock and restricted-join endpoints."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
from aiohttp import web

from bench.servers import RunningServer, free_port, start_whispr
from federation.client import FederationError
from homeserver.events.crypto import compute_event_id, event_reference, sign_event
from homeserver.events.room_versions import (
    KNOWN_ROOM_VERSIONS, ROOM_V1, ROOM_V2, ROOM_V4, ROOM_V5, ROOM_V6, ROOM_V9, RoomVersion,
)
from tests.test_federation_forged import Peer, setup  # noqa: F401
from tests.test_federation_whispr import Client, federation_config

HOUR_MS = 3_600_000
KNOWN = {int(k): v for k, v in KNOWN_ROOM_VERSIONS.items()}


def q(event_id: str) -> str:
    return quote(event_id, safe="")


class OldRoom:
    """The peer's view of a room on the server under test, enough to build its own events."""

    def __init__(self, peer: Peer, server: RunningServer, alice: Client, room: str, version: RoomVersion) -> None:
        self.peer, self.server, self.alice, self.room, self.version = peer, server, alice, room, version
        self.mallory = f"@mallory:{peer.name}"
        self.pdus: dict[str, dict[str, Any]] = {}
        self.head = ""
        self.depth = 0
        self.auth: list[str] = []
        self._n = 0

    async def join(self) -> None:
        template = await self.peer.client.get_json(
            self.server.server_name, f"/_matrix/federation/v1/make_join/{q(self.room)}/{q(self.mallory)}",
            {"ver": [self.version.identifier]})
        assert "event_id" not in template["event"]  # the joining server names a v1/v2 event
        pdu = {k: v for k, v in template["event"].items() if k != "origin"}
        pdu["origin_server_ts"] = int(time.time() * 1000)
        self._name(pdu)
        pdu = sign_event(pdu, self.peer.name, self.peer.key, self.version)
        join_id = compute_event_id(pdu, self.version)
        resp = await self.peer.client.put_json(
            self.server.server_name, f"/_matrix/federation/v2/send_join/{q(self.room)}/{q(join_id)}", pdu)
        for state_pdu in resp["state"] + resp["auth_chain"]:
            self.pdus[compute_event_id(state_pdu, self.version)] = state_pdu
        self.pdus[join_id] = pdu
        by_key = {(p["type"], p.get("state_key")): i for i, p in self.pdus.items() if "state_key" in p}
        self.auth = [by_key[("m.room.create", "")], by_key[("m.room.power_levels", "")], join_id]
        self.head, self.depth = join_id, pdu["depth"]

    def _name(self, pdu: dict[str, Any], domain: str | None = None) -> str:
        if self.version.event_id_in_pdu:
            self._n += 1
            pdu["event_id"] = f"$m{self._n}x{int(time.time() * 1000)}:{domain or self.peer.name}"
            return str(pdu["event_id"])
        return ""

    async def fetch(self, event_id: str) -> None:
        """Learn an event of the room from the server (as its PDU, for references and depth)."""
        body = await self.peer.client.get_json(self.server.server_name, f"/_matrix/federation/v1/event/{q(event_id)}")
        self.pdus[event_id] = body["pdus"][0]
        self.depth = max(self.depth, body["pdus"][0]["depth"])

    def refs(self, ids: list[str]) -> list[Any]:
        return [event_reference(i, self.pdus[i], self.version) for i in ids]

    def event(self, etype: str, content: dict[str, Any], *, ts: int | None = None, id_domain: str | None = None,
              extra: dict[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
        pdu: dict[str, Any] = {"room_id": self.room, "sender": self.mallory, "type": etype, "content": content,
                               "prev_events": self.refs([self.head]), "auth_events": self.refs(self.auth),
                               "depth": self.depth + 1, "origin_server_ts": ts or int(time.time() * 1000),
                               **(extra or {})}
        self._name(pdu, id_domain)
        pdu = sign_event(pdu, self.peer.name, self.peer.key, self.version)
        return compute_event_id(pdu, self.version), pdu

    async def send(self, pdu: dict[str, Any], event_id: str) -> str | None:
        """Send one PDU; its error, or None when accepted (then it is the new head)."""
        self._n += 1
        result = await self.peer.send(self.server.server_name, [pdu], f"t{self._n}{time.time()}")
        error = result["pdus"].get(event_id, {}).get("error")
        if error is None:
            self.pdus[event_id] = pdu
            self.head, self.depth = event_id, pdu["depth"]
        return error


async def old_room(server: RunningServer, peer: Peer, session: aiohttp.ClientSession, version: RoomVersion,
                   name: str) -> OldRoom:
    alice = await Client.register(session, server, name)
    room = (await alice.call("POST", "/createRoom", json={"preset": "public_chat",
                                                          "room_version": version.identifier}))["room_id"]
    joined = OldRoom(peer, server, alice, room, version)
    await joined.join()
    return joined


def message(body: str) -> dict[str, Any]:
    return {"msgtype": "m.text", "body": body}


async def test_v1_event_ids_references_and_redactions(setup: tuple[RunningServer, Peer]) -> None:
    server, peer = setup
    async with aiohttp.ClientSession() as session:
        r = await old_room(server, peer, session, ROOM_V1, "alice")
        alice = r.alice
        ok_id, ok = r.event("m.room.message", message("hello"))
        assert await r.send(ok, ok_id) is None
        assert (await alice.call("GET", f"/rooms/{q(r.room)}/event/{q(ok_id)}"))["content"]["body"] == "hello"

        # An event named by another server (here: the server under test) must carry its signature too.
        fake_id, fake = r.event("m.room.message", message("named by you"), id_domain=server.server_name)
        assert "signature" in (await r.send(fake, fake_id) or "")
        await alice.call("GET", f"/rooms/{q(r.room)}/event/{q(fake_id)}", expect=404)

        # v1 references are pairs; plain IDs, or a PDU without its event_id, are dropped.
        plain_id, plain = r.event("m.room.message", message("plain"))
        plain["prev_events"] = [r.head]
        assert "pairs" in (await r.send(plain, plain_id) or "")
        nameless_id, nameless = r.event("m.room.message", message("nameless"))
        del nameless["event_id"]
        result = await r.peer.send(server.server_name, [nameless], "nameless")
        assert all(v.get("error") for v in result["pdus"].values())
        await alice.call("GET", f"/rooms/{q(r.room)}/event/{q(nameless_id)}", expect=404)

        # The v1 auth rules judge redactions: Mallory (power 0) may redact an event her server named...
        mine_id, mine = r.event("m.room.message", message("mine"))
        assert await r.send(mine, mine_id) is None
        red_id, red = r.event("m.room.redaction", {}, extra={"redacts": mine_id})
        assert await r.send(red, red_id) is None
        assert (await alice.call("GET", f"/rooms/{q(r.room)}/event/{q(mine_id)}"))["content"] == {}
        # ...but not Alice's, which the server under test named: rejected, and Alice's message stays.
        alices = await alice.send(r.room, "alice's")
        r.pdus[alices] = {}  # only its ID is needed for a reference
        r.head = alices
        r.depth += 1
        bad_id, bad = r.event("m.room.redaction", {}, extra={"redacts": alices})
        bad["prev_events"] = [[alices, {"sha256": "AAAA"}]]
        bad = sign_event(bad, peer.name, peer.key, ROOM_V1)
        assert "rejected" in (await r.send(bad, bad_id) or "")
        assert (await alice.call("GET", f"/rooms/{q(r.room)}/event/{q(alices)}"))["content"]["body"] == "alice's"
        await alice.call("GET", f"/rooms/{q(r.room)}/event/{q(bad_id)}", expect=404)


async def test_lenient_json_before_v6_strict_from_v6(setup: tuple[RunningServer, Peer]) -> None:
    server, peer = setup
    async with aiohttp.ClientSession() as session:
        for version, accepted in ((ROOM_V5, True), (ROOM_V6, False)):
            r = await old_room(server, peer, session, version, f"alice{version.identifier}")
            event_id, pdu = r.event("m.room.message", {**message("float"), "rating": 4.5, "big": 2**60})
            error = await r.send(pdu, event_id)
            if accepted:
                assert error is None
                seen = await r.alice.call("GET", f"/rooms/{q(r.room)}/event/{q(event_id)}")
                assert seen["content"]["rating"] == 4.5 and seen["content"]["big"] == 2**60
            else:
                assert "canonical JSON" in (error or "")
                await r.alice.call("GET", f"/rooms/{q(r.room)}/event/{q(event_id)}", expect=404)


async def test_signing_key_validity_from_v5(setup: tuple[RunningServer, Peer]) -> None:
    """The peer's key document is valid for an hour: an event stamped two hours ahead is signed with
    a key not valid at its origin_server_ts, which v5 refuses and v4 does not check."""
    server, peer = setup
    async with aiohttp.ClientSession() as session:
        for version, accepted in ((ROOM_V4, True), (ROOM_V5, False)):
            r = await old_room(server, peer, session, version, f"alice{version.identifier}")
            event_id, pdu = r.event("m.room.message", message("from the future"),
                                    ts=int(time.time() * 1000) + 2 * HOUR_MS)
            error = await r.send(pdu, event_id)
            assert (error is None) == accepted, error
            expect = 200 if accepted else 404
            await r.alice.call("GET", f"/rooms/{q(r.room)}/event/{q(event_id)}", expect=expect)


async def test_forked_topic_resolved_by_the_room_versions_algorithm(setup: tuple[RunningServer, Peer]) -> None:
    """While Alice sets the topic, the peer sends a branch from before it: three messages and its own
    topic change, deeper in the graph. State resolution v1 (room version 1) keeps the deepest topic,
    the peer's, whenever it was made; v2 (room versions 2+) orders the two by time: the later stays."""
    server, peer = setup
    minute = 60_000
    cases = [(ROOM_V1, -HOUR_MS, "peer's"), (ROOM_V1, minute, "peer's"), (ROOM_V2, -HOUR_MS, "alice's"),
             (ROOM_V6, -HOUR_MS, "alice's"), (ROOM_V6, minute, "peer's")]
    async with aiohttp.ClientSession() as session:
        for n, (version, offset, expected) in enumerate(cases):
            r = await old_room(server, peer, session, version, f"alice{n}")
            levels = await r.alice.call("GET", f"/rooms/{q(r.room)}/state/m.room.power_levels")
            levels["users"][r.mallory] = 50  # Mallory may set the topic; the fork starts after this
            levels_id = (await r.alice.call("PUT", f"/rooms/{q(r.room)}/state/m.room.power_levels",
                                            json=levels))["event_id"]
            await r.fetch(levels_id)
            r.auth[1], r.head = levels_id, levels_id
            await r.alice.call("PUT", f"/rooms/{q(r.room)}/state/m.room.topic", json={"topic": "alice's"})
            stamp = int(time.time() * 1000) + offset
            for i in range(3):  # built on the power levels, not on Alice's topic: a fork
                event_id, pdu = r.event("m.room.message", message(f"m{i}"), ts=stamp + i)
                assert await r.send(pdu, event_id) is None
            event_id, pdu = r.event("m.room.topic", {"topic": "peer's"}, ts=stamp + 10, extra={"state_key": ""})
            assert await r.send(pdu, event_id) is None
            topic = await r.alice.call("GET", f"/rooms/{q(r.room)}/state/m.room.topic")
            assert topic["topic"] == expected, (version.identifier, offset)


async def test_restricted_join_is_vouched_for_only_when_the_user_qualifies(setup: tuple[RunningServer, Peer]) -> None:
    """make_join refuses a user in none of the allowed rooms; a join the peer builds itself naming one
    of our users as authoriser is refused by send_join too, not signed and not stored."""
    server, peer = setup
    async with aiohttp.ClientSession() as session:
        alice = await Client.register(session, server, "alice")
        space = (await alice.call("POST", "/createRoom", json={"preset": "public_chat", "room_version": "9"}))[
            "room_id"]
        room = (await alice.call("POST", "/createRoom", json={"room_version": "9", "initial_state": [{
            "type": "m.room.join_rules", "content": {
                "join_rule": "restricted", "allow": [{"type": "m.room_membership", "room_id": space}]}}]}))[
            "room_id"]
        mallory = f"@mallory:{peer.name}"
        with pytest.raises(FederationError) as refused:
            await peer.client.get_json(server.server_name,
                                       f"/_matrix/federation/v1/make_join/{q(room)}/{q(mallory)}", {"ver": ["9"]})
        assert refused.value.status == 403
        state = {(e["type"], e["state_key"]): e["event_id"] for e in await alice.call("GET", f"/rooms/{q(room)}/state")}
        latest = (await alice.call("GET", f"/rooms/{q(room)}/messages", params={"dir": "b", "limit": "1"}))[
            "chunk"][0]["event_id"]
        join = sign_event({
            "room_id": room, "sender": mallory, "type": "m.room.member", "state_key": mallory,
            "content": {"membership": "join", "join_authorised_via_users_server": alice.user_id},
            "prev_events": [latest], "depth": 20, "origin_server_ts": int(time.time() * 1000),
            "auth_events": [state[("m.room.create", "")], state[("m.room.power_levels", "")],
                            state[("m.room.join_rules", "")], state[("m.room.member", alice.user_id)]],
        }, peer.name, peer.key, ROOM_V9)
        join_id = compute_event_id(join, ROOM_V9)
        with pytest.raises(FederationError) as refused:
            await peer.client.put_json(server.server_name, f"/_matrix/federation/v2/send_join/{q(room)}/{q(join_id)}",
                                       join)
        assert refused.value.status == 403
        await alice.call("GET", f"/rooms/{q(room)}/event/{q(join_id)}", expect=404)
        members = (await alice.call("GET", f"/rooms/{q(room)}/joined_members"))["joined"]
        assert mallory not in members


async def test_knock_endpoints_refuse_what_is_not_a_knock(setup: tuple[RunningServer, Peer]) -> None:
    server, peer = setup
    async with aiohttp.ClientSession() as session:
        alice = await Client.register(session, server, "alice")
        knock_room = (await alice.call("POST", "/createRoom", json={"room_version": "7", "initial_state": [
            {"type": "m.room.join_rules", "content": {"join_rule": "knock"}}]}))["room_id"]
        public = (await alice.call("POST", "/createRoom", json={"preset": "public_chat", "room_version": "7"}))[
            "room_id"]
        old = (await alice.call("POST", "/createRoom", json={"room_version": "6", "initial_state": [
            {"type": "m.room.join_rules", "content": {"join_rule": "knock"}}]}))["room_id"]
        mallory = f"@mallory:{peer.name}"
        path = "/_matrix/federation/v1/make_knock"

        async def make_knock(room: str, user: str, ver: list[str]) -> int:
            try:
                await peer.client.get_json(server.server_name, f"{path}/{q(room)}/{q(user)}", {"ver": ver})
            except FederationError as e:
                return e.status
            return 200

        assert await make_knock(public, mallory, ["7"]) == 403            # not a knock room
        assert await make_knock(knock_room, alice.user_id, ["7"]) == 403  # not the peer's user
        assert await make_knock(knock_room, mallory, ["6"]) == 400        # version not supported by the peer
        assert await make_knock(old, mallory, ["6", "7"]) == 403          # v6 has no knocking
        template = await peer.client.get_json(server.server_name, f"{path}/{q(knock_room)}/{q(mallory)}",
                                              {"ver": ["7"]})
        assert template["room_version"] == "7" and template["event"]["content"]["membership"] == "knock"
        # A join sent to send_knock is refused, and nothing is stored.
        join = {k: v for k, v in template["event"].items() if k != "origin"}
        join["content"] = {"membership": "join"}
        join = sign_event(join, peer.name, peer.key, KNOWN[7])
        join_id = compute_event_id(join, KNOWN[7])
        with pytest.raises(FederationError) as refused:
            await peer.client.put_json(server.server_name,
                                       f"/_matrix/federation/v1/send_knock/{q(knock_room)}/{q(join_id)}", join)
        assert refused.value.status == 400
        await alice.call("GET", f"/rooms/{q(knock_room)}/event/{q(join_id)}", expect=404)
        # The knock itself goes in, and the answer previews the room.
        knock = {k: v for k, v in template["event"].items() if k != "origin"}
        knock = sign_event(knock, peer.name, peer.key, KNOWN[7])
        knock_id = compute_event_id(knock, KNOWN[7])
        answer = await peer.client.put_json(
            server.server_name, f"/_matrix/federation/v1/send_knock/{q(knock_room)}/{q(knock_id)}", knock)
        assert any(e["type"] == "m.room.join_rules" for e in answer["knock_room_state"])
        member = await alice.call("GET", f"/rooms/{q(knock_room)}/state/m.room.member/{q(mallory)}")
        assert member["membership"] == "knock"


class AlteringPeer(Peer):
    """A peer whose server, asked to co-sign an invite of its user, returns another event of the same
    v1 event ID: its content changed, signed by it."""

    def routes(self, app: web.Application) -> None:
        app.router.add_put("/_matrix/federation/v2/invite/{room}/{event}", self._invite)

    async def _invite(self, request: web.Request) -> web.Response:
        body = await request.json()
        event = dict(body["event"])
        event["content"] = {**event["content"], "displayname": "swapped"}
        return web.json_response({"event": sign_event(event, self.name, self.key, ROOM_V1)})


async def test_a_co_signed_invite_must_be_the_event_we_sent(tmp_path: Path) -> None:
    peer = AlteringPeer(tmp_path)
    await peer.start()
    server = await asyncio.to_thread(start_whispr, server_name=f"127.0.0.1:{free_port()}",
                                     extra_config=federation_config())
    try:
        async with aiohttp.ClientSession() as session:
            alice = await Client.register(session, server, "alice")
            room = (await alice.call("POST", "/createRoom", json={"room_version": "1"}))["room_id"]
            victim = f"@victim:{peer.name}"
            await alice.call("POST", f"/rooms/{q(room)}/invite", json={"user_id": victim}, expect=502)
            state = await alice.call("GET", f"/rooms/{q(room)}/state")
            assert not any(e["type"] == "m.room.member" and e["state_key"] == victim for e in state)
    finally:
        await asyncio.to_thread(server.stop)
        await peer.close()


async def test_a_withdrawn_invite_is_taken_only_from_its_inviter_against_it(setup: tuple[RunningServer, Peer]) -> None:
    """For a room this server is not in, the only PDU taken is the end of a local user's pending
    invite: from the inviter, naming the invite in its auth events."""
    server, peer = setup
    version = KNOWN[10]
    async with aiohttp.ClientSession() as session:
        alice = await Client.register(session, server, "alice")
        room, inviter, other = f"!elsewhere:{peer.name}", f"@pat:{peer.name}", f"@other:{peer.name}"
        base = {"room_id": room, "type": "m.room.member", "state_key": alice.user_id, "depth": 5,
                "prev_events": ["$p"], "origin_server_ts": int(time.time() * 1000)}
        invite = sign_event({**base, "sender": inviter, "content": {"membership": "invite"},
                             "auth_events": ["$c", "$pl", "$m"]}, peer.name, peer.key, version)
        invite_id = compute_event_id(invite, version)
        await peer.client.put_json(server.server_name, f"/_matrix/federation/v2/invite/{q(room)}/{q(invite_id)}",
                                   {"event": invite, "room_version": "10", "invite_room_state": []})
        await alice.sync_until(lambda body: room in body.get("rooms", {}).get("invite", {}))

        def leave(sender: str, auth: list[str], n: int) -> tuple[str, dict[str, Any]]:
            pdu = sign_event({**base, "sender": sender, "content": {"membership": "leave", "n": n},
                              "auth_events": auth}, peer.name, peer.key, version)
            return compute_event_id(pdu, version), pdu

        for n, (sender, auth, taken) in enumerate([(other, ["$c", invite_id], False),   # not the inviter
                                                   (inviter, ["$c", "$pl"], False),     # not made against it
                                                   (inviter, ["$c", invite_id], True)]):
            event_id, pdu = leave(sender, auth, n)
            result = await peer.send(server.server_name, [pdu], f"w{n}")
            assert (result["pdus"][event_id] == {}) == taken, (n, result)
        await alice.sync_until(lambda body: room in body.get("rooms", {}).get("leave", {}))
