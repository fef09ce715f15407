"""Interop with a real Synapse (matrix-synapse 1.163.2 from PyPI) as a federation peer.

The same story as between two Whispr servers, between a Synapse user and a Whispr user,
in rooms created on either side, in room versions 10 and 12.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import AsyncIterator
from urllib.parse import quote

import aiohttp
import pytest

from bench.servers import RunningServer, free_port, start_synapse, start_whispr, synapse_python
from tests.synapse_peer import federation_listener, synapse_federation_config
from tests.test_federation_whispr import (Client, federation_config, membership_in_timeline, page_back,
                                          users_on_both)


@pytest.fixture(scope="module")
def synapse_interpreter() -> str:
    # Installs matrix-synapse into bench/.venv-synapse on first use (WHISPR_SYNAPSE_PYTHON overrides).
    return synapse_python()


@pytest.fixture
async def peers(tmp_path: Path, synapse_interpreter: str) -> AsyncIterator[tuple[RunningServer, RunningServer]]:
    whispr_port, synapse_port = free_port(), free_port()
    whispr_name, synapse_name = f"127.0.0.1:{whispr_port}", f"127.0.0.1:{synapse_port}"
    synapse = await asyncio.to_thread(
        start_synapse, python=synapse_interpreter, server_name=synapse_name,
        extra_config=synapse_federation_config(tmp_path, synapse_port, [whispr_name, synapse_name]),
        extra_listeners=[federation_listener(synapse_port)])
    try:
        whispr = await asyncio.to_thread(start_whispr, server_name=whispr_name, extra_config=federation_config())
    except BaseException:
        synapse.stop()
        raise
    try:
        yield whispr, synapse
    finally:
        await asyncio.gather(asyncio.to_thread(whispr.stop), asyncio.to_thread(synapse.stop))


def timeline(body: dict, room: str) -> list[dict]:
    return body["rooms"]["join"].get(room, {}).get("timeline", {}).get("events", [])


async def story(owner: Client, guest: Client, version: str, messages: int = 20) -> None:
    """owner creates the room; guest is invited, joins, and they talk; topic, typing, receipts, leave."""
    room = (await owner.call("POST", "/createRoom", json={"preset": "private_chat", "room_version": version,
                                                          "name": f"v{version}"}))["room_id"]
    await owner.call("POST", f"/rooms/{room}/invite", json={"user_id": guest.user_id})
    invited = await guest.sync_until(lambda body: room in body["rooms"]["invite"])
    shown = {e["type"]: e for e in invited["rooms"]["invite"][room]["invite_state"]["events"]}
    assert shown["m.room.name"]["content"] == {"name": f"v{version}"} and "m.room.create" in shown
    await guest.call("POST", f"/join/{room}")
    await owner.sync_until(membership_in_timeline(room, guest.user_id, "join"))
    for i in range(messages):
        await owner.send(room, f"o{i}")
    assert await guest.collect_messages(room, messages) == [f"o{i}" for i in range(messages)]
    for i in range(messages):
        await guest.send(room, f"g{i}")
    assert await owner.collect_messages(room, messages) == [f"g{i}" for i in range(messages)]

    await owner.call("PUT", f"/rooms/{room}/state/m.room.topic", json={"topic": "interop"})
    await guest.sync_until(lambda body: any(e["type"] == "m.room.topic" and e["content"].get("topic") == "interop"
                                            for e in timeline(body, room)))
    await guest.call("PUT", f"/rooms/{room}/typing/{guest.user_id}", json={"typing": True, "timeout": 20000})
    await owner.sync_until(lambda body: any(
        e["type"] == "m.typing" and guest.user_id in e["content"]["user_ids"]
        for e in body["rooms"]["join"].get(room, {}).get("ephemeral", {}).get("events", [])))
    last = await owner.send(room, "read me")
    await guest.collect_messages(room, 1)
    await guest.call("POST", f"/rooms/{room}/receipt/m.read/{quote(last, safe='')}", json={})
    await owner.sync_until(lambda body: any(
        e["type"] == "m.receipt" and guest.user_id in e["content"].get(last, {}).get("m.read", {})
        for e in body["rooms"]["join"].get(room, {}).get("ephemeral", {}).get("events", [])))
    await guest.call("POST", f"/rooms/{room}/leave")
    await owner.sync_until(membership_in_timeline(room, guest.user_id, "leave"))


@pytest.mark.parametrize("version", ["10", "12"])
async def test_interop_with_synapse(peers: tuple[RunningServer, RunningServer], version: str) -> None:
    whispr, synapse = peers
    async with aiohttp.ClientSession() as session:
        wanda, sam = await users_on_both(session, whispr, "wanda", synapse, "sam")
        started = time.monotonic()
        await story(wanda, sam, version)   # a room on Whispr, Synapse's user joins
        await story(sam, wanda, version)   # a room on Synapse, Whispr's user joins
        print(f"interop story v{version}: {time.monotonic() - started:.1f} s")


async def decline(owner: Client, guest: Client) -> None:
    """guest declines owner's invite across servers; the owner's room shows the leave."""
    room = (await owner.call("POST", "/createRoom", json={"preset": "private_chat"}))["room_id"]
    await owner.call("POST", f"/rooms/{room}/invite", json={"user_id": guest.user_id})
    await guest.sync_until(lambda body: room in body.get("rooms", {}).get("invite", {}))
    await guest.call("POST", f"/rooms/{room}/leave")
    await guest.sync_until(lambda body: room in body.get("rooms", {}).get("leave", {})
                           and room not in body["rooms"].get("invite", {}))  # Synapse omits empty sections
    await owner.sync_until(membership_in_timeline(room, guest.user_id, "leave"))


async def test_invites_declined_both_ways_with_synapse(peers: tuple[RunningServer, RunningServer]) -> None:
    whispr, synapse = peers
    async with aiohttp.ClientSession() as session:
        wanda, sam = await users_on_both(session, whispr, "wanda", synapse, "sam")
        await decline(wanda, sam)  # Synapse's user declines a Whispr room's invite
        await decline(sam, wanda)  # and ours one of Synapse's


async def history(owner: Client, guest: Client, messages: int = 15) -> None:
    """guest joins owner's room after `messages` were sent and pages back through all of them."""
    room = (await owner.call("POST", "/createRoom", json={"preset": "public_chat"}))["room_id"]
    for i in range(messages):
        await owner.send(room, f"h{i}")
    await guest.call("POST", f"/join/{room}", params={"server_name": owner.user_id.split(":", 1)[1]}, json={})
    events = await page_back(guest, room, 5)
    bodies = [e["content"].get("body") for e in reversed(events) if e["type"] == "m.room.message"]
    assert bodies == [f"h{i}" for i in range(messages)]
    assert events[-1]["type"] == "m.room.create"
    ids = [e["event_id"] for e in events]
    assert len(ids) == len(set(ids))


async def test_history_backfilled_both_ways_with_synapse(peers: tuple[RunningServer, RunningServer]) -> None:
    whispr, synapse = peers
    async with aiohttp.ClientSession() as session:
        wanda = await Client.register(session, whispr, "wanda")
        sam = await Client.register(session, synapse, "sam")
        await history(sam, wanda)  # we backfill from Synapse
        await history(wanda, sam)  # Synapse backfills from us


async def test_media_both_ways_with_synapse(peers: tuple[RunningServer, RunningServer]) -> None:
    """Each side downloads and thumbnails the other's upload over federation (authenticated media)."""
    from tests.media_helpers import MEDIA, UPLOAD, image_bytes, opened, path_of

    whispr, synapse = peers
    async with aiohttp.ClientSession() as session:
        wanda = await Client.register(session, whispr, "wanda")
        sam = await Client.register(session, synapse, "sam")
        for owner, reader, size in ((wanda, sam, (640, 400)), (sam, wanda, (500, 700))):
            picture = image_bytes("PNG", size)
            resp = await session.post(owner.server.base_url + UPLOAD, data=picture, params={"filename": "p.png"},
                                      headers={**owner.h, "Content-Type": "image/png"})
            assert resp.status == 200, await resp.text()
            uri = (await resp.json())["content_uri"]
            async with session.get(reader.server.base_url + f"{MEDIA}/download/{path_of(uri)}",
                                   headers=reader.h) as got:
                assert got.status == 200, (reader.server.kind, await got.text())
                assert await got.read() == picture and got.headers["Content-Type"] == "image/png"
            async with session.get(reader.server.base_url + f"{MEDIA}/thumbnail/{path_of(uri)}", headers=reader.h,
                                   params={"width": "96", "height": "96", "method": "crop"}) as got:
                assert got.status == 200, (reader.server.kind, await got.text())
                assert opened(await got.read()).size == (96, 96)
