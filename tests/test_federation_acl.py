"""Federation request hygiene against a hand-built peer: server ACLs on every endpoint about a
room and on /send, and the numeric parameters of /backfill and get_missing_events."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable

import aiohttp
import pytest

from bench.servers import PostgresAdmin, RunningServer, free_port, start_whispr
from federation.client import FederationClient, FederationError
from homeserver.config import FederationConfig
from homeserver.events.crypto import compute_event_id, sign_event
from homeserver.events.room_versions import ROOM_V10
from tests.conftest import POSTGRES_URL, need
from tests.test_federation_forged import Peer
from tests.test_federation_whispr import Client, federation_config

F1, F2 = "/_matrix/federation/v1", "/_matrix/federation/v2"


class NamedPeer(Peer):
    """A Peer under a DNS name (`localhost:PORT`), so an ACL can name it without naming us."""

    def __init__(self, tmp: Path, host: str) -> None:
        super().__init__(tmp)
        self.name = f"{host}:{self.port}"
        self.client = FederationClient(self.name, self.key, FederationConfig(
            verify_tls=False, allowed_private_ranges=["127.0.0.0/8", "::1/128"]))


@pytest.fixture(params=["sqlite", "postgres"])
async def setup(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[tuple[RunningServer, NamedPeer]]:
    engine = request.param
    if engine == "postgres":
        need(POSTGRES_URL, "postgres")
    peer = NamedPeer(tmp_path, "localhost")
    await peer.start()
    try:
        server = await asyncio.to_thread(
            start_whispr, server_name=f"127.0.0.1:{free_port()}", db=engine,
            pg=PostgresAdmin(POSTGRES_URL) if engine == "postgres" else None, extra_config=federation_config())
    except BaseException:
        await peer.close()
        raise
    try:
        yield server, peer
    finally:
        await asyncio.to_thread(server.stop)
        await peer.close()


async def membership_event(peer: Peer, server: RunningServer, kind: str, room: str,
                           user: str) -> tuple[dict[str, Any], str]:
    """A membership event of the peer's user built from make_join / make_leave, signed by the peer."""
    template = await peer.client.get_json(server.server_name, f"{F1}/make_{kind}/{room}/{user}",
                                          {"ver": ["10"]} if kind == "join" else None)
    pdu = {k: v for k, v in template["event"].items() if k != "origin"}
    pdu["origin_server_ts"] = int(time.time() * 1000)
    pdu = sign_event(pdu, peer.name, peer.key, ROOM_V10)
    return pdu, compute_event_id(pdu, ROOM_V10)


async def join(peer: Peer, server: RunningServer, room: str, user: str) -> str:
    pdu, event_id = await membership_event(peer, server, "join", room, user)
    await peer.client.put_json(server.server_name, f"{F2}/send_join/{room}/{event_id}", pdu)
    return event_id


async def refused(call: Awaitable[Any], status: int = 403, errcode: str = "M_FORBIDDEN") -> FederationError:
    with pytest.raises(FederationError) as err:
        await call
    assert (err.value.status, err.value.errcode) == (status, errcode), err.value
    return err.value


async def transaction(peer: Peer, server: RunningServer, txn: str, pdus: list[dict[str, Any]],
                      edus: list[dict[str, Any]]) -> dict[str, Any]:
    return await peer.client.put_json(server.server_name, f"{F1}/send/{txn}", {
        "origin": peer.name, "origin_server_ts": int(time.time() * 1000), "pdus": pdus, "edus": edus})


def ephemeral(body: dict[str, Any], room: str) -> list[dict[str, Any]]:
    return body["rooms"]["join"].get(room, {}).get("ephemeral", {}).get("events", [])


def shows_typing(user: str, room: str) -> Any:
    return lambda body: any(e["type"] == "m.typing" and user in e["content"]["user_ids"]
                            for e in ephemeral(body, room))


def shows_receipt(user: str, room: str) -> Any:
    return lambda body: any(e["type"] == "m.receipt" and any(user in r.get("m.read", {}) for r in e["content"].values())
                            for e in ephemeral(body, room))


async def test_server_acl_is_enforced(setup: tuple[RunningServer, NamedPeer]) -> None:
    server, peer = setup
    mallory, eve = f"@mallory:{peer.name}", f"@eve:{peer.name}"
    async with aiohttp.ClientSession() as session:
        alice = await Client.register(session, server, "alice")
        bob = await Client.register(session, server, "bob")
        room = (await alice.call("POST", "/createRoom",
                                 json={"preset": "public_chat", "room_version": "10"}))["room_id"]
        mallory_join = await join(peer, server, room, mallory)
        message = await alice.send(room, "hello")
        state = {(e["type"], e["state_key"]): e["event_id"] for e in await alice.call("GET", f"/rooms/{room}/state")}
        auth = [state[("m.room.create", "")], state[("m.room.power_levels", "")], mallory_join]
        depth = (await peer.client.get_json(server.server_name, f"{F1}/event/{message}"))["pdus"][0]["depth"]
        # Made while the peer was still welcome, sent once it is not.
        eve_join, eve_join_id = await membership_event(peer, server, "join", room, eve)
        leave, leave_id = await membership_event(peer, server, "leave", room, mallory)
        invite = peer.event(room, mallory, "m.room.member", {"membership": "invite"}, [message], auth, depth + 1,
                            state_key=bob.user_id)
        invite_id = compute_event_id(invite, ROOM_V10)
        await alice.sync_until(lambda _: True)

        # Case and port do not matter: "LOCALHOST" denies localhost:PORT. This server keeps its place.
        await alice.call("PUT", f"/rooms/{room}/state/m.room.server_acl",
                         json={"allow": ["*"], "deny": ["LOCALHOST", "*.evil.example"]})
        name = server.server_name
        await refused(peer.client.get_json(name, f"{F1}/make_join/{room}/{eve}", {"ver": ["10"]}))
        await refused(peer.client.put_json(name, f"{F2}/send_join/{room}/{eve_join_id}", eve_join))
        await refused(peer.client.put_json(name, f"{F1}/send_join/{room}/{eve_join_id}", eve_join))
        await refused(peer.client.get_json(name, f"{F1}/make_leave/{room}/{mallory}"))
        await refused(peer.client.put_json(name, f"{F2}/send_leave/{room}/{leave_id}", leave))
        await refused(peer.client.put_json(name, f"{F1}/send_leave/{room}/{leave_id}", leave))
        await refused(peer.client.put_json(name, f"{F2}/invite/{room}/{invite_id}",
                                           {"event": invite, "room_version": "10", "invite_room_state": []}))
        await refused(peer.client.put_json(name, f"{F1}/invite/{room}/{invite_id}", invite))
        await refused(peer.client.get_json(name, f"{F1}/state/{room}", {"event_id": message}))
        await refused(peer.client.get_json(name, f"{F1}/state_ids/{room}", {"event_id": message}))
        await refused(peer.client.get_json(name, f"{F1}/backfill/{room}", {"v": [message], "limit": "10"}))
        await refused(peer.client.get_json(name, f"{F1}/event_auth/{room}/{message}"))
        await refused(peer.client.get_json(name, f"{F1}/event/{message}"))
        await refused(peer.client.post_json(name, f"{F1}/get_missing_events/{room}",
                                            {"earliest_events": [], "latest_events": [message], "limit": 10}))
        bob_sync = await bob.call("GET", "/sync", params={"timeout": "0"})
        assert room not in bob_sync["rooms"].get("invite", {})  # the invite was never taken

        # /send: the PDU is refused with an error for its event ID, the room's EDUs are ignored.
        denied = peer.event(room, mallory, "m.room.message", {"msgtype": "m.text", "body": "denied"}, [message],
                            auth, depth + 1)
        denied_id = compute_event_id(denied, ROOM_V10)
        edus = [{"edu_type": "m.typing", "content": {"room_id": room, "user_id": mallory, "typing": True}},
                {"edu_type": "m.receipt", "content": {room: {"m.read": {mallory: {"event_ids": [message],
                                                                                  "data": {"ts": 1}}}}}}]
        result = await transaction(peer, server, "denied", [denied], edus)
        assert "server ACL" in result["pdus"][denied_id]["error"]
        await alice.call("GET", f"/rooms/{room}/event/{denied_id}", expect=404)
        body = await alice.call("GET", "/sync", params={"since": alice.since, "timeout": "1000"})
        alice.since = body["next_batch"]
        assert not shows_typing(mallory, room)(body) and not shows_receipt(mallory, room)(body)

        # An ACL that allows the peer: everything works again.
        await alice.call("PUT", f"/rooms/{room}/state/m.room.server_acl",
                         json={"allow": ["*"], "deny": ["*.evil.example"], "allow_ip_literals": False})
        await peer.client.get_json(name, f"{F1}/make_join/{room}/{eve}", {"ver": ["10"]})
        await peer.client.get_json(name, f"{F1}/make_leave/{room}/{mallory}")
        assert (await peer.client.get_json(name, f"{F1}/state_ids/{room}", {"event_id": message}))["pdu_ids"]
        assert (await peer.client.get_json(name, f"{F1}/state/{room}", {"event_id": message}))["pdus"]
        assert (await peer.client.get_json(name, f"{F1}/backfill/{room}", {"v": [message], "limit": "10"}))["pdus"]
        assert (await peer.client.get_json(name, f"{F1}/event_auth/{room}/{message}"))["auth_chain"]
        assert (await peer.client.get_json(name, f"{F1}/event/{message}"))["pdus"][0]["type"] == "m.room.message"
        await peer.client.post_json(name, f"{F1}/get_missing_events/{room}",
                                    {"earliest_events": [], "latest_events": [message], "limit": 10})
        result = await transaction(peer, server, "allowed", [denied], edus[:1])
        assert result["pdus"][denied_id] == {}
        assert (await alice.call("GET", f"/rooms/{room}/event/{denied_id}"))["content"]["body"] == "denied"
        await alice.sync_until(shows_typing(mallory, room))
        await transaction(peer, server, "receipt", [], edus[1:])
        await alice.sync_until(shows_receipt(mallory, room))
        resp = await peer.client.put_json(name, f"{F2}/send_join/{room}/{eve_join_id}", eve_join)
        assert resp["event"]["state_key"] == eve


async def test_federation_numeric_parameters(setup: tuple[RunningServer, NamedPeer]) -> None:
    server, peer = setup
    name = server.server_name
    async with aiohttp.ClientSession() as session:
        alice = await Client.register(session, server, "alice")
        room = (await alice.call("POST", "/createRoom",
                                 json={"preset": "public_chat", "room_version": "10"}))["room_id"]
        await join(peer, server, room, f"@mallory:{peer.name}")
        last = ""
        for i in range(110):
            last = await alice.send(room, f"m{i}")

        async def backfill(**query: Any) -> list[dict[str, Any]]:
            return (await peer.client.get_json(name, f"{F1}/backfill/{room}", query))["pdus"]

        assert len(await backfill(v=[last], limit="5")) == 5
        for huge in ("1000", str(10**30), "9" * 2000):
            assert len(await backfill(v=[last], limit=huge)) == 100  # MAX_BACKFILL_LIMIT
        for bad in ("-1", "0", "abc", "1_0", " 5", "5.0", "", "+5", "0x10"):
            await refused(backfill(v=[last], limit=bad), 400, "M_INVALID_PARAM")
        await refused(backfill(v=[last]), 400, "M_MISSING_PARAM")
        await refused(backfill(limit="5"), 400, "M_MISSING_PARAM")
        await refused(backfill(v=[last] * 101, limit="5"), 400, "M_INVALID_PARAM")

        async def missing(**body: Any) -> list[dict[str, Any]]:
            body = {"earliest_events": [], "latest_events": [last], **body}
            return (await peer.client.post_json(name, f"{F1}/get_missing_events/{room}", body))["events"]

        assert len(await missing()) == 10  # the default limit
        assert len(await missing(limit=3)) == 3
        assert len(await missing(limit=10**30)) == 100  # MAX_MISSING_EVENTS_LIMIT
        depth = (await peer.client.get_json(name, f"{F1}/event/{last}"))["pdus"][0]["depth"]
        shallow = await missing(limit=50, min_depth=depth - 3)
        assert sorted(e["depth"] for e in shallow) == [depth - 3, depth - 2, depth - 1]
        assert await missing(min_depth=2**62) == []
        assert len(await missing(min_depth=10**30)) == 0
        for bad in ({"limit": "5"}, {"limit": -1}, {"limit": 0}, {"limit": True}, {"limit": 2.5},
                    {"min_depth": "1"}, {"min_depth": -1}, {"min_depth": None}):
            await refused(missing(**bad), 400, "M_INVALID_PARAM")
        for bad in ({"earliest_events": 5}, {"earliest_events": [[1]]}, {"latest_events": "abc"},
                    {"latest_events": [last] * 21}, {"earliest_events": None}):
            await refused(missing(**bad), 400, "M_BAD_JSON")
