"""Friends between two Whispr servers (A on SQLite, B on PostgreSQL): requests, accepts, declines,
cancels and removals both ways, over the rooms the servers already share."""

from __future__ import annotations

import asyncio
import time
from functools import partial
from typing import Any, Awaitable, Callable

import aiohttp
import pytest

from bench.servers import RunningServer, free_port
from tests.test_federation_whispr import Client, pair, users_on_both

__all__ = ["pair"]

FRIENDS = "/_matrix/client/unstable/org.whispr/friends"


async def friends_call(client: Client, method: str, path: str, expect: int = 200, **kw: Any) -> Any:
    resp = await client.session.request(method, client.server.base_url + FRIENDS + path, headers=client.h, **kw)
    body = await resp.json()
    assert resp.status == expect, (method, path, resp.status, body)
    return body


async def eventually(read: Callable[[], Awaitable[Any]], check: Callable[[Any], bool], timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = await read()
        if check(value):
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"not reached within {timeout} s; last: {value}")
        await asyncio.sleep(0.2)


def friend_ids(client: Client) -> Callable[[], Awaitable[list[str]]]:
    async def read() -> list[str]:
        return [f["user_id"] for f in (await friends_call(client, "GET", ""))["friends"]]
    return read


def requests_of(client: Client, which: str) -> Callable[[], Awaitable[list[str]]]:
    async def read() -> list[str]:
        return [r["user_id"] for r in (await friends_call(client, "GET", "/requests"))[which]]
    return read


def friend_event(kind: str, user_id: str) -> Callable[[dict[str, Any]], bool]:
    def check(body: dict[str, Any]) -> bool:
        return any(e["type"] == f"org.whispr.friend.{kind}" and e["content"]["user_id"] == user_id
                   for e in body.get("org.whispr.friends", {}).get("events", []))
    return check


async def test_request_accept_remove_both_ways(pair: tuple[RunningServer, RunningServer]) -> None:
    a, b = pair
    async with aiohttp.ClientSession() as session:
        alice, bob = await users_on_both(session, a, "alice", b, "bob")
        await bob.call("PUT", f"/profile/{bob.user_id}/org.whispr.bio", json={"org.whispr.bio": "from B"})
        room = (await friends_call(alice, "POST", "/requests", json={"user_id": bob.user_id,
                                                                     "message": "hello from A"}))["room_id"]
        body = await bob.sync_until(lambda body: room in body["rooms"]["invite"] and
                                    friend_event("request_received", alice.user_id)(body))
        member = next(e for e in body["rooms"]["invite"][room]["invite_state"]["events"]
                      if e["type"] == "m.room.member" and e["state_key"] == bob.user_id)
        assert member["content"]["is_direct"] is True
        assert member["content"]["org.whispr.friend_request"] == {"message": "hello from A"}
        incoming = (await friends_call(bob, "GET", "/requests"))["incoming"]
        assert [(r["user_id"], r["message"], r["room_id"]) for r in incoming] == [(alice.user_id, "hello from A",
                                                                                  room)]
        assert await requests_of(alice, "outgoing")() == [bob.user_id]

        assert (await friends_call(bob, "POST", f"/requests/{alice.user_id}/accept"))["status"] == "friends"
        await alice.sync_until(friend_event("accepted", bob.user_id))
        friends = (await friends_call(alice, "GET", ""))["friends"]
        assert [(f["user_id"], f["room_id"], f["displayname"], f["bio"]) for f in friends] == [
            (bob.user_id, room, "bob", "from B")]
        assert await friend_ids(bob)() == [alice.user_id]
        assert await requests_of(alice, "outgoing")() == []
        # the friendship B's user set is in the room A holds
        await eventually(lambda: alice.call("GET", f"/rooms/{room}/state/org.whispr.friendship", expect=200),
                         lambda s: s.get("since", 0) > 0)

        # removal from B reaches A; the chat stays
        await friends_call(bob, "DELETE", f"/{alice.user_id}")
        await alice.sync_until(friend_event("removed", bob.user_id))
        assert await friend_ids(alice)() == [] == await friend_ids(bob)()
        await alice.send(room, "still here")
        assert await bob.collect_messages(room, 1) == ["still here"]

        # and the other way: B asks, A accepts, A removes
        room2 = (await friends_call(bob, "POST", "/requests", json={"user_id": alice.user_id}))["room_id"]
        assert room2 != room
        await eventually(requests_of(alice, "incoming"), lambda r: r == [bob.user_id])
        await friends_call(alice, "POST", f"/requests/{bob.user_id}/accept")
        await eventually(friend_ids(bob), lambda f: f == [alice.user_id])
        await friends_call(alice, "DELETE", f"/{bob.user_id}")
        await eventually(friend_ids(bob), lambda f: f == [])


async def test_decline_cancel_and_mutual_across_servers(pair: tuple[RunningServer, RunningServer]) -> None:
    a, b = pair
    async with aiohttp.ClientSession() as session:
        alice, bob = await users_on_both(session, a, "alice", b, "bob")
        # B declines A's request; A hears of it
        await friends_call(alice, "POST", "/requests", json={"user_id": bob.user_id})
        await eventually(requests_of(bob, "incoming"), lambda r: r == [alice.user_id])
        await friends_call(bob, "POST", f"/requests/{alice.user_id}/decline")
        await alice.sync_until(friend_event("declined", bob.user_id))
        assert await requests_of(alice, "outgoing")() == [] == await requests_of(bob, "incoming")()

        # A declines B's request
        await friends_call(bob, "POST", "/requests", json={"user_id": alice.user_id})
        await eventually(requests_of(alice, "incoming"), lambda r: r == [bob.user_id])
        await friends_call(alice, "POST", f"/requests/{bob.user_id}/decline")
        await bob.sync_until(friend_event("declined", alice.user_id))
        assert await requests_of(bob, "outgoing")() == []

        # A takes a request back: B's server hears of it though it holds none of the room
        await friends_call(alice, "POST", "/requests", json={"user_id": bob.user_id, "message": "oops"})
        await eventually(requests_of(bob, "incoming"), lambda r: r == [alice.user_id])
        await friends_call(alice, "DELETE", f"/requests/{bob.user_id}")
        await eventually(requests_of(bob, "incoming"), lambda r: r == [])
        await bob.sync_until(friend_event("cancelled", alice.user_id))

        # a request to someone who asked first accepts theirs
        first = (await friends_call(bob, "POST", "/requests", json={"user_id": alice.user_id}))["room_id"]
        await eventually(requests_of(alice, "incoming"), lambda r: r == [bob.user_id])
        answer = await friends_call(alice, "POST", "/requests", json={"user_id": bob.user_id})
        assert answer == {"status": "friends", "room_id": first}
        await eventually(friend_ids(bob), lambda f: f == [alice.user_id])


async def test_remote_refusals_and_unreachable_servers(pair: tuple[RunningServer, RunningServer]) -> None:
    a, b = pair
    async with aiohttp.ClientSession() as session:
        alice, bob = await users_on_both(session, a, "alice", b, "bob")
        await friends_call(bob, "PUT", "/settings", json={"allow_requests": "nobody"})
        refused = await friends_call(alice, "POST", "/requests", expect=403, json={"user_id": bob.user_id})
        assert refused["errcode"] == "M_FORBIDDEN"
        unknown = await friends_call(alice, "POST", "/requests", expect=404,
                                     json={"user_id": "@nobody:" + b.server_name})
        assert unknown["errcode"] == "M_NOT_FOUND"
        gone = await friends_call(alice, "POST", "/requests", expect=502,
                                  json={"user_id": f"@x:127.0.0.1:{free_port()}"})
        assert gone["errcode"] == "M_UNKNOWN"
        # nothing half-done: no room kept, no request listed on either side
        assert (await alice.call("GET", "/joined_rooms"))["joined_rooms"] == []
        assert await friends_call(alice, "GET", "/requests") == {"incoming": [], "outgoing": []}
        assert await friends_call(bob, "GET", "/requests") == {"incoming": [], "outgoing": []}


async def test_requests_crossing_between_servers_make_one_friendship(pair: tuple[RunningServer, RunningServer]) -> None:
    """Both ask at once: each server settles the race the same way, in the room with the smaller ID."""
    a, b = pair
    async with aiohttp.ClientSession() as session:
        alice, bob = await users_on_both(session, a, "alice", b, "bob")
        await asyncio.gather(friends_call(alice, "POST", "/requests", json={"user_id": bob.user_id}),
                             friends_call(bob, "POST", "/requests", json={"user_id": alice.user_id}))
        mine = await eventually(lambda: friends_call(alice, "GET", ""), lambda body: len(body["friends"]) == 1)
        room = mine["friends"][0]["room_id"]
        theirs = await eventually(lambda: friends_call(bob, "GET", ""), lambda body: len(body["friends"]) == 1)
        assert theirs["friends"][0]["room_id"] == room
        for client in (alice, bob):
            await eventually(partial(client.call, "GET", "/joined_rooms"), lambda body: body["joined_rooms"] == [room])
            await eventually(partial(friends_call, client, "GET", "/requests"),
                             lambda body: body == {"incoming": [], "outgoing": []})
        await alice.send(room, "one chat")
        assert await bob.collect_messages(room, 1) == ["one chat"]


async def test_a_plain_direct_chat_across_servers_is_a_request_on_both(
        pair: tuple[RunningServer, RunningServer]) -> None:
    """What Element sends (createRoom with is_direct): both servers see a request, the join makes friends."""
    a, b = pair
    async with aiohttp.ClientSession() as session:
        alice, bob = await users_on_both(session, a, "alice", b, "bob")
        room = (await alice.call("POST", "/createRoom", json={"is_direct": True, "invite": [bob.user_id],
                                                              "preset": "trusted_private_chat"}))["room_id"]
        assert await requests_of(alice, "outgoing")() == [bob.user_id]
        await eventually(requests_of(bob, "incoming"), lambda r: r == [alice.user_id])
        await bob.call("POST", f"/join/{room}")
        await eventually(friend_ids(alice), lambda f: f == [bob.user_id])
        assert await friend_ids(bob)() == [alice.user_id]
