"""Push evaluation of events received over federation, between two Whispr servers (SQLite and
PostgreSQL): a remote invite notifies the invitee, and remote messages count and highlight."""

from __future__ import annotations

import asyncio
import time

import aiohttp

from bench.servers import RunningServer
from tests.test_federation_whispr import Client, membership_in_timeline, pair, users_on_both

__all__ = ["pair"]


async def notifications_until(client: Client, want: int, timeout: float = 30) -> list[dict]:
    deadline = time.monotonic() + timeout
    while True:
        found = (await client.call("GET", "/notifications"))["notifications"]
        if len(found) >= want or time.monotonic() > deadline:
            return found
        await asyncio.sleep(0.2)


async def test_remote_events_notify_local_users(pair: tuple[RunningServer, RunningServer]) -> None:
    a, b = pair
    async with aiohttp.ClientSession() as session:
        alice, bob = await users_on_both(session, a, "alice", b, "bob")
        room = (await alice.call("POST", "/createRoom", json={"preset": "private_chat"}))["room_id"]
        await alice.call("POST", f"/rooms/{room}/invite", json={"user_id": bob.user_id})
        invites = await notifications_until(bob, 1)
        assert [(n["event"]["type"], n["event"]["state_key"]) for n in invites] == [("m.room.member", bob.user_id)]
        await bob.call("POST", f"/join/{room}")
        await alice.sync_until(membership_in_timeline(room, bob.user_id, "join"))
        await alice.send(room, "hello over federation")
        await alice.call("PUT", f"/rooms/{room}/send/m.room.message/mention1",
                         json={"msgtype": "m.text", "body": "bob!", "m.mentions": {"user_ids": [bob.user_id]}})
        body = await bob.sync_until(lambda body: any(
            e.get("content", {}).get("body") == "bob!"
            for e in body["rooms"]["join"].get(room, {}).get("timeline", {}).get("events", [])))
        counts = body["rooms"]["join"][room]["unread_notifications"]
        assert counts == {"notification_count": 2, "highlight_count": 1}
        found = await notifications_until(bob, 3)
        assert [n["event"]["content"].get("body") for n in found[:2]] == ["bob!", "hello over federation"]
