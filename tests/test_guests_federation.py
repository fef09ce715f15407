"""Guests and rooms of other servers: m.room.guest_access decides joins over federation too, and a
change of it received over federation makes local guests leave (two Whispr servers)."""

from __future__ import annotations

import asyncio
from typing import Any, AsyncIterator

import aiohttp
import pytest

from bench.servers import PostgresAdmin, RunningServer, free_port, start_whispr
from tests.conftest import POSTGRES_URL, need
from tests.test_federation_whispr import V3, Client, federation_config, membership_in_timeline


@pytest.fixture
async def pair() -> AsyncIterator[tuple[RunningServer, RunningServer]]:
    """Server A on SQLite; server B, with guests, on PostgreSQL."""
    need(POSTGRES_URL, "postgres")
    port_a, port_b = free_port(), free_port()
    a = await asyncio.to_thread(start_whispr, server_name=f"127.0.0.1:{port_a}", extra_config=federation_config())
    try:
        b = await asyncio.to_thread(start_whispr, server_name=f"127.0.0.1:{port_b}", db="postgres",
                                    pg=PostgresAdmin(POSTGRES_URL),
                                    extra_config={**federation_config(),
                                                  "registration": {"allow_guest_access": True}})
    except BaseException:
        a.stop()
        raise
    try:
        yield a, b
    finally:
        await asyncio.gather(asyncio.to_thread(a.stop), asyncio.to_thread(b.stop))


async def register_guest(session: aiohttp.ClientSession, server: RunningServer) -> Client:
    resp = await session.post(server.base_url + V3 + "/register", params={"kind": "guest"}, json={})
    body: dict[str, Any] = await resp.json()
    assert resp.status == 200, body
    return Client(session, server, body["user_id"], body["access_token"])


async def test_guests_in_rooms_of_another_server(pair: tuple[RunningServer, RunningServer]) -> None:
    """A guest of B joins A's room that lets guests in, is refused (and out again) where it does not,
    and leaves when a change received from A shuts guests out."""
    a, b = pair
    async with aiohttp.ClientSession() as session:
        alice, bob = await Client.register(session, a, "alice"), await Client.register(session, b, "bob")
        room = (await alice.call("POST", "/createRoom", json={"preset": "public_chat"}))["room_id"]
        await alice.call("PUT", f"/rooms/{room}/state/m.room.guest_access", json={"guest_access": "can_join"})
        closed = (await alice.call("POST", "/createRoom", json={"preset": "public_chat"}))["room_id"]
        await alice.call("PUT", f"/rooms/{closed}/state/m.room.guest_access", json={"guest_access": "forbidden"})

        guest = await register_guest(session, b)
        # B is in neither room: what they allow shows in the state the join brings.
        refused = await guest.call("POST", f"/join/{closed}", expect=403)
        assert refused["errcode"] == "M_GUEST_ACCESS_FORBIDDEN"
        await alice.sync_until(membership_in_timeline(closed, guest.user_id, "leave"))
        await guest.call("POST", f"/join/{room}")
        await bob.call("POST", f"/join/{room}")
        await alice.sync_until(membership_in_timeline(room, bob.user_id, "join"))
        member = await alice.call("GET", f"/rooms/{room}/state/m.room.member/{guest.user_id}")
        assert member["membership"] == "join" and member["kind"] == "guest"

        # An invite into a private room that lets guests in is accepted.
        private = (await alice.call("POST", "/createRoom", json={"preset": "private_chat"}))["room_id"]
        await alice.call("PUT", f"/rooms/{private}/state/m.room.guest_access", json={"guest_access": "can_join"})
        await alice.call("POST", f"/rooms/{private}/invite", json={"user_id": guest.user_id})
        await guest.sync_until(lambda body: private in body["rooms"]["invite"])
        await guest.call("POST", f"/rooms/{private}/join")
        await alice.sync_until(membership_in_timeline(private, guest.user_id, "join"))

        await alice.call("PUT", f"/rooms/{room}/state/m.room.guest_access", json={"guest_access": "forbidden"})
        await alice.sync_until(membership_in_timeline(room, guest.user_id, "leave"))
        members = await bob.call("GET", f"/rooms/{room}/joined_members")
        assert set(members["joined"]) == {alice.user_id, bob.user_id}
