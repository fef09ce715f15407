"""Presence: PUT/GET /presence, /sync's presence section and set_presence, idle and offline timeouts,
persistence, several workers, and presence between servers (Whispr, a forged peer, Synapse)."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any, Awaitable, Callable

from pathlib import Path

import aiohttp
import nio
import pytest
from aiohttp import web

from bench.servers import RunningServer, free_port, start_whispr
from tests.rooms_helpers import User
from tests.test_federation_forged import Peer
from tests.test_federation_whispr import Client, federation_config, membership_in_timeline, pair, users_on_both
from tests.test_friends_synapse import nio_sync_until, nio_user
from tests.test_synapse_interop import peers, synapse_interpreter
from tests.test_sync import read_sse

__all__ = ["pair", "peers", "synapse_interpreter"]

NOBODY_ONLINE = {"set_presence": "offline"}  # syncs that leave the syncing user's presence alone


def presence_of(body: dict[str, Any], user_id: str) -> dict[str, Any] | None:
    """The last m.presence content of the user in a sync response."""
    found = [e for e in body["presence"]["events"] if e["sender"] == user_id]
    for e in found:
        assert e["type"] == "m.presence"
    return found[-1]["content"] if found else None


async def status(user: User, of: str, expect: int = 200) -> Any:
    return await user.call("GET", f"/presence/{of}/status", expect=expect)


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            pytest.fail("condition not met in time")
        await asyncio.sleep(0.1)


async def test_set_and_get_status(client: Any) -> None:
    alice, bob, carol = (await User.new(client, "alice"), await User.new(client, "bob"),
                         await User.new(client, "carol"))
    assert await status(alice, alice.user_id) == {"presence": "offline"}
    room = await alice.create_room(preset="public_chat")  # sending events is activity
    assert (await status(alice, alice.user_id))["presence"] == "online"
    await bob.call("POST", f"/join/{room}")
    await alice.call("PUT", f"/presence/{alice.user_id}/status", json={"presence": "online", "status_msg": "here"})
    mine = await status(alice, alice.user_id)
    assert mine["presence"] == "online" and mine["status_msg"] == "here" and mine["currently_active"] is True
    assert 0 <= mine["last_active_ago"] < 10_000
    seen = await status(bob, alice.user_id)  # shares a room
    assert seen["presence"] == "online" and seen["status_msg"] == "here"
    # a stranger may not look; nobody sets someone else's
    assert (await status(carol, alice.user_id, 403))["errcode"] == "M_FORBIDDEN"
    body = await bob.call("PUT", f"/presence/{alice.user_id}/status", expect=403, json={"presence": "offline"})
    assert body["errcode"] == "M_FORBIDDEN"
    assert (await status(alice, alice.user_id))["presence"] == "online"
    # unknown users, bad IDs, bad states
    assert (await status(alice, "@nobody:" + alice.user_id.split(":", 1)[1], 404))["errcode"] == "M_NOT_FOUND"
    assert (await status(alice, "not-a-user", 400))["errcode"] == "M_INVALID_PARAM"
    for bad in ({"presence": "busy"}, {}, {"presence": "online", "status_msg": 5}):
        resp = await alice.call("PUT", f"/presence/{alice.user_id}/status", expect=400, json=bad)
        assert resp["errcode"] == "M_INVALID_PARAM"
    # a PUT without status_msg clears it (as Synapse does)
    await alice.call("PUT", f"/presence/{alice.user_id}/status", json={"presence": "unavailable"})
    seen = await status(bob, alice.user_id)
    assert seen["presence"] == "unavailable" and seen["currently_active"] is False and "status_msg" not in seen


async def test_sync_initial_and_incremental(client: Any) -> None:
    alice, bob, carol = (await User.new(client, "alice"), await User.new(client, "bob"),
                         await User.new(client, "carol"))
    room = await alice.create_room(preset="public_chat")
    await bob.call("POST", f"/join/{room}")
    await alice.call("PUT", f"/presence/{alice.user_id}/status", json={"presence": "online", "status_msg": "hi"})
    first = await bob.sync(**NOBODY_ONLINE)
    seen = presence_of(first, alice.user_id)
    assert seen is not None and seen["presence"] == "online" and seen["status_msg"] == "hi"
    assert seen["currently_active"] is True and seen["last_active_ago"] >= 0
    assert presence_of(first, carol.user_id) is None  # shares no room with bob
    # nothing new: no presence, an empty answer
    again = await bob.sync(first["next_batch"], **NOBODY_ONLINE)
    assert again["presence"]["events"] == [] and again["next_batch"] == first["next_batch"]
    # a change wakes a waiting sync and comes alone; a stranger's change does not reach bob
    poll = asyncio.create_task(bob.sync(first["next_batch"], timeout=10_000, **NOBODY_ONLINE))
    await asyncio.sleep(0.2)
    await carol.call("PUT", f"/presence/{carol.user_id}/status", json={"presence": "online"})
    await asyncio.sleep(0.2)
    assert not poll.done()
    started = time.monotonic()
    await alice.call("PUT", f"/presence/{alice.user_id}/status", json={"presence": "unavailable", "status_msg": "afk"})
    woken = await poll
    assert time.monotonic() - started < 5
    assert [e["sender"] for e in woken["presence"]["events"]] == [alice.user_id]
    assert presence_of(woken, alice.user_id)["presence"] == "unavailable"
    assert presence_of(woken, alice.user_id)["status_msg"] == "afk"
    # the new token carries the presence position: the change is not repeated
    after = await bob.sync(woken["next_batch"], **NOBODY_ONLINE)
    assert after["presence"]["events"] == []
    # an older token sees it again
    assert presence_of(await bob.sync(first["next_batch"], **NOBODY_ONLINE), alice.user_id) is not None


async def test_sync_presence_filter(client: Any) -> None:
    alice, bob, dan = (await User.new(client, "alice"), await User.new(client, "bob"), await User.new(client, "dan"))
    room = await alice.create_room(preset="public_chat")
    await bob.call("POST", f"/join/{room}")
    await dan.call("POST", f"/join/{room}")
    start = await bob.sync(**NOBODY_ONLINE)
    for user in (alice, dan):
        await user.call("PUT", f"/presence/{user.user_id}/status", json={"presence": "online", "status_msg": "x"})

    async def senders(filt: dict[str, Any]) -> set[str]:
        body = await bob.sync(start["next_batch"], filter=json.dumps(filt), **NOBODY_ONLINE)
        return {e["sender"] for e in body["presence"]["events"]}

    assert await senders({}) == {alice.user_id, dan.user_id}
    assert await senders({"presence": {"not_senders": [alice.user_id]}}) == {dan.user_id}
    assert await senders({"presence": {"senders": [alice.user_id]}}) == {alice.user_id}
    assert await senders({"presence": {"types": ["m.other"]}}) == set()
    assert await senders({"presence": {"not_types": ["m.presence"]}}) == set()
    assert len(await senders({"presence": {"limit": 1}})) == 1
    # a stored filter too
    fid = (await bob.call("POST", f"/user/{bob.user_id}/filter", json={"presence": {"limit": 0}}))["filter_id"]
    body = await bob.sync(start["next_batch"], filter=fid, **NOBODY_ONLINE)
    assert body["presence"]["events"] == []


async def test_set_presence_parameter(client: Any) -> None:
    alice = await User.new(client, "alice")
    await alice.sync(set_presence="offline")
    assert (await status(alice, alice.user_id))["presence"] == "offline"
    body = await alice.sync()  # the default is online
    assert (await status(alice, alice.user_id))["presence"] == "online"
    # the user's own change shows in their own sync
    assert presence_of(await alice.sync(), alice.user_id)["presence"] == "online"
    await alice.sync(body["next_batch"], set_presence="unavailable")
    assert (await status(alice, alice.user_id))["presence"] == "unavailable"
    await alice.sync(body["next_batch"], set_presence="offline")  # offline: changes nothing
    assert (await status(alice, alice.user_id))["presence"] == "unavailable"
    bad = await alice.call("GET", "/sync", expect=400, params={"set_presence": "away"})
    assert bad["errcode"] == "M_INVALID_PARAM"


async def test_sending_makes_online_and_idle_makes_unavailable(serve: Any) -> None:
    client = await serve(presence={"idle_timeout_ms": 1500, "sync_timeout_ms": 60_000})
    alice, bob = await User.new(client, "alice"), await User.new(client, "bob")
    room = await alice.create_room(preset="public_chat")
    await bob.call("POST", f"/join/{room}")
    await alice.call("PUT", f"/presence/{alice.user_id}/status", json={"presence": "unavailable"})
    start = await bob.sync(**NOBODY_ONLINE)
    await alice.send(room, "back")  # activity
    seen = await status(bob, alice.user_id)
    assert seen["presence"] == "online" and seen["currently_active"] is True
    assert presence_of(await bob.sync(start["next_batch"], **NOBODY_ONLINE), alice.user_id)["presence"] == "online"
    mid = await bob.sync(**NOBODY_ONLINE)

    async def idle() -> bool:
        return (await status(bob, alice.user_id))["presence"] == "unavailable"
    await eventually(idle, 5)
    # the timeout is a change syncs report too
    later = await bob.sync(mid["next_batch"], **NOBODY_ONLINE)
    assert presence_of(later, alice.user_id)["presence"] == "unavailable"


async def test_offline_after_syncing_stops(serve: Any) -> None:
    client = await serve(presence={"idle_timeout_ms": 300_000, "sync_timeout_ms": 800})
    alice = await User.new(client, "alice")
    body = await alice.sync()
    assert (await status(alice, alice.user_id))["presence"] == "online"
    # a long-poll in flight keeps her online past the timeout
    poll = asyncio.create_task(alice.sync(body["next_batch"], timeout=2500))
    await asyncio.sleep(1.8)
    assert (await status(alice, alice.user_id))["presence"] == "online"
    await poll

    async def offline() -> bool:
        return (await status(alice, alice.user_id))["presence"] == "offline"
    await eventually(offline, 5)


async def test_sse_stream_delivers_presence(client: Any) -> None:
    alice, bob = await User.new(client, "alice"), await User.new(client, "bob")
    room = await alice.create_room(preset="public_chat")
    await bob.call("POST", f"/join/{room}")
    resp = await client.get("/_matrix/client/unstable/org.whispr/sync/stream",
                            params={"access_token": bob.token, "set_presence": "offline"})
    assert resp.status == 200
    await read_sse(resp, 1)
    await alice.call("PUT", f"/presence/{alice.user_id}/status", json={"presence": "online", "status_msg": "sse"})
    (_id, delta), = await read_sse(resp, 1)
    resp.close()
    assert presence_of(delta, alice.user_id)["status_msg"] == "sse"


async def test_status_kept_across_restart(serve: Any) -> None:
    first = await serve()
    alice = await User.new(first, "alice")
    await alice.call("PUT", f"/presence/{alice.user_id}/status", json={"presence": "online", "status_msg": "kept"})
    await first.close()
    second = await serve()
    again = User(second, {"user_id": alice.user_id, "access_token": alice.token})
    got = await status(again, alice.user_id)
    assert got["presence"] == "online" and got["status_msg"] == "kept"


@pytest.mark.parametrize("backend", ["postgres+redis"], indirect=True)  # several workers need both
async def test_two_workers_share_presence(serve: Any, backend: dict[str, Any]) -> None:
    a, b = await serve(), await serve()
    alice, bob = await User.new(a, "alice"), await User.new(a, "bob")
    bob_b = User(b, {"user_id": bob.user_id, "access_token": bob.token})
    room = await alice.create_room(preset="public_chat")
    await bob.call("POST", f"/join/{room}")
    start = await bob_b.sync(**NOBODY_ONLINE)
    poll = asyncio.create_task(bob_b.sync(start["next_batch"], timeout=10_000, **NOBODY_ONLINE))
    await asyncio.sleep(0.3)
    await alice.call("PUT", f"/presence/{alice.user_id}/status", json={"presence": "online", "status_msg": "on A"})
    woken = await poll
    assert presence_of(woken, alice.user_id)["status_msg"] == "on A"
    assert (await status(bob_b, alice.user_id))["status_msg"] == "on A"


async def test_presence_disabled(serve: Any) -> None:
    client = await serve(presence={"enabled": False})
    alice, bob = await User.new(client, "alice"), await User.new(client, "bob")
    room = await alice.create_room(preset="public_chat")
    await bob.call("POST", f"/join/{room}")
    start = await bob.sync()
    await alice.call("PUT", f"/presence/{alice.user_id}/status", json={"presence": "online", "status_msg": "x"})
    assert await status(bob, alice.user_id) == {"presence": "offline"}
    assert await status(alice, alice.user_id) == {"presence": "offline"}
    assert (await bob.sync(start["next_batch"]))["presence"]["events"] == []


# --- between servers --------------------------------------------------------------------------------

def presence_in(sender: str, check: Callable[[dict[str, Any]], bool]) -> Callable[[dict[str, Any]], bool]:
    """A sync_until check: a presence event of `sender` whose content passes `check`."""
    def found(body: dict[str, Any]) -> bool:
        return any(e["sender"] == sender and check(e["content"]) for e in body["presence"]["events"])
    return found


async def test_two_whispr_servers_exchange_presence(pair: tuple[RunningServer, RunningServer]) -> None:
    a, b = pair
    async with aiohttp.ClientSession() as session:
        alice, bob = await users_on_both(session, a, "alice", b, "bob")
        room = (await alice.call("POST", "/createRoom", json={"preset": "public_chat"}))["room_id"]
        # set before they share a room: the join brings both to the other side
        await alice.call("PUT", f"/presence/{alice.user_id}/status", json={"presence": "online", "status_msg": "a0"})
        await bob.call("PUT", f"/presence/{bob.user_id}/status", json={"presence": "online", "status_msg": "b0"})
        await asyncio.sleep(1)
        await bob.call("POST", f"/join/{room}", params={"server_name": a.server_name})
        await alice.sync_until(membership_in_timeline(room, bob.user_id, "join"))
        await alice.sync_until(presence_in(bob.user_id, lambda c: c.get("status_msg") == "b0"), timeout=20)
        await bob.sync_until(presence_in(alice.user_id, lambda c: c.get("status_msg") == "a0"), timeout=20)
        await alice.call("PUT", f"/presence/{alice.user_id}/status", json={"presence": "online", "status_msg": "A"})
        await bob.sync_until(presence_in(alice.user_id, lambda c: c.get("status_msg") == "A"))
        seen = await bob.call("GET", f"/presence/{alice.user_id}/status")
        assert seen["presence"] == "online" and seen["status_msg"] == "A" and seen["currently_active"] is True
        await bob.call("PUT", f"/presence/{bob.user_id}/status", json={"presence": "unavailable", "status_msg": "B"})
        await alice.sync_until(presence_in(bob.user_id, lambda c: c["presence"] == "unavailable"
                                           and c.get("status_msg") == "B"))
        assert (await alice.call("GET", f"/presence/{bob.user_id}/status"))["status_msg"] == "B"
        # a user of B in no room with A's users: A does not show them
        carol = await Client.register(session, b, "carol")
        await carol.call("GET", f"/presence/{alice.user_id}/status", expect=403)


class EduPeer(Peer):
    """A peer that keeps the EDUs it receives."""

    def __init__(self, tmp: Path) -> None:
        super().__init__(tmp)
        self.edus: list[dict[str, Any]] = []

    async def _send(self, request: web.Request) -> web.Response:
        self.edus += (await request.json()).get("edus", [])
        return web.json_response({"pdus": {}})

    def presence_pushes(self) -> list[dict[str, Any]]:
        return [item for e in self.edus if e.get("edu_type") == "m.presence" for item in e["content"]["push"]]

    async def send_presence(self, destination: str, push: list[dict[str, Any]], txn: str) -> None:
        await self.client.put_json(destination, f"/_matrix/federation/v1/send/{txn}", {
            "origin": self.name, "origin_server_ts": int(time.time() * 1000), "pdus": [],
            "edus": [{"edu_type": "m.presence", "content": {"push": push}}]})


async def test_presence_with_a_hand_built_peer_and_forged_edus(tmp_path: Path) -> None:
    peer = EduPeer(tmp_path)
    await peer.start()
    server = await asyncio.to_thread(start_whispr, server_name=f"127.0.0.1:{free_port()}",
                                     extra_config=federation_config())
    try:
        async with aiohttp.ClientSession() as session:
            alice = await Client.register(session, server, "alice")
            room = (await alice.call("POST", "/createRoom",
                                     json={"preset": "public_chat", "room_version": "10"}))["room_id"]
            mallory, stranger = f"@mallory:{peer.name}", f"@stranger:{peer.name}"
            await peer.join(server.server_name, room, mallory)
            await alice.sync_until(membership_in_timeline(room, mallory, "join"))
            await alice.call("PUT", f"/presence/{alice.user_id}/status",
                             json={"presence": "online", "status_msg": "real"})
            # ours reaches the peer, once per change (not per sync)
            for _ in range(3):
                await alice.call("GET", "/sync", params={"timeout": "0"})
            await eventually_true(lambda: any(p["user_id"] == alice.user_id and p.get("status_msg") == "real"
                                              for p in peer.presence_pushes()))
            await asyncio.sleep(1)
            mine = [p for p in peer.presence_pushes() if p["user_id"] == alice.user_id]
            assert len(mine) <= 2 and mine[-1]["presence"] == "online" and mine[-1]["currently_active"] is True
            assert isinstance(mine[-1]["last_active_ago"], int)

            # forged: the peer speaks for our alice, for another server's user and a malformed item;
            # and for its own user who shares no room with us; only mallory's own update counts
            await peer.send_presence(server.server_name, [
                {"user_id": alice.user_id, "presence": "offline", "status_msg": "forged"},
                {"user_id": "@eve:other.example", "presence": "online"},
                {"user_id": stranger, "presence": "online", "status_msg": "not here"},
                {"user_id": mallory, "presence": "bogus"},
                "not an object",
                {"user_id": mallory, "presence": "online", "status_msg": "from peer", "currently_active": True,
                 "last_active_ago": 5000},
            ], "p1")
            await alice.sync_until(presence_in(mallory, lambda c: c.get("status_msg") == "from peer"))
            seen = await alice.call("GET", f"/presence/{mallory}/status")
            assert seen["presence"] == "online" and seen["last_active_ago"] >= 5000
            own = await alice.call("GET", f"/presence/{alice.user_id}/status")
            assert own["presence"] == "online" and own["status_msg"] == "real"
            bob = await Client.register(session, server, "bob")
            await bob.call("POST", f"/join/{room}")
            body = await bob.call("GET", "/sync", params={"set_presence": "offline"})
            assert {e["sender"] for e in body["presence"]["events"]} >= {mallory, alice.user_id}
            assert stranger not in {e["sender"] for e in body["presence"]["events"]}
            # dropped, not kept: once the stranger joins, what was sent before does not show
            await peer.join(server.server_name, room, stranger)
            await alice.sync_until(membership_in_timeline(room, stranger, "join"))
            assert await alice.call("GET", f"/presence/{stranger}/status") == {"presence": "offline"}
            assert f"sent presence for {alice.user_id}, not one of its users" in server.log_path.read_text()
    finally:
        await asyncio.to_thread(server.stop)
        await peer.close()


async def eventually_true(check: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail("condition not met in time")
        await asyncio.sleep(0.1)


async def test_presence_with_synapse(peers: tuple[RunningServer, RunningServer]) -> None:
    """A Synapse user (matrix-nio) and ours in one room see each other's presence, both ways."""
    whispr, synapse = peers
    async with aiohttp.ClientSession() as session:
        wanda = await Client.register(session, whispr, "wanda")
        sam = await nio_user(session, synapse, "sam")
        try:
            room = (await wanda.call("POST", "/createRoom", json={"preset": "public_chat"}))["room_id"]
            # set before Synapse is in the room: its joining brings it
            await wanda.call("PUT", f"/presence/{wanda.user_id}/status",
                             json={"presence": "online", "status_msg": "before"})
            await asyncio.sleep(1)  # gone out (to nobody) before the invite
            await sam.sync(timeout=0)
            await wanda.call("POST", f"/rooms/{room}/invite", json={"user_id": sam.user_id})
            await nio_sync_until(sam, lambda r: room in r.rooms.invite)
            assert isinstance(await sam.join(room), nio.JoinResponse)
            await wanda.sync_until(membership_in_timeline(room, sam.user_id, "join"))

            def wanda_says(status_msg: str) -> Callable[[nio.SyncResponse], bool]:
                return lambda resp: any(getattr(e, "user_id", None) == wanda.user_id and e.status_msg == status_msg
                                        for e in resp.presence_events)
            # well before `currently_active` runs out (60 s), which would bring it too
            await asyncio.wait_for(nio_sync_until(sam, wanda_says("before")), 25)
            # Whispr -> Synapse: a change
            await wanda.call("PUT", f"/presence/{wanda.user_id}/status",
                             json={"presence": "online", "status_msg": "from whispr"})
            await nio_sync_until(sam, wanda_says("from whispr"))
            got = await sam.get_presence(wanda.user_id)
            assert isinstance(got, nio.PresenceGetResponse), got
            assert got.presence == "online" and got.status_msg == "from whispr"
            # Synapse -> Whispr
            assert isinstance(await sam.set_presence("unavailable", "from synapse"), nio.PresenceSetResponse)
            await wanda.sync_until(presence_in(sam.user_id, lambda c: c["presence"] == "unavailable"
                                               and c.get("status_msg") == "from synapse"), timeout=60)
            seen = await wanda.call("GET", f"/presence/{sam.user_id}/status")
            assert seen["presence"] == "unavailable" and seen["status_msg"] == "from synapse"
        finally:
            await sam.close()


async def test_room_initial_sync_carries_members_presence(client: Any) -> None:
    alice, bob = await User.new(client, "alice"), await User.new(client, "bob")
    room = await alice.create_room(preset="public_chat")
    await bob.call("POST", f"/join/{room}")
    await alice.call("PUT", f"/presence/{alice.user_id}/status", json={"presence": "unavailable", "status_msg": "z"})
    body = await bob.call("GET", f"/rooms/{room}/initialSync")
    got = {e["sender"]: e["content"] for e in body["presence"]}
    assert got[alice.user_id]["presence"] == "unavailable" and got[alice.user_id]["status_msg"] == "z"
    assert all(e["type"] == "m.presence" for e in body["presence"])
