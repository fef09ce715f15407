"""The small endpoints: mutual rooms, third-party lookups without bridges, TURN credentials."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from typing import Any

from tests.rooms_helpers import User

V1 = "/_matrix/client/v1"
V3 = "/_matrix/client/v3"


async def get(user: User, path: str, expect: int = 200, **params: str) -> Any:
    resp = await user.client.get(path, headers=user.h, params=params)
    body = await resp.json()
    assert resp.status == expect, (path, resp.status, body)
    return body


async def test_mutual_rooms(client: Any) -> None:
    alice, bob, carol = await User.new(client, "alice"), await User.new(client, "bob"), await User.new(client, "carol")
    shared = []
    for _ in range(3):
        room = await alice.create_room(preset="public_chat")
        await bob.call("POST", f"/join/{room}")
        shared.append(room)
    await alice.create_room()  # alice alone
    left = await alice.create_room(preset="public_chat")
    await bob.call("POST", f"/join/{left}")
    await bob.call("POST", f"/rooms/{left}/leave")
    body = await get(alice, f"{V1}/mutual_rooms", user_id=bob.user_id)
    assert sorted(body["joined"]) == sorted(shared) and body["count"] == 3 and "next_batch" not in body
    assert (await get(bob, f"{V1}/mutual_rooms", user_id=alice.user_id))["joined"] == body["joined"]
    assert await get(alice, f"{V1}/mutual_rooms", user_id=carol.user_id) == {"joined": [], "count": 0}
    assert (await get(alice, f"{V1}/mutual_rooms", user_id="@nobody:nowhere"))["joined"] == []
    for bad in ({}, {"user_id": alice.user_id}, {"user_id": "not-a-user"},
                {"user_id": bob.user_id, "from": "junk"}):
        assert (await get(alice, f"{V1}/mutual_rooms", expect=400, **bad))["errcode"] == "M_INVALID_PARAM"


async def test_mutual_rooms_paged(client: Any) -> None:
    from homeserver.rooms.membership import MUTUAL_ROOMS_BATCH
    alice, bob = await User.new(client, "alice"), await User.new(client, "bob")
    rooms = []
    for _ in range(MUTUAL_ROOMS_BATCH + 2):
        room = await alice.create_room(preset="public_chat")
        await bob.call("POST", f"/join/{room}")
        rooms.append(room)
    first = await get(alice, f"{V1}/mutual_rooms", user_id=bob.user_id)
    assert len(first["joined"]) == MUTUAL_ROOMS_BATCH and first["count"] == len(rooms)
    second = await get(alice, f"{V1}/mutual_rooms", user_id=bob.user_id, **{"from": first["next_batch"]})
    assert sorted(first["joined"] + second["joined"]) == sorted(rooms) and "next_batch" not in second


async def test_thirdparty_without_bridges(client: Any) -> None:
    alice = await User.new(client, "alice")
    assert await get(alice, f"{V3}/thirdparty/protocols") == {}
    assert (await get(alice, f"{V3}/thirdparty/protocol/irc", expect=404))["errcode"] == "M_NOT_FOUND"
    for path in ("location/irc", "user/irc", "location", "user"):
        assert await get(alice, f"{V3}/thirdparty/{path}", alias="#a:b", userid="@a:b") == []
    resp = await client.get(f"{V3}/thirdparty/protocols")
    assert resp.status == 401


async def test_turn_server_unconfigured(client: Any) -> None:
    alice = await User.new(client, "alice")
    assert await get(alice, f"{V3}/voip/turnServer") == {}


async def test_turn_server_shared_secret(serve: Any) -> None:
    uris = ["turn:turn.example.org:3478?transport=udp", "turns:turn.example.org:5349"]
    client = await serve(voip={"turn_uris": uris, "turn_shared_secret": "s3cret", "turn_user_lifetime_s": 600})
    alice = await User.new(client, "alice")
    before = int(time.time())
    body = await get(alice, f"{V3}/voip/turnServer")
    expiry, user_id = body["username"].split(":", 1)
    assert user_id == alice.user_id and before + 600 <= int(expiry) <= int(time.time()) + 600
    # The TURN REST API: password = base64(HMAC-SHA1(secret, username)), what coturn recomputes.
    expected = base64.b64encode(hmac.new(b"s3cret", body["username"].encode(), hashlib.sha1).digest()).decode()
    assert body["password"] == expected
    assert body["uris"] == uris and body["ttl"] == 600


async def test_turn_server_static_credentials(serve: Any) -> None:
    client = await serve(voip={"turn_uris": ["turn:t.example.org"], "turn_username": "u", "turn_password": "p"})
    alice = await User.new(client, "alice")
    body = await get(alice, f"{V3}/voip/turnServer")
    assert (body["username"], body["password"], body["uris"]) == ("u", "p", ["turn:t.example.org"])


async def test_turn_server_for_guests(serve: Any) -> None:
    from tests.test_peek_guests import guest
    turn = {"turn_uris": ["turn:t.example.org"], "turn_shared_secret": "s"}
    client = await serve(registration={"allow_guest_access": True}, voip=turn)
    visitor = await guest(client)
    assert (await get(visitor, f"{V3}/voip/turnServer"))["uris"] == ["turn:t.example.org"]
    closed = await serve(registration={"allow_guest_access": True}, voip={**turn, "turn_allow_guests": False})
    visitor = await guest(closed)
    assert (await get(visitor, f"{V3}/voip/turnServer", expect=403))["errcode"] == "M_FORBIDDEN"
    # Guests search nothing and report nothing: those are not theirs to call.
    resp = await closed.post(f"{V3}/search", headers=visitor.h, json={"search_categories": {}})
    assert resp.status == 403 and (await resp.json())["errcode"] == "M_GUEST_ACCESS_FORBIDDEN"
