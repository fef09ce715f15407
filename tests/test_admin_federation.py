"""Shutting down a federated room with the admin API, between two real Whispr servers: the local members'
leaves reach the other server, the purged room stays gone when the other server keeps talking in it, and
the block keeps local users from joining it again through the other server."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
from typing import Any
from urllib.parse import quote

import aiohttp

from tests.test_federation_whispr import Client, federation_config, membership_in_timeline, users_on_both
from bench.servers import PostgresAdmin, RunningServer, free_port, start_whispr
from tests.conftest import POSTGRES_URL, need

SECRET = "federated admin secret"


async def admin_on(session: aiohttp.ClientSession, server: RunningServer) -> Client:
    url = server.base_url + "/_synapse/admin/v1/register"
    nonce = (await (await session.get(url)).json())["nonce"]
    mac = hmac.new(SECRET.encode(), b"\x00".join([nonce.encode(), b"root", b"long enough pw", b"admin"]),
                   hashlib.sha1).hexdigest()
    resp = await session.post(url, json={"nonce": nonce, "username": "root", "password": "long enough pw",
                                         "admin": True, "mac": mac})
    body = await resp.json()
    assert resp.status == 200, body
    return Client(session, server, body["user_id"], body["access_token"])


async def test_shutdown_of_a_federated_room() -> None:
    need(POSTGRES_URL, "postgres")
    extra = {**federation_config(), "registration_shared_secret": SECRET}
    port_a, port_b = free_port(), free_port()
    a = await asyncio.to_thread(start_whispr, server_name=f"127.0.0.1:{port_a}", extra_config=extra)
    try:
        b = await asyncio.to_thread(start_whispr, server_name=f"127.0.0.1:{port_b}", db="postgres",
                                    pg=PostgresAdmin(POSTGRES_URL), extra_config=federation_config())
    except BaseException:
        a.stop()
        raise
    try:
        await _story(a, b)
    finally:
        await asyncio.gather(asyncio.to_thread(a.stop), asyncio.to_thread(b.stop))


async def _story(a: RunningServer, b: RunningServer) -> None:
    async with aiohttp.ClientSession() as session:
        alice, bob = await users_on_both(session, a, "alice", b, "bob")
        root = await admin_on(session, a)
        # bob's room on B; alice of A joins it
        room = (await bob.call("POST", "/createRoom", json={"name": "B's room", "preset": "public_chat"}))["room_id"]
        await alice.call("POST", f"/join/{quote(room)}", json={"server_name": [b.server_name]},
                         params={"server_name": b.server_name})
        await bob.sync_until(membership_in_timeline(room, alice.user_id, "join"))
        await alice.send(room, "hello from A")

        admin = f"{a.base_url}/_synapse/admin"
        resp = await session.delete(f"{admin}/v2/rooms/{quote(room)}", headers=root.h,
                                    json={"block": True, "purge": True})
        delete_id = (await resp.json())["delete_id"]
        deadline = time.monotonic() + 30
        status: dict[str, Any] = {}
        while time.monotonic() < deadline:
            status = await (await session.get(f"{admin}/v2/rooms/delete_status/{delete_id}", headers=root.h)).json()
            if status["status"] in ("complete", "failed"):
                break
            await asyncio.sleep(0.1)
        assert status["status"] == "complete", status
        assert status["shutdown_room"]["kicked_users"] == [alice.user_id]

        # B hears of alice's leave; its room lives on
        await bob.sync_until(membership_in_timeline(room, alice.user_id, "leave"))
        await bob.send(room, "still here")
        await asyncio.sleep(1)
        # A holds nothing of the room, and alice cannot go back in
        resp = await session.get(f"{admin}/v1/rooms/{quote(room)}", headers=root.h)
        assert resp.status == 404, await resp.text()
        await alice.call("POST", f"/join/{quote(room)}", expect=403, params={"server_name": b.server_name})
        joined = await alice.call("GET", "/joined_rooms")
        assert room not in joined["joined_rooms"]
