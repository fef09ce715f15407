"""Rooms of versions 1 to 12 across two Whispr servers (SQLite and PostgreSQL): created on one,
joined from the other, messages and redactions both ways. One pair of servers for every version."""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import quote

import aiohttp

from bench.servers import RunningServer
from homeserver.events.room_versions import KNOWN_ROOM_VERSIONS
from tests.test_federation_whispr import Client, membership_in_timeline, pair, users_on_both  # noqa: F401


def q(event_id: str) -> str:
    return quote(event_id, safe="")


def redacted_in(room: str, event_id: str) -> Any:
    """A sync_until check: a redaction of `event_id` arrived in the room's timeline."""
    def check(body: dict[str, Any]) -> bool:
        events = body["rooms"]["join"].get(room, {}).get("timeline", {}).get("events", [])
        return any(e["type"] == "m.room.redaction" and e.get("redacts") == event_id for e in events)
    return check


async def converse(owner: Client, guest: Client, version: str) -> None:
    """owner's server holds a room of `version`; guest joins from the other server; both talk and redact."""
    room = (await owner.call("POST", "/createRoom", json={"preset": "public_chat", "room_version": version}))[
        "room_id"]
    await guest.call("POST", f"/join/{q(room)}", params={"server_name": owner.user_id.split(":", 1)[1]}, json={})
    await owner.sync_until(membership_in_timeline(room, guest.user_id, "join"))
    mine = await owner.send(room, f"from owner v{version}")
    assert await guest.collect_messages(room, 1) == [f"from owner v{version}"]
    theirs = await guest.send(room, f"from guest v{version}")
    assert await owner.collect_messages(room, 1) == [f"from guest v{version}"]
    # The guest redacts their own event; the owner (power 100) redacts the guest's second one.
    await guest.call("PUT", f"/rooms/{q(room)}/redact/{q(theirs)}/own{version}", json={})
    await owner.sync_until(redacted_in(room, theirs))
    second = await guest.send(room, "second")
    await owner.collect_messages(room, 1)
    await owner.call("PUT", f"/rooms/{q(room)}/redact/{q(second)}/mod{version}", json={})
    await guest.sync_until(redacted_in(room, second))
    for user in (owner, guest):
        for event_id in (theirs, second):
            assert (await user.call("GET", f"/rooms/{q(room)}/event/{q(event_id)}"))["content"] == {}
        assert (await user.call("GET", f"/rooms/{q(room)}/event/{q(mine)}"))["content"]["body"]
    if not KNOWN_ROOM_VERSIONS[version].strict_canonical_json:  # v1-v5: floats travel and verify
        await owner.call("PUT", f"/rooms/{q(room)}/send/m.room.message/float{version}",
                         json={"msgtype": "m.text", "body": "4.5 stars", "rating": 4.5})

        def rated(body: dict[str, Any]) -> bool:
            events = body["rooms"]["join"].get(room, {}).get("timeline", {}).get("events", [])
            return any(e["content"].get("rating") == 4.5 for e in events)
        await guest.sync_until(rated)
    # The guest may not redact the owner's event (403 on its own server, before anything is sent).
    await guest.call("PUT", f"/rooms/{q(room)}/redact/{q(mine)}/no{version}", json={}, expect=403)
    await guest.call("POST", f"/rooms/{q(room)}/leave", json={})
    await owner.sync_until(membership_in_timeline(room, guest.user_id, "leave"))


async def test_every_room_version_between_two_whispr_servers(pair: tuple[RunningServer, RunningServer]) -> None:
    a, b = pair
    async with aiohttp.ClientSession() as session:
        alice, bob = await users_on_both(session, a, "alice", b, "bob")
        for version in KNOWN_ROOM_VERSIONS:
            started = time.monotonic()
            await converse(alice, bob, version)  # a room on A (SQLite), joined from B
            await converse(bob, alice, version)  # a room on B (PostgreSQL), joined from A
            print(f"v{version}: {time.monotonic() - started:.1f} s")


async def knock_across(owner: Client, guest: Client, version: str, retract: bool = True) -> None:
    """guest knocks from another server on owner's knock room; owner sees it and invites; guest joins.
    Then (with `retract`) a second knock is retracted: a leave through the resident server."""
    server = owner.user_id.split(":", 1)[1]
    room = (await owner.call("POST", "/createRoom", json={
        "preset": "private_chat", "room_version": version, "name": f"knock v{version}",
        "initial_state": [{"type": "m.room.join_rules", "content": {"join_rule": "knock"}}]}))["room_id"]
    await guest.call("POST", f"/join/{q(room)}", params={"server_name": server}, json={}, expect=403)
    await guest.call("POST", f"/knock/{q(room)}", params={"via": server}, json={"reason": "please"})
    knocked = await guest.sync_until(lambda body: room in body.get("rooms", {}).get("knock", {}))
    shown = {e["type"]: e for e in knocked["rooms"]["knock"][room]["knock_state"]["events"]}
    assert shown["m.room.name"]["content"]["name"] == f"knock v{version}"
    assert shown["m.room.member"]["content"]["membership"] == "knock"
    await owner.sync_until(membership_in_timeline(room, guest.user_id, "knock"))
    await owner.call("POST", f"/rooms/{q(room)}/invite", json={"user_id": guest.user_id})
    await guest.sync_until(lambda body: room in body["rooms"].get("invite", {}))
    await guest.call("POST", f"/join/{q(room)}", params={"server_name": server}, json={})
    await owner.sync_until(membership_in_timeline(room, guest.user_id, "join"))
    await guest.send(room, "knocked and joined")
    assert await owner.collect_messages(room, 1) == ["knocked and joined"]
    await guest.call("POST", f"/rooms/{q(room)}/leave", json={})
    await owner.sync_until(membership_in_timeline(room, guest.user_id, "leave"))
    if not retract:
        return
    # A knock retracted before anyone answers it.
    await guest.call("POST", f"/knock/{q(room)}", params={"via": server}, json={})
    await owner.sync_until(membership_in_timeline(room, guest.user_id, "knock"))
    await guest.call("POST", f"/rooms/{q(room)}/leave", json={})
    await owner.sync_until(membership_in_timeline(room, guest.user_id, "leave"))


async def test_knocking_between_two_whispr_servers(pair: tuple[RunningServer, RunningServer]) -> None:
    a, b = pair
    async with aiohttp.ClientSession() as session:
        alice, bob = await users_on_both(session, a, "alice", b, "bob")
        for version in ("7", "9", "12"):
            await knock_across(alice, bob, version)
            await knock_across(bob, alice, version)
        # A room version without knocking refuses it over federation too.
        old = (await alice.call("POST", "/createRoom", json={
            "room_version": "6", "initial_state": [{"type": "m.room.join_rules",
                                                    "content": {"join_rule": "knock"}}]}))["room_id"]
        await bob.call("POST", f"/knock/{q(old)}", params={"via": a.server_name}, json={}, expect=400)


async def restricted_across(owner: Client, guest: Client, version: str) -> None:
    """owner's server holds a space and a room restricted to its members; guest, on the other server,
    is refused until they join the space, then joins with one of owner's users vouching."""
    server = owner.user_id.split(":", 1)[1]
    space = (await owner.call("POST", "/createRoom", json={"preset": "public_chat", "room_version": version}))[
        "room_id"]
    room = (await owner.call("POST", "/createRoom", json={
        "preset": "private_chat", "room_version": version,
        "initial_state": [{"type": "m.room.join_rules", "content": {
            "join_rule": "restricted", "allow": [{"type": "m.room_membership", "room_id": space}]}}]}))["room_id"]
    refused = await guest.session.post(guest.server.base_url + f"/_matrix/client/v3/join/{q(room)}",
                                       params={"server_name": server}, json={}, headers=guest.h)
    assert refused.status == 403, await refused.text()
    await guest.call("POST", f"/join/{q(space)}", params={"server_name": server}, json={})
    await owner.sync_until(membership_in_timeline(space, guest.user_id, "join"))
    await guest.call("POST", f"/join/{q(room)}", params={"server_name": server}, json={})
    await owner.sync_until(membership_in_timeline(room, guest.user_id, "join"))
    member = await owner.call("GET", f"/rooms/{q(room)}/state/m.room.member/{q(guest.user_id)}")
    assert member["join_authorised_via_users_server"] == owner.user_id
    await guest.send(room, f"restricted v{version}")
    assert await owner.collect_messages(room, 1) == [f"restricted v{version}"]
    await owner.send(room, "welcome")
    assert "welcome" in await guest.collect_messages(room, 1)


async def test_restricted_joins_between_two_whispr_servers(pair: tuple[RunningServer, RunningServer]) -> None:
    a, b = pair
    async with aiohttp.ClientSession() as session:
        alice, bob = await users_on_both(session, a, "alice", b, "bob")
        for version in ("8", "9", "10", "12"):
            await restricted_across(alice, bob, version)
            await restricted_across(bob, alice, version)
        # A restricted room whose allowed room the resident server is not in: it cannot tell.
        room = (await alice.call("POST", "/createRoom", json={"room_version": "9", "initial_state": [{
            "type": "m.room.join_rules", "content": {"join_rule": "restricted", "allow": [
                {"type": "m.room_membership", "room_id": "!elsewhere:unknown.example"}]}}]}))["room_id"]
        refused = await bob.call("POST", f"/join/{q(room)}", params={"server_name": a.server_name}, json={},
                                 expect=400)
        assert refused["errcode"] == "M_UNABLE_TO_AUTHORISE_JOIN"


async def knock_refused(owner: Client, guest: Client, version: str) -> None:
    """owner's server kicks a knock from the other server: the knocker's server learns of it (a PDU
    of a room it is not in), and the knocker's sync moves the room from knock to leave."""
    server = owner.user_id.split(":", 1)[1]
    room = (await owner.call("POST", "/createRoom", json={
        "room_version": version, "initial_state": [{"type": "m.room.join_rules",
                                                    "content": {"join_rule": "knock"}}]}))["room_id"]
    await guest.call("POST", f"/knock/{q(room)}", params={"via": server}, json={})
    await guest.sync_until(lambda body: room in body.get("rooms", {}).get("knock", {}))
    await owner.sync_until(membership_in_timeline(room, guest.user_id, "knock"))
    await owner.call("POST", f"/rooms/{q(room)}/kick", json={"user_id": guest.user_id, "reason": "no"})
    await guest.sync_until(lambda body: room in body.get("rooms", {}).get("leave", {}))
    await guest.call("POST", f"/knock/{q(room)}", params={"via": server}, json={})  # may knock again
    await guest.sync_until(lambda body: room in body.get("rooms", {}).get("knock", {}))


async def test_refused_knocks_reach_the_knocker(pair: tuple[RunningServer, RunningServer]) -> None:
    a, b = pair
    async with aiohttp.ClientSession() as session:
        alice, bob = await users_on_both(session, a, "alice", b, "bob")
        await knock_refused(alice, bob, "7")
        await knock_refused(bob, alice, "10")


async def invite_withdrawn(owner: Client, guest: Client, version: str) -> None:
    """owner invites guest of the other server, then withdraws the invite (a kick): guest's server is
    not in the room, yet guest's sync moves the room from invite to leave."""
    room = (await owner.call("POST", "/createRoom", json={"room_version": version}))["room_id"]
    await owner.call("POST", f"/rooms/{q(room)}/invite", json={"user_id": guest.user_id})
    await guest.sync_until(lambda body: room in body.get("rooms", {}).get("invite", {}))
    await owner.call("POST", f"/rooms/{q(room)}/kick", json={"user_id": guest.user_id})
    await guest.sync_until(lambda body: room in body.get("rooms", {}).get("leave", {}))


async def test_withdrawn_invites_reach_the_invitee(pair: tuple[RunningServer, RunningServer]) -> None:
    a, b = pair
    async with aiohttp.ClientSession() as session:
        alice, bob = await users_on_both(session, a, "alice", b, "bob")
        await invite_withdrawn(alice, bob, "1")
        await invite_withdrawn(bob, alice, "10")
