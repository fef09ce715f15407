"""Friends on one server over HTTP: requests, accepts, declines, cancels, removals, the rules, and
m.ignored_user_list honoured in /sync, /messages and the friend lists. Both backends."""

from __future__ import annotations

import asyncio
from typing import Any

import nio

from tests.conftest import register
from tests.rooms_helpers import User
from tests.test_sync import read_sse

FRIENDS = "/_matrix/client/unstable/org.whispr/friends"


class Friend(User):
    """A user who also drives the friends endpoints, and keeps a sync position."""

    since: str | None = None

    async def whispr(self, method: str, path: str, expect: int = 200, **kwargs: Any) -> Any:
        resp = await self.client.request(method, FRIENDS + path, headers=self.h, **kwargs)
        body = await resp.json()
        assert resp.status == expect, (method, path, resp.status, body)
        return body

    async def ask(self, other: User, message: str | None = None, expect: int = 200) -> Any:
        body: dict[str, Any] = {"user_id": other.user_id}
        if message is not None:
            body["message"] = message
        return await self.whispr("POST", "/requests", expect=expect, json=body)

    async def step(self) -> dict[str, Any]:
        body = await self.sync(self.since)
        self.since = body["next_batch"]
        return body

    async def friend_events(self) -> list[tuple[str, str]]:
        """(type, user_id) of the friend events since the last step."""
        body = await self.step()
        return [(e["type"].rsplit(".", 1)[1], e["content"]["user_id"])
                for e in body.get("org.whispr.friends", {}).get("events", [])]


async def pair(client: Any) -> tuple[Friend, Friend]:
    alice, bob = await Friend.new(client, "alice"), await Friend.new(client, "bob")
    await alice.step()
    await bob.step()
    return alice, bob  # type: ignore[return-value]


async def test_request_accept_and_remove(client: Any) -> None:
    alice, bob = await pair(client)
    await bob.call("PUT", f"/profile/{bob.user_id}/org.whispr.bio", json={"org.whispr.bio": "likes tea"})
    sent = await alice.ask(bob, "hi, it's alice")
    assert sent["status"] == "pending"
    room = sent["room_id"]
    # bob sees a direct-chat invite carrying the marker, and a friend event; both list it
    body = await bob.step()
    invite = body["rooms"]["invite"][room]["invite_state"]["events"]
    member = next(e for e in invite if e["type"] == "m.room.member" and e["state_key"] == bob.user_id)
    assert member["content"]["is_direct"] is True
    assert member["content"]["org.whispr.friend_request"] == {"message": "hi, it's alice"}
    events = body["org.whispr.friends"]["events"]
    assert [(e["type"], e["content"]["user_id"], e["content"].get("message")) for e in events] == [
        ("org.whispr.friend.request_received", alice.user_id, "hi, it's alice")]
    incoming = (await bob.whispr("GET", "/requests"))["incoming"]
    assert [(r["user_id"], r["message"], r["room_id"]) for r in incoming] == [(alice.user_id, "hi, it's alice", room)]
    assert (await alice.whispr("GET", "/requests"))["outgoing"][0]["user_id"] == bob.user_id
    assert await alice.friend_events() == [("request_sent", bob.user_id)]

    accepted = await bob.whispr("POST", f"/requests/{alice.user_id}/accept")
    assert accepted == {"status": "friends", "room_id": room}
    assert await alice.friend_events() == [("accepted", bob.user_id)]
    friends = (await alice.whispr("GET", ""))["friends"]
    assert [(f["user_id"], f["displayname"], f["bio"], f["room_id"]) for f in friends] == [
        (bob.user_id, "bob", "likes tea", room)]
    assert friends[0]["since"] > 0
    assert [f["user_id"] for f in (await bob.whispr("GET", ""))["friends"]] == [alice.user_id]
    assert (await bob.whispr("GET", "/requests")) == {"incoming": [], "outgoing": []}
    # both have the chat in m.direct, and the friendship is room state both servers can read
    assert (await alice.call("GET", f"/user/{alice.user_id}/account_data/m.direct")) == {bob.user_id: [room]}
    assert (await bob.call("GET", f"/user/{bob.user_id}/account_data/m.direct")) == {alice.user_id: [room]}
    state = await alice.call("GET", f"/rooms/{room}/state/org.whispr.friendship")
    assert state["users"] == sorted([alice.user_id, bob.user_id]) and state["since"] > 0

    await alice.send(room, "friends now")
    await bob.whispr("DELETE", f"/{alice.user_id}")
    assert await alice.friend_events() == [("removed", bob.user_id)]
    assert (await alice.whispr("GET", ""))["friends"] == [] == (await bob.whispr("GET", ""))["friends"]
    assert (await alice.call("GET", f"/rooms/{room}/state/org.whispr.friendship"))["ended"] is True
    # the chat stays, readable by both
    chunk = (await bob.call("GET", f"/rooms/{room}/messages", params={"dir": "b"}))["chunk"]
    assert "friends now" in [e["content"].get("body") for e in chunk]
    await bob.whispr("DELETE", f"/{alice.user_id}", expect=404)
    # a new request later makes a new chat
    again = await bob.ask(alice)
    assert again["status"] == "pending" and again["room_id"] != room


async def test_repeated_request_is_idempotent_and_mutual_request_accepts(client: Any) -> None:
    alice, bob = await pair(client)
    first = await alice.ask(bob, "one")
    assert await alice.ask(bob, "two") == first
    assert len((await bob.whispr("GET", "/requests"))["incoming"]) == 1
    mutual = await bob.ask(alice)
    assert mutual == {"status": "friends", "room_id": first["room_id"]}
    assert [f["user_id"] for f in (await alice.whispr("GET", ""))["friends"]] == [bob.user_id]
    assert await alice.ask(bob) == {"status": "friends", "room_id": first["room_id"]}
    joined = (await alice.call("GET", "/joined_rooms"))["joined_rooms"]
    assert joined == [first["room_id"]]


async def test_decline_and_cancel(client: Any) -> None:
    alice, bob = await pair(client)
    room = (await alice.ask(bob))["room_id"]
    await bob.step()
    await alice.step()
    await bob.whispr("POST", f"/requests/{alice.user_id}/decline")
    assert await alice.friend_events() == [("declined", bob.user_id)]
    assert (await alice.whispr("GET", "/requests"))["outgoing"] == []
    assert (await bob.whispr("GET", "/requests"))["incoming"] == []
    await bob.whispr("POST", f"/requests/{alice.user_id}/accept", expect=404)
    assert room not in (await bob.call("GET", "/joined_rooms"))["joined_rooms"]

    room = (await alice.ask(bob, "again?"))["room_id"]
    assert room in (await bob.step())["rooms"]["invite"]
    await alice.whispr("DELETE", f"/requests/{bob.user_id}")
    body = await bob.step()
    assert room in body["rooms"]["leave"]  # the invite was taken back
    assert [e["type"] for e in body["org.whispr.friends"]["events"]] == ["org.whispr.friend.cancelled"]
    assert (await bob.whispr("GET", "/requests"))["incoming"] == []
    assert (await alice.whispr("GET", "/requests"))["outgoing"] == []
    await alice.whispr("DELETE", f"/requests/{bob.user_id}", expect=404)
    await bob.whispr("POST", f"/requests/{alice.user_id}/decline", expect=404)


async def test_bad_input_gets_clear_errors_and_leaves_nothing(client: Any) -> None:
    alice, bob = await pair(client)
    cases = [
        ({"user_id": "@nobody:test.local"}, 404, "M_NOT_FOUND"),
        ({"user_id": alice.user_id}, 400, "M_INVALID_PARAM"),
        ({"user_id": "bob"}, 400, "M_INVALID_PARAM"),
        ({"user_id": "@bob:bad server"}, 400, "M_INVALID_PARAM"),
        ({"user_id": 7}, 400, "M_INVALID_PARAM"),
        ({}, 400, "M_INVALID_PARAM"),
        ({"user_id": bob.user_id, "message": 5}, 400, "M_BAD_JSON"),
        ({"user_id": bob.user_id, "message": "x" * 1025}, 400, "M_BAD_JSON"),
        # federation is off here: a remote user cannot be reached
        ({"user_id": "@carol:elsewhere.example"}, 403, "M_FORBIDDEN"),
    ]
    for body, status, errcode in cases:
        got = await alice.whispr("POST", "/requests", expect=status, json=body)
        assert got["errcode"] == errcode, (body, got)
    resp = await client.post(FRIENDS + "/requests", headers=alice.h, data=b"{not json")
    assert resp.status == 400 and (await resp.json())["errcode"] == "M_NOT_JSON"
    for method, path in [("POST", "/requests/bob/accept"), ("POST", f"/requests/{bob.user_id}/accept"),
                         ("POST", f"/requests/{bob.user_id}/decline"), ("DELETE", f"/requests/{bob.user_id}"),
                         ("DELETE", f"/{bob.user_id}")]:
        got = await alice.whispr(method, path, expect=400 if path.endswith("/bob/accept") else 404)
        assert got["errcode"] in ("M_INVALID_PARAM", "M_NOT_FOUND")
    assert (await alice.call("GET", "/joined_rooms"))["joined_rooms"] == []
    assert await alice.whispr("GET", "/requests") == {"incoming": [], "outgoing": []}
    assert (await client.get(FRIENDS)).status == 401


async def test_who_may_send_requests(client: Any) -> None:
    alice, bob = await pair(client)
    carol = await Friend.new(client, "carol")
    assert await bob.whispr("GET", "/settings") == {"allow_requests": "anyone"}
    await bob.whispr("PUT", "/settings", json={"allow_requests": "nobody"})
    assert (await alice.ask(bob, expect=403))["errcode"] == "M_FORBIDDEN"
    assert (await alice.call("GET", "/joined_rooms"))["joined_rooms"] == []
    assert (await bob.whispr("PUT", "/settings", expect=400, json={"allow_requests": "some"}))["errcode"] \
        == "M_BAD_JSON"
    # friends of friends: carol may once she and bob share a friend (alice)
    await bob.whispr("PUT", "/settings", json={"allow_requests": "friends_of_friends"})
    assert (await carol.ask(bob, expect=403))["errcode"] == "M_FORBIDDEN"
    await carol.ask(alice)
    await alice.ask(carol)  # mutual: friends
    await bob.whispr("PUT", "/settings", json={"allow_requests": "anyone"})
    await alice.ask(bob)
    await bob.ask(alice)
    await bob.whispr("PUT", "/settings", json={"allow_requests": "friends_of_friends"})
    assert (await carol.ask(bob))["status"] == "pending"
    # a plain direct-chat invite from someone refused is an invite, not a request
    await bob.whispr("PUT", "/settings", json={"allow_requests": "nobody"})
    dave = await Friend.new(client, "dave")
    await dave.create_room(is_direct=True, invite=[bob.user_id])
    incoming = (await bob.whispr("GET", "/requests"))["incoming"]
    assert [r["user_id"] for r in incoming] == [carol.user_id]


async def test_requests_are_rate_limited_per_user(serve: Any) -> None:
    client = await serve(rate_limits={"enabled": True, "friend_request": {"per_second": 0.001, "burst": 2},
                                      "register": {"per_second": 100, "burst": 100}})
    alice, bob = await pair(client)
    carol, dave = await Friend.new(client, "carol"), await Friend.new(client, "dave")
    await alice.ask(bob)
    await alice.ask(carol)
    limited = await alice.ask(dave, expect=429)
    assert limited["errcode"] == "M_LIMIT_EXCEEDED" and limited["retry_after_ms"] > 0
    await bob.ask(dave)  # another user's own budget


async def test_a_direct_chat_invite_is_an_incoming_request(client: Any) -> None:
    """What a stock client (Element) sends for a DM: accepting it makes friends."""
    alice, bob = await pair(client)
    room = await alice.create_room(is_direct=True, invite=[bob.user_id], preset="trusted_private_chat")
    incoming = (await bob.whispr("GET", "/requests"))["incoming"]
    assert [(r["user_id"], r["room_id"], "message" in r) for r in incoming] == [(alice.user_id, room, False)]
    assert (await bob.whispr("POST", f"/requests/{alice.user_id}/accept"))["status"] == "friends"
    assert [f["user_id"] for f in (await alice.whispr("GET", ""))["friends"]] == [bob.user_id]


async def test_friend_events_on_the_sse_stream(client: Any) -> None:
    alice, bob = await pair(client)
    resp = await client.get("/_matrix/client/unstable/org.whispr/sync/stream", params={"access_token": bob.token})
    await read_sse(resp, 1)
    await alice.ask(bob, "over SSE")
    seen: list[dict[str, Any]] = []
    while not seen:
        for _id, body in await read_sse(resp, 1):
            seen += body.get("org.whispr.friends", {}).get("events", [])
    resp.close()
    assert seen[0]["type"] == "org.whispr.friend.request_received"
    assert seen[0]["content"]["message"] == "over SSE"


async def test_an_ignored_users_requests_are_dropped(client: Any) -> None:
    alice, bob = await pair(client)
    mallory = await Friend.new(client, "mallory")
    await bob.call("PUT", f"/user/{bob.user_id}/account_data/m.ignored_user_list",
                   json={"ignored_users": {mallory.user_id: {}}})
    await bob.step()
    await mallory.ask(bob, "be my friend")
    await alice.ask(bob)
    body = await bob.step()
    assert [e["content"]["user_id"] for e in body["org.whispr.friends"]["events"]] == [alice.user_id]
    assert list(body["rooms"]["invite"]) == [(await alice.whispr("GET", "/requests"))["outgoing"][0]["room_id"]]
    assert [r["user_id"] for r in (await bob.whispr("GET", "/requests"))["incoming"]] == [alice.user_id]
    await bob.whispr("POST", f"/requests/{mallory.user_id}/accept", expect=404)
    # not ignored any more: the request shows again
    await bob.call("PUT", f"/user/{bob.user_id}/account_data/m.ignored_user_list", json={"ignored_users": {}})
    assert {r["user_id"] for r in (await bob.whispr("GET", "/requests"))["incoming"]} == {alice.user_id,
                                                                                        mallory.user_id}


async def test_a_stock_client_takes_the_friends_section_in_its_stride(client: Any) -> None:
    """matrix-nio syncs through a friend event: it sees the invite and ignores the Whispr section."""
    alice = await Friend.new(client, "alice")
    reg = await register(client, "bob")
    bob = nio.AsyncClient(str(client.server.make_url("")).rstrip("/"), reg["user_id"])
    bob.restore_login(reg["user_id"], reg["device_id"], reg["access_token"])
    try:
        assert isinstance(await bob.sync(timeout=0), nio.SyncResponse)
        room = (await alice.whispr("POST", "/requests", json={"user_id": reg["user_id"], "message": "hi"}))["room_id"]
        resp = await bob.sync(timeout=2000)
        assert isinstance(resp, nio.SyncResponse), resp
        assert room in bob.invited_rooms
        assert isinstance(await bob.join(room), nio.JoinResponse)
        assert [f["user_id"] for f in (await alice.whispr("GET", ""))["friends"]] == [reg["user_id"]]
    finally:
        await bob.close()


async def test_friends_in_room_version_12(serve: Any) -> None:
    """Creators hold unlimited power in v12: the invitee still may set the friendship state."""
    client = await serve(rooms={"default_version": "12"})
    alice, bob = await pair(client)
    room = (await alice.ask(bob, "v12"))["room_id"]
    assert (await alice.call("GET", f"/rooms/{room}/state/m.room.create"))["room_version"] == "12"
    await bob.whispr("POST", f"/requests/{alice.user_id}/accept")
    assert (await alice.call("GET", f"/rooms/{room}/state/org.whispr.friendship"))["since"] > 0
    await bob.whispr("DELETE", f"/{alice.user_id}")
    assert (await alice.call("GET", f"/rooms/{room}/state/org.whispr.friendship"))["ended"] is True
    assert (await alice.whispr("GET", ""))["friends"] == []


async def test_requests_crossing_each_other_make_one_friendship(client: Any) -> None:
    alice, bob = await pair(client)
    for _ in range(3):  # crossings settle whatever order the two invites land in
        await asyncio.gather(alice.ask(bob), bob.ask(alice))
        for _ in range(100):
            mine, theirs = (await alice.whispr("GET", ""))["friends"], (await bob.whispr("GET", ""))["friends"]
            if mine and theirs:
                break
            await asyncio.sleep(0.05)
        assert [f["user_id"] for f in mine] == [bob.user_id] and [f["user_id"] for f in theirs] == [alice.user_id]
        assert mine[0]["room_id"] == theirs[0]["room_id"]
        room = mine[0]["room_id"]
        for _ in range(100):  # the other room is taken back
            if (await alice.call("GET", "/joined_rooms"))["joined_rooms"] == [room] == \
                    (await bob.call("GET", "/joined_rooms"))["joined_rooms"]:
                break
            await asyncio.sleep(0.05)
        assert (await alice.call("GET", "/joined_rooms"))["joined_rooms"] == [room]
        assert (await bob.call("GET", "/joined_rooms"))["joined_rooms"] == [room]
        assert await alice.whispr("GET", "/requests") == {"incoming": [], "outgoing": []}
        assert await bob.whispr("GET", "/requests") == {"incoming": [], "outgoing": []}
        await alice.whispr("DELETE", f"/{bob.user_id}")
        await alice.call("POST", f"/rooms/{room}/leave")
        await bob.call("POST", f"/rooms/{room}/leave")
