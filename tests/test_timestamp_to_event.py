"""GET /_matrix/client/v1/rooms/{roomId}/timestamp_to_event: both directions, 404, who may ask."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp

from bench.servers import RunningServer
from tests.conftest import auth
from tests.test_federation_whispr import membership_in_timeline, pair, users_on_both  # noqa: F401 (fixture)
from tests.rooms_helpers import User

V1 = "/_matrix/client/v1"


async def at(user: User, room: str, ts: int | str, direction: str, expect: int = 200) -> Any:
    resp = await user.client.get(f"{V1}/rooms/{room}/timestamp_to_event", headers=auth(user.token),
                                 params={"ts": str(ts), "dir": direction})
    body = await resp.json()
    assert resp.status == expect, (ts, direction, resp.status, body)
    return body


async def sent(user: User, room: str, body: str) -> tuple[str, int]:
    event_id = await user.send(room, body)
    event = await user.call("GET", f"/rooms/{room}/event/{event_id}")
    await asyncio.sleep(0.02)  # the next event gets a later timestamp
    return event_id, event["origin_server_ts"]


async def test_timestamp_to_event_both_directions(client: Any) -> None:
    alice, bob = await User.new(client, "alice"), await User.new(client, "bob")
    room = await alice.create_room(preset="public_chat")
    await asyncio.sleep(0.02)
    (e1, t1), (e2, t2), (e3, t3) = [await sent(alice, room, f"m{i}") for i in range(3)]

    assert await at(alice, room, t2, "f") == {"event_id": e2, "origin_server_ts": t2}
    assert await at(alice, room, t2, "b") == {"event_id": e2, "origin_server_ts": t2}
    assert await at(alice, room, t2 + 1, "f") == {"event_id": e3, "origin_server_ts": t3}
    assert await at(alice, room, t2 - 1, "b") == {"event_id": e1, "origin_server_ts": t1}
    assert (await at(alice, room, t3 + 1, "b"))["event_id"] == e3
    first = await at(alice, room, 0, "f")  # the room's create event
    create = await alice.call("GET", f"/rooms/{room}/state/m.room.create", params={"format": "event"})
    assert first["event_id"] == create["event_id"]
    assert (await at(alice, room, 0, "b", 404))["errcode"] == "M_NOT_FOUND"
    assert (await at(alice, room, t3 + 60_000, "f", 404))["errcode"] == "M_NOT_FOUND"

    # Bad queries, and who may ask.
    assert (await at(alice, room, "soon", "f", 400))["errcode"] == "M_INVALID_PARAM"
    assert (await at(alice, room, t1, "up", 400))["errcode"] == "M_INVALID_PARAM"
    resp = await alice.client.get(f"{V1}/rooms/{room}/timestamp_to_event", headers=auth(alice.token))
    assert resp.status == 400 and (await resp.json())["errcode"] == "M_MISSING_PARAM"
    assert (await at(bob, room, t1, "f", 403))["errcode"] == "M_FORBIDDEN"

    # A member who left finds nothing sent after they left.
    await bob.call("POST", f"/join/{room}")
    await bob.call("POST", f"/rooms/{room}/leave")
    leave = await alice.call("GET", f"/rooms/{room}/state/m.room.member/{bob.user_id}", params={"format": "event"})
    await asyncio.sleep(0.02)
    e4, t4 = await sent(alice, room, "after bob")
    assert (await at(alice, room, leave["origin_server_ts"] + 1, "f"))["event_id"] == e4
    assert (await at(bob, room, leave["origin_server_ts"] + 1, "f", 404))["errcode"] == "M_NOT_FOUND"
    assert (await at(bob, room, t4, "b"))["event_id"] == leave["event_id"]


async def test_timestamp_to_event_asks_the_room_servers(pair: tuple[RunningServer, RunningServer]) -> None:
    """B joined late and holds none of the history before its join: it asks A, which does."""
    a, b = pair
    async with aiohttp.ClientSession() as session:
        alice, bob = await users_on_both(session, a, "alice", b, "bob")
        room = (await alice.call("POST", "/createRoom", json={"preset": "public_chat"}))["room_id"]
        early = await alice.send(room, "before bob")
        early_ts = (await alice.call("GET", f"/rooms/{room}/event/{early}"))["origin_server_ts"]
        await asyncio.sleep(0.05)
        await bob.call("POST", f"/join/{room}")
        await alice.sync_until(membership_in_timeline(room, bob.user_id, "join"))

        url = f"{b.base_url}{V1}/rooms/{room}/timestamp_to_event"
        resp = await session.get(url, headers=bob.h, params={"ts": str(early_ts), "dir": "b"})
        body = await resp.json()
        assert resp.status == 200, body
        assert body == {"event_id": early, "origin_server_ts": early_ts}
        # Forwards, B's own copy answers: bob's join is held there.
        resp = await session.get(url, headers=bob.h, params={"ts": str(early_ts + 1), "dir": "f"})
        body = await resp.json()
        join = await bob.call("GET", f"/rooms/{room}/state/m.room.member/{bob.user_id}", params={"format": "event"})
        assert body["event_id"] == join["event_id"]
        resp = await session.get(url, headers=bob.h, params={"ts": "1", "dir": "b"})
        assert resp.status == 404 and (await resp.json())["errcode"] == "M_NOT_FOUND"
