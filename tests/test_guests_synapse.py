"""Whispr's guests in a real Synapse's rooms (matrix-synapse 1.163.2): m.room.guest_access decides
their joins over federation, and Synapse's change of it makes them leave."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import AsyncIterator

import aiohttp
import pytest

from bench.servers import RunningServer, free_port, start_synapse, start_whispr
from tests.synapse_peer import federation_listener, synapse_federation_config
from tests.test_federation_whispr import Client, federation_config, membership_in_timeline
from tests.test_guests_federation import register_guest
from tests.test_synapse_interop import synapse_interpreter  # noqa: F401  (a fixture)


@pytest.fixture
async def peers(tmp_path: Path, synapse_interpreter: str) -> AsyncIterator[tuple[RunningServer, RunningServer]]:
    whispr_port, synapse_port = free_port(), free_port()
    whispr_name, synapse_name = f"127.0.0.1:{whispr_port}", f"127.0.0.1:{synapse_port}"
    synapse = await asyncio.to_thread(
        start_synapse, python=synapse_interpreter, server_name=synapse_name,
        extra_config=synapse_federation_config(tmp_path, synapse_port, [whispr_name, synapse_name]),
        extra_listeners=[federation_listener(synapse_port)])
    try:
        whispr = await asyncio.to_thread(start_whispr, server_name=whispr_name, extra_config={
            **federation_config(), "registration": {"allow_guest_access": True}})
    except BaseException:
        synapse.stop()
        raise
    try:
        yield whispr, synapse
    finally:
        await asyncio.gather(asyncio.to_thread(whispr.stop), asyncio.to_thread(synapse.stop))


async def test_guests_in_synapse_rooms(peers: tuple[RunningServer, RunningServer]) -> None:
    whispr, synapse = peers
    async with aiohttp.ClientSession() as session:
        sam = await Client.register(session, synapse, "sam")
        via = {"server_name": sam.user_id.split(":", 1)[1]}
        open_room = (await sam.call("POST", "/createRoom", json={"preset": "public_chat"}))["room_id"]
        await sam.call("PUT", f"/rooms/{open_room}/state/m.room.guest_access", json={"guest_access": "can_join"})
        closed = (await sam.call("POST", "/createRoom", json={"preset": "public_chat"}))["room_id"]

        guest = await register_guest(session, whispr)
        refused = await guest.call("POST", f"/join/{closed}", params=via, json={}, expect=403)
        assert refused["errcode"] == "M_GUEST_ACCESS_FORBIDDEN"
        await sam.sync_until(membership_in_timeline(closed, guest.user_id, "leave"))

        await guest.call("POST", f"/join/{open_room}", params=via, json={})
        await sam.sync_until(membership_in_timeline(open_room, guest.user_id, "join"))
        await guest.send(open_room, "a guest says hi")
        assert await sam.collect_messages(open_room, 1) == ["a guest says hi"]

        await sam.call("PUT", f"/rooms/{open_room}/state/m.room.guest_access", json={"guest_access": "forbidden"})
        await sam.sync_until(membership_in_timeline(open_room, guest.user_id, "leave"))
