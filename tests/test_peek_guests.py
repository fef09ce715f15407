"""Peeking (room previews of world_readable rooms), GET /rooms/{roomId}/initialSync, and guest
accounts (kind=guest, m.room.guest_access, the spec's limited API, upgrading), on both engines."""

from __future__ import annotations

import asyncio
from typing import Any

import nio

from homeserver.accounts.models import User as Account
from storage import Store
from tests.conftest import auth, login, register
from tests.js_sdk import run_script
from tests.test_email_verification import new_secret, request_register_token, submit_code
from tests.rooms_helpers import V3, User
from tests.test_storage import store  # noqa: F401  (fixture: the store on both engines)

GUESTS_ON = {"registration": {"allow_guest_access": True}}


def bodies(events: list[dict[str, Any]]) -> list[str]:
    return [e["content"]["body"] for e in events if e["type"] == "m.room.message"]


async def readable_room(alice: User) -> tuple[str, dict[str, str]]:
    """A public room with a message under `shared`, then made world_readable, with two more."""
    room = await alice.create_room(preset="public_chat", name="lobby")
    ids = {"shared": await alice.send(room, "shared")}
    await alice.call("PUT", f"/rooms/{room}/state/m.room.history_visibility",
                     json={"history_visibility": "world_readable"})
    ids["one"] = await alice.send(room, "one")
    ids["two"] = await alice.send(room, "two")
    return room, ids


async def test_a_non_member_reads_a_world_readable_room(client: Any) -> None:
    alice, bob = await User.new(client, "alice"), await User.new(client, "bob")
    room, ids = await readable_room(alice)

    chunk = (await bob.call("GET", f"/rooms/{room}/messages", params={"dir": "b", "limit": "50"}))["chunk"]
    assert bodies(chunk)[::-1] == ["one", "two"]  # what was sent before it was world_readable stays hidden
    forward = (await bob.call("GET", f"/rooms/{room}/messages", params={"dir": "f", "limit": "50"}))["chunk"]
    assert bodies(forward) == ["one", "two"]
    state = await bob.call("GET", f"/rooms/{room}/state")
    assert {e["type"] for e in state} >= {"m.room.create", "m.room.name", "m.room.history_visibility"}
    assert (await bob.call("GET", f"/rooms/{room}/state/m.room.name"))["name"] == "lobby"
    assert (await bob.call("GET", f"/rooms/{room}/state/m.room.name/", params={"format": "event"}))["type"] \
        == "m.room.name"
    assert (await bob.call("GET", f"/rooms/{room}/event/{ids['one']}"))["content"]["body"] == "one"
    await bob.call("GET", f"/rooms/{room}/event/{ids['shared']}", expect=404)
    context = await bob.call("GET", f"/rooms/{room}/context/{ids['two']}", params={"limit": "10"})
    assert context["event"]["event_id"] == ids["two"] and bodies(context["events_before"]) == ["one"]
    members = (await bob.call("GET", f"/rooms/{room}/members"))["chunk"]
    assert [m["state_key"] for m in members] == [alice.user_id]

    snapshot = await bob.call("GET", f"/rooms/{room}/initialSync")
    assert snapshot["room_id"] == room and "membership" not in snapshot
    assert snapshot["account_data"] == [] and snapshot["presence"] == [] and snapshot["receipts"] == []
    assert bodies(snapshot["messages"]["chunk"]) == ["one", "two"]
    assert snapshot["visibility"] == "private"  # not in the directory
    assert {e["type"] for e in snapshot["state"]} >= {"m.room.create", "m.room.member", "m.room.name"}
    # Its `end` continues forwards (the next message), its `start` backwards.
    third = await alice.send(room, "three")
    after = await bob.call("GET", f"/rooms/{room}/messages",
                           params={"dir": "f", "from": snapshot["messages"]["end"]})
    assert [e["event_id"] for e in after["chunk"]] == [third]
    # Still not a member: no sending, no joined-member list.
    await bob.send(room, "lurker speaks", expect=403)
    await bob.call("GET", f"/rooms/{room}/joined_members", expect=403)


async def test_other_rooms_stay_closed_to_non_members(client: Any) -> None:
    alice, bob = await User.new(client, "alice"), await User.new(client, "bob")
    room = await alice.create_room(preset="public_chat")
    event_id = await alice.send(room, "members only")
    paths = [f"/rooms/{room}/messages", f"/rooms/{room}/state", f"/rooms/{room}/state/m.room.create",
             f"/rooms/{room}/context/{event_id}", f"/rooms/{room}/members",
             f"/rooms/{room}/initialSync", "/rooms/!unknown:test.local/initialSync"]
    for path in paths:
        assert (await bob.call("GET", path, expect=403))["errcode"] == "M_FORBIDDEN", path
    # one event: 404, the spec's answer for "not found or not allowed"
    assert (await bob.call("GET", f"/rooms/{room}/event/{event_id}", expect=404))["errcode"] == "M_NOT_FOUND"
    # A room that stops being world_readable closes again.
    readable, _ = await readable_room(alice)
    await bob.call("GET", f"/rooms/{readable}/initialSync")
    await alice.call("PUT", f"/rooms/{readable}/state/m.room.history_visibility", json={"history_visibility": "shared"})
    assert (await bob.call("GET", f"/rooms/{readable}/messages", expect=403))["errcode"] == "M_FORBIDDEN"


async def test_initial_sync_of_members_and_of_those_who_left(client: Any) -> None:
    alice, bob = await User.new(client, "alice"), await User.new(client, "bob")
    room = await alice.create_room(preset="public_chat", visibility="public")
    await bob.call("POST", f"/join/{room}")
    sent = [await alice.send(room, f"m{i}") for i in range(5)]
    await bob.call("PUT", f"/user/{bob.user_id}/rooms/{room}/tags/u.work", json={"order": 0.5})
    await bob.call("POST", f"/rooms/{room}/receipt/m.read/{sent[3]}", json={})
    await alice.call("POST", f"/rooms/{room}/receipt/m.read.private/{sent[4]}", json={})

    snapshot = await bob.call("GET", f"/rooms/{room}/initialSync", params={"limit": "3"})
    assert snapshot["membership"] == "join" and snapshot["visibility"] == "public"
    assert bodies(snapshot["messages"]["chunk"]) == ["m2", "m3", "m4"]
    assert {"type": "m.tag", "content": {"tags": {"u.work": {"order": 0.5}}}} in snapshot["account_data"]
    [receipts] = snapshot["receipts"]  # alice's private receipt is hers alone
    assert receipts["type"] == "m.receipt" and receipts["room_id"] == room
    assert list(receipts["content"]) == [sent[3]] and bob.user_id in receipts["content"][sent[3]]["m.read"]
    # members see the members' presence (a peeker, above, none)
    assert {e["sender"] for e in snapshot["presence"]} == {alice.user_id, bob.user_id}  # both sent events
    assert all(e["type"] == "m.presence" for e in snapshot["presence"])
    earlier = await bob.call("GET", f"/rooms/{room}/messages",
                             params={"dir": "b", "from": snapshot["messages"]["start"], "limit": "2"})
    assert bodies(earlier["chunk"]) == ["m1", "m0"]

    await bob.call("POST", f"/rooms/{room}/leave")
    await alice.send(room, "after bob left")
    await alice.call("PUT", f"/rooms/{room}/state/m.room.topic", json={"topic": "new topic"})
    left = await bob.call("GET", f"/rooms/{room}/initialSync")
    assert left["membership"] == "leave"
    assert "after bob left" not in bodies(left["messages"]["chunk"])
    assert bodies(left["messages"]["chunk"])[-1] == "m4"  # the last he saw while there
    assert "m.room.topic" not in {e["type"] for e in left["state"]}
    assert left["receipts"] == [] and left["presence"] == []
    await bob.call("GET", f"/rooms/{room}/initialSync", params={"limit": "x"}, expect=400)


async def test_peek_events_follow_a_world_readable_room(client: Any) -> None:
    """GET /events?room_id= after /initialSync: how a room preview follows the room (long-polled)."""
    alice, bob = await User.new(client, "alice"), await User.new(client, "bob")
    room, _ = await readable_room(alice)
    end = (await bob.call("GET", f"/rooms/{room}/initialSync"))["messages"]["end"]
    quiet = await bob.call("GET", "/events", params={"room_id": room, "from": end, "timeout": "0"})
    assert quiet["chunk"] == [] and quiet["start"] == end

    poll = asyncio.create_task(bob.call("GET", "/events", params={"room_id": room, "from": quiet["end"],
                                                                  "timeout": "10000"}))
    await asyncio.sleep(0.2)
    assert not poll.done()
    sent = await alice.send(room, "three")
    woken = await asyncio.wait_for(poll, 5)
    assert [e["event_id"] for e in woken["chunk"]] == [sent]
    # Receipts and typing of the room come the same way.
    await alice.call("POST", f"/rooms/{room}/receipt/m.read/{sent}", json={})
    receipt = await bob.call("GET", "/events", params={"room_id": room, "from": woken["end"], "timeout": "5000"})
    [event] = receipt["chunk"]
    assert event["type"] == "m.receipt" and event["room_id"] == room
    assert alice.user_id in event["content"][sent]["m.read"]
    await alice.call("PUT", f"/rooms/{room}/typing/{alice.user_id}", json={"typing": True, "timeout": 10000})
    typing = await bob.call("GET", "/events", params={"room_id": room, "from": receipt["end"], "timeout": "5000"})
    assert typing["chunk"] == [{"type": "m.typing", "room_id": room, "content": {"user_ids": [alice.user_id]}}]
    after = await bob.call("GET", "/events", params={"room_id": room, "from": typing["end"], "timeout": "0"})
    assert after["chunk"] == []

    # Without `from`: from now on. Other rooms stay closed; room_id is required.
    assert (await bob.call("GET", "/events", params={"room_id": room, "timeout": "0"}))["chunk"] == []
    closed = await alice.create_room(preset="public_chat")
    assert (await bob.call("GET", "/events", params={"room_id": closed}, expect=403))["errcode"] == "M_FORBIDDEN"
    assert (await bob.call("GET", "/events", expect=400))["errcode"] == "M_MISSING_PARAM"
    assert (await bob.call("GET", "/events", params={"room_id": room, "timeout": "soon"}, expect=400))["errcode"] \
        == "M_INVALID_PARAM"


async def test_matrix_nio_peeks_into_a_world_readable_room(client: Any) -> None:
    alice = await User.new(client, "alice")
    room, _ = await readable_room(alice)
    reg = await register(client, "nio")
    peeker = nio.AsyncClient(str(client.server.make_url("")).rstrip("/"), reg["user_id"])
    peeker.restore_login(reg["user_id"], reg["device_id"], reg["access_token"])
    try:
        page = await peeker.room_messages(room, start="", limit=10)
        assert isinstance(page, nio.RoomMessagesResponse), page
        assert [e.body for e in page.chunk if isinstance(e, nio.RoomMessageText)] == ["two", "one"]
        state = await peeker.room_get_state(room)
        assert isinstance(state, nio.RoomGetStateResponse), state
        assert any(e["type"] == "m.room.name" and e["content"]["name"] == "lobby" for e in state.events)
        name = await peeker.room_get_state_event(room, "m.room.name")
        assert isinstance(name, nio.RoomGetStateEventResponse) and name.content["name"] == "lobby"
    finally:
        await peeker.close()


# --- guests ------------------------------------------------------------------------------


async def guest(client: Any, **body: Any) -> User:
    resp = await client.post(f"{V3}/register", params={"kind": "guest"}, json=body)
    assert resp.status == 200, await resp.text()
    return User(client, await resp.json())


async def test_guest_registration_is_off_by_default(client: Any) -> None:
    resp = await client.post(f"{V3}/register", params={"kind": "guest"}, json={})
    assert resp.status == 403
    assert (await resp.json())["errcode"] == "M_GUEST_ACCESS_FORBIDDEN"
    resp = await client.post(f"{V3}/register", params={"kind": "robot"}, json={})
    assert resp.status == 400 and (await resp.json())["errcode"] == "M_INVALID_PARAM"


async def test_guests_do_not_depend_on_open_registration(serve: Any) -> None:
    client = await serve(registration={"enabled": False, "allow_guest_access": True})
    await guest(client)
    resp = await client.post(f"{V3}/register", json={"username": "someone", "password": "correct horse"})
    assert resp.status == 403 and (await resp.json())["errcode"] == "M_FORBIDDEN"


async def test_a_guest_account_and_its_limited_api(serve: Any) -> None:
    client = await serve(**GUESTS_ON)
    # Everything but the device's display name is ignored: the server picks the names.
    g = await guest(client, username="chosen", password="ignored", device_id="MINE",
                    initial_device_display_name="guest phone")
    assert g.user_id.startswith("@guest_") and g.user_id.endswith(":test.local")
    assert (await g.call("GET", "/account/whoami"))["is_guest"] is True
    devices = (await g.call("GET", "/devices"))["devices"]
    assert [d["display_name"] for d in devices] == ["guest phone"] and devices[0]["device_id"] != "MINE"
    other = await guest(client)
    assert other.user_id != g.user_id
    assert (await login(client, g.user_id, "ignored")).status == 403  # no password

    await g.call("GET", "/sync", params={"timeout": "0"})
    stream = await client.get("/_matrix/client/unstable/org.whispr/sync/stream", headers=g.h)
    assert stream.status == 200 and stream.headers["Content-Type"].startswith("text/event-stream")
    stream.close()
    await g.call("GET", "/capabilities")
    await g.call("PUT", f"/profile/{g.user_id}/displayname", json={"displayname": "Visitor"})
    denied = [("POST", "/createRoom", {}), ("PUT", f"/profile/{g.user_id}/avatar_url", {"avatar_url": "mxc://a/b"}),
              ("PUT", f"/user/{g.user_id}/account_data/x.y", {}), ("POST", f"/user/{g.user_id}/filter", {}),
              ("POST", "/account/password", {"new_password": "x"}), ("POST", "/account/deactivate", {}),
              ("POST", "/user_directory/search", {"search_term": "a"}), ("GET", "/account/3pid", None)]
    for method, path, body in denied:
        answer = await g.call(method, path, expect=403, json=body)
        assert answer["errcode"] == "M_GUEST_ACCESS_FORBIDDEN", (method, path)

    alice = await User.new(client, "alice")
    room, _ = await readable_room(alice)
    # Peeking works for guests as for anyone; joining needs the room's consent.
    assert bodies((await g.call("GET", f"/rooms/{room}/initialSync"))["messages"]["chunk"]) == ["one", "two"]
    await g.call("GET", "/events", params={"room_id": room, "timeout": "0"})
    assert (await g.call("POST", f"/rooms/{room}/join", expect=403))["errcode"] == "M_GUEST_ACCESS_FORBIDDEN"
    await alice.call("PUT", f"/rooms/{room}/state/m.room.guest_access", json={"guest_access": "forbidden"})
    assert (await g.call("POST", f"/join/{room}", expect=403))["errcode"] == "M_GUEST_ACCESS_FORBIDDEN"
    await alice.call("PUT", f"/rooms/{room}/state/m.room.guest_access", json={"guest_access": "can_join"})
    await g.call("POST", f"/rooms/{room}/join")
    member = await alice.call("GET", f"/rooms/{room}/state/m.room.member/{g.user_id}")
    assert member["membership"] == "join" and member["kind"] == "guest"
    await g.send(room, "hello from a guest")
    await g.call("PUT", f"/rooms/{room}/state/m.room.member/{g.user_id}",
                 json={"membership": "join", "displayname": "Visitor here"})  # state, within the power levels
    assert (await g.call("POST", f"/rooms/{room}/invite", expect=403, json={"user_id": alice.user_id}))["errcode"] \
        == "M_GUEST_ACCESS_FORBIDDEN"
    await g.call("POST", f"/rooms/{room}/leave")


async def test_guests_leave_a_room_that_stops_letting_them_in(serve: Any) -> None:
    client = await serve(**GUESTS_ON)
    alice, g1, g2 = await User.new(client, "alice"), await guest(client), await guest(client)
    bob = await User.new(client, "bob")
    room = await alice.create_room(preset="public_chat")
    await alice.call("PUT", f"/rooms/{room}/state/m.room.guest_access", json={"guest_access": "can_join"})
    for member in (g1, g2, bob):
        await member.call("POST", f"/rooms/{room}/join")
    g3 = await guest(client)
    await alice.call("POST", f"/rooms/{room}/invite", json={"user_id": g3.user_id})
    await alice.call("PUT", f"/rooms/{room}/state/m.room.guest_access", json={"guest_access": "forbidden"})
    for _ in range(100):
        state = await alice.call("GET", f"/rooms/{room}/state")
        memberships = {e["state_key"]: e["content"]["membership"] for e in state if e["type"] == "m.room.member"}
        if memberships[g1.user_id] == memberships[g2.user_id] == memberships[g3.user_id] == "leave":
            break
        await asyncio.sleep(0.05)
    assert memberships == {alice.user_id: "join", bob.user_id: "join", g1.user_id: "leave", g2.user_id: "leave",
                           g3.user_id: "leave"}  # the invited guest declined


async def test_a_guest_upgrades_to_a_full_account(serve: Any) -> None:
    client = await serve(**GUESTS_ON)
    g = await guest(client)
    localpart = g.user_id[1:].split(":")[0]
    alice = await User.new(client, "alice")
    room = await alice.create_room(preset="public_chat")
    await alice.call("PUT", f"/rooms/{room}/state/m.room.guest_access", json={"guest_access": "can_join"})
    await g.call("POST", f"/rooms/{room}/join")

    # Someone else's name, or a token that is not a guest's, is refused.
    other = await guest(client)
    for body, code in [({"username": other.user_id[1:].split(":")[0]}, "M_USER_IN_USE"),
                       ({"username": "free_name"}, "M_INVALID_PARAM")]:
        resp = await client.post(f"{V3}/register", json={"guest_access_token": g.token, "password": "pw pw pw",
                                                        "auth": {"type": "m.login.dummy"}, **body})
        assert resp.status == 400 and (await resp.json())["errcode"] == code, await resp.text()
    resp = await client.post(f"{V3}/register", json={"guest_access_token": alice.token, "password": "pw pw pw",
                                                    "auth": {"type": "m.login.dummy"}})
    assert resp.status == 400 and (await resp.json())["errcode"] == "M_USER_IN_USE"

    # The ordinary flow: a UIA round, whose session keeps the parameters.
    first = await client.post(f"{V3}/register", json={"guest_access_token": g.token, "username": localpart,
                                                     "password": "correct horse"})
    assert first.status == 401
    session = (await first.json())["session"]
    done = await client.post(f"{V3}/register", json={"auth": {"type": "m.login.dummy", "session": session}})
    assert done.status == 200, await done.text()
    full = await done.json()
    assert full["user_id"] == g.user_id
    upgraded = User(client, full)
    assert (await upgraded.call("GET", "/account/whoami"))["is_guest"] is False
    await upgraded.create_room()  # the full API
    assert room in (await upgraded.call("GET", "/joined_rooms"))["joined_rooms"]  # keeps its rooms
    old = await client.get(f"{V3}/account/whoami", headers=auth(g.token))
    assert old.status == 401 and (await old.json())["errcode"] == "M_UNKNOWN_TOKEN"
    assert (await login(client, localpart, "correct horse")).status == 200
    # Once upgraded, it is no guest any more: the upgrade cannot run twice.
    again = await client.post(f"{V3}/register", json={"guest_access_token": upgraded.token, "password": "x y z w",
                                                     "auth": {"type": "m.login.dummy"}})
    assert again.status == 400 and (await again.json())["errcode"] == "M_USER_IN_USE"


async def test_matrix_nio_as_a_guest(serve: Any) -> None:
    """A guest's token in a real client: sync, join a room that lets guests in, send; no room creation."""
    client = await serve(**GUESTS_ON)
    alice = await User.new(client, "alice")
    room = await alice.create_room(preset="public_chat")
    await alice.call("PUT", f"/rooms/{room}/state/m.room.guest_access", json={"guest_access": "can_join"})
    g = await guest(client)
    reg = await (await client.get(f"{V3}/account/whoami", headers=auth(g.token))).json()
    nio_guest = nio.AsyncClient(str(client.server.make_url("")).rstrip("/"), g.user_id)
    nio_guest.restore_login(g.user_id, reg["device_id"], g.token)
    try:
        assert isinstance(await nio_guest.sync(timeout=0), nio.SyncResponse)
        assert isinstance(await nio_guest.join(room), nio.JoinResponse)
        sent = await nio_guest.room_send(room, "m.room.message", {"msgtype": "m.text", "body": "hi, guest here"})
        assert isinstance(sent, nio.RoomSendResponse), sent
        synced = await nio_guest.sync(timeout=0, sync_filter={"room": {"timeline": {"limit": 20}}})
        assert isinstance(synced, nio.SyncResponse) and room in nio_guest.rooms
        refused = await nio_guest.room_create(name="mine")
        assert isinstance(refused, nio.RoomCreateError) and refused.status_code == "M_GUEST_ACCESS_FORBIDDEN"
    finally:
        await nio_guest.close()
    chunk = (await alice.call("GET", f"/rooms/{room}/messages", params={"dir": "b"}))["chunk"]
    assert "hi, guest here" in bodies(chunk)


async def test_guest_records_in_storage(store: Store) -> None:
    """guests_among answers for a room of any size; upgrade_guest succeeds once, and never for a non-guest."""
    accounts = [Account(f"@g{i}:test.local", f"g{i}", None, 1, is_guest=i % 300 == 0) for i in range(1200)]
    for account in accounts:
        assert await store.users.create(account)
    guests = [a.user_id for a in accounts if a.is_guest]
    assert sorted(await store.users.guests_among([a.user_id for a in accounts])) == sorted(guests)
    assert await store.users.guests_among([]) == []
    assert await store.users.upgrade_guest(guests[0], "hash")
    assert not await store.users.upgrade_guest(guests[0], "other hash")
    assert not await store.users.upgrade_guest(accounts[1].user_id, "hash")
    upgraded = await store.users.get(guests[0])
    assert upgraded is not None and not upgraded.is_guest and upgraded.password_hash == "hash"


async def test_a_guest_upgrades_with_a_verified_email(serve: Any, smtp: Any) -> None:
    """Where registration needs a verified email, so does the upgrade; the address lands on the account."""
    client = await serve(smtp_port=smtp.port, registration={"require_email_verification": True,
                                                            "allow_guest_access": True})
    g = await guest(client)
    secret = new_secret()
    sid = (await (await request_register_token(client, "visitor@example.org", secret)).json())["sid"]
    assert (await submit_code(client, sid, secret, smtp.code_for("visitor@example.org"))).status == 200
    body = {"guest_access_token": g.token, "password": "correct horse"}
    first = await client.post(f"{V3}/register", json=body)
    assert first.status == 401
    session = (await first.json())["session"]
    done = await client.post(f"{V3}/register", json={**body, "auth": {
        "type": "m.login.email.identity", "session": session, "threepid_creds": {"sid": sid, "client_secret": secret}}})
    assert done.status == 200, await done.text()
    upgraded = User(client, await done.json())
    assert upgraded.user_id == g.user_id
    [address] = (await upgraded.call("GET", "/account/3pid"))["threepids"]
    assert address["address"] == "visitor@example.org" and address["medium"] == "email"


async def test_element_sdk_as_a_guest_peeks_then_joins(serve: Any) -> None:
    """matrix-js-sdk: registerGuest, peekInRoom (initialSync, then /events for a live message),
    joinRoom and send; createRoom refused."""
    client = await serve(**GUESTS_ON)
    alice = await User.new(client, "alice")
    room, _ = await readable_room(alice)
    await alice.call("PUT", f"/rooms/{room}/state/m.room.guest_access", json={"guest_access": "can_join"})
    seen = await run_script("peek_and_guest.mjs", str(client.server.make_url("")).rstrip("/"), room, alice.token,
                            alice.user_id)
    assert seen["room_name"] == "lobby" and seen["peeked"] == ["one", "two"]
    assert seen["live"] == ["one", "two", "live"]
    assert seen["refused"] == "M_GUEST_ACCESS_FORBIDDEN"
    chunk = (await alice.call("GET", f"/rooms/{room}/messages", params={"dir": "b"}))["chunk"]
    assert bodies(chunk)[0] == "guest via js"
    member = await alice.call("GET", f"/rooms/{room}/state/m.room.member/{seen['user_id']}")
    assert member["membership"] == "join" and member["kind"] == "guest"
