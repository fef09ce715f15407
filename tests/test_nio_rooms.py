"""matrix-nio as a real client: create, invite, join, send, sync, paginate, typing, receipts."""

from __future__ import annotations

import asyncio
from typing import Any

import nio
import pytest

from tests.conftest import register


async def nio_client(client: Any, name: str) -> nio.AsyncClient:
    reg = await register(client, name)
    c = nio.AsyncClient(str(client.server.make_url("")).rstrip("/"), reg["user_id"])
    c.restore_login(reg["user_id"], reg["device_id"], reg["access_token"])
    return c


async def sync_until(c: nio.AsyncClient, predicate: Any, rounds: int = 20) -> None:
    for _ in range(rounds):
        resp = await c.sync(timeout=2000, sync_filter={"room": {"timeline": {"limit": 50}}})
        assert isinstance(resp, nio.SyncResponse), resp
        if predicate():
            return
    pytest.fail("condition never held")


async def test_nio_room_story(client: Any) -> None:
    alice = await nio_client(client, "alice")
    bob = await nio_client(client, "bob")
    try:
        created = await alice.room_create(name="nio room", topic="testing")
        assert isinstance(created, nio.RoomCreateResponse), created
        room_id = created.room_id
        assert isinstance(await alice.room_invite(room_id, bob.user_id), nio.RoomInviteResponse)
        await sync_until(bob, lambda: room_id in bob.invited_rooms)
        assert isinstance(await bob.join(room_id), nio.JoinResponse)
        await sync_until(alice, lambda: room_id in alice.rooms and bob.user_id in alice.rooms[room_id].users)

        received: list[str] = []
        bob.add_event_callback(lambda room, ev: received.append(ev.body), nio.RoomMessageText)
        await sync_until(bob, lambda: room_id in bob.rooms)
        for i in range(12):
            resp = await alice.room_send(room_id, "m.room.message", {"msgtype": "m.text", "body": f"msg {i}"})
            assert isinstance(resp, nio.RoomSendResponse), resp
        await sync_until(bob, lambda: len(received) >= 12)
        assert received[-12:] == [f"msg {i}" for i in range(12)]
        assert bob.rooms[room_id].display_name == "nio room"
        assert bob.rooms[room_id].topic == "testing"

        # paginate backwards from the end of the timeline
        seen: list[str] = []
        token = bob.next_batch
        for _ in range(10):
            page = await bob.room_messages(room_id, start=token, limit=5)
            assert isinstance(page, nio.RoomMessagesResponse), page
            seen += [e.body for e in page.chunk if isinstance(e, nio.RoomMessageText)]
            if not page.end or not page.chunk:
                break
            token = page.end
        assert seen[:12] == [f"msg {i}" for i in range(11, -1, -1)]

        # typing and receipts travel through /sync
        assert isinstance(await alice.room_typing(room_id, True, timeout=10000), nio.RoomTypingResponse)
        await sync_until(bob, lambda: alice.user_id in bob.rooms[room_id].typing_users)
        last = (await alice.room_send(room_id, "m.room.message", {"msgtype": "m.text", "body": "read me"})).event_id
        await sync_until(bob, lambda: "read me" in received)
        assert isinstance(await bob.room_read_markers(room_id, last, last), nio.RoomReadMarkersResponse)
        receipts: list[Any] = []
        alice.add_ephemeral_callback(lambda room, ev: receipts.extend(ev.receipts), nio.ReceiptEvent)
        await sync_until(alice, lambda: any(r.user_id == bob.user_id and r.event_id == last for r in receipts))
    finally:
        await asyncio.gather(alice.close(), bob.close())
