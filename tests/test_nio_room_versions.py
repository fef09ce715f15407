"""matrix-nio as the client in old room versions: create, join, send, redact, knock."""

from __future__ import annotations

import asyncio
from typing import Any

import nio
import pytest

from tests.test_nio_rooms import nio_client, sync_until


@pytest.mark.parametrize("version", ["1", "3", "6", "9"])
async def test_nio_in_an_old_room_version(client: Any, version: str) -> None:
    alice, bob = await nio_client(client, "alice"), await nio_client(client, "bob")
    try:
        created = await alice.room_create(name=f"v{version}", room_version=version, preset=nio.RoomPreset.public_chat)
        assert isinstance(created, nio.RoomCreateResponse), created
        room_id = created.room_id
        assert isinstance(await bob.join(room_id), nio.JoinResponse)
        received: list[str] = []
        redacted: list[str] = []
        bob.add_event_callback(lambda room, ev: received.append(ev.event_id), nio.RoomMessageText)
        bob.add_event_callback(lambda room, ev: redacted.append(ev.redacts), nio.RedactionEvent)
        sent = await alice.room_send(room_id, "m.room.message", {"msgtype": "m.text", "body": "hi"})
        assert isinstance(sent, nio.RoomSendResponse), sent
        await sync_until(bob, lambda: sent.event_id in received)
        if version in ("1", "2"):
            assert sent.event_id.endswith(":" + alice.user_id.split(":", 1)[1])
        redaction = await alice.room_redact(room_id, sent.event_id, reason="gone")
        assert isinstance(redaction, nio.RoomRedactResponse), redaction
        await sync_until(bob, lambda: sent.event_id in redacted)
        assert bob.rooms[room_id].display_name == f"v{version}"
    finally:
        await asyncio.gather(alice.close(), bob.close())


async def test_nio_knocks(client: Any) -> None:
    alice, bob = await nio_client(client, "alice"), await nio_client(client, "bob")
    try:
        created = await alice.room_create(room_version="7", initial_state=[
            {"type": "m.room.join_rules", "state_key": "", "content": {"join_rule": "knock"}}])
        room_id = created.room_id
        knocked = await bob.room_knock(room_id, reason="hello?")
        assert isinstance(knocked, nio.RoomKnockResponse), knocked
        assert isinstance(await alice.room_invite(room_id, bob.user_id), nio.RoomInviteResponse)
        await sync_until(bob, lambda: room_id in bob.invited_rooms)
        assert isinstance(await bob.join(room_id), nio.JoinResponse)
        await sync_until(alice, lambda: room_id in alice.rooms and bob.user_id in alice.rooms[room_id].users)
    finally:
        await asyncio.gather(alice.close(), bob.close())
