"""matrix-nio sees notification counts and highlights from the push rules in /sync, and a read
receipt clears them (the real server process, SQLite and PostgreSQL + Redis)."""

from __future__ import annotations

import asyncio
import secrets

import nio

from tests.test_nio_client import PASSWORD, backend_env, server_url

__all__ = ["backend_env", "server_url"]


async def test_nio_sees_counts_and_highlights(server_url: str) -> None:
    alice = nio.AsyncClient(server_url, "pa_" + secrets.token_hex(3))
    bob = nio.AsyncClient(server_url, "pb_" + secrets.token_hex(3))
    try:
        for c in (alice, bob):
            assert isinstance(await c.register(c.user, PASSWORD), nio.RegisterResponse)
        created = await alice.room_create(invite=[bob.user_id])
        assert isinstance(created, nio.RoomCreateResponse), created
        room = created.room_id
        await bob.sync(timeout=0)
        assert isinstance(await bob.join(room), nio.JoinResponse)
        first = await bob.sync(timeout=0, full_state=True)
        assert isinstance(first, nio.SyncResponse)
        await alice.room_send(room, "m.room.message", {"msgtype": "m.text", "body": "hello"})
        sent = await alice.room_send(room, "m.room.message", {"msgtype": "m.text", "body": "look",
                                                              "m.mentions": {"user_ids": [bob.user_id]}})
        assert isinstance(sent, nio.RoomSendResponse), sent
        await bob.sync(timeout=0)
        assert (bob.rooms[room].unread_notifications, bob.rooms[room].unread_highlights) == (2, 1)
        assert isinstance(await bob.room_read_markers(room, sent.event_id, sent.event_id),
                          nio.RoomReadMarkersResponse)
        for _ in range(20):
            await bob.sync(timeout=0)
            if bob.rooms[room].unread_notifications == 0:
                break
            await asyncio.sleep(0.1)
        assert (bob.rooms[room].unread_notifications, bob.rooms[room].unread_highlights) == (0, 0)
    finally:
        await asyncio.gather(alice.close(), bob.close())
