"""Rooms of versions 1 to 9 (and 10-12 for comparison) between Whispr and a real Synapse 1.163.2:
a room of each version created on either side, joined from the other, messages and redactions both
ways; invites and backfill in old versions; knocking (v7+) and restricted joins (v8+) both ways.
One Synapse and one Whispr process per test, every version in it, to keep the run short."""

from __future__ import annotations

import time

import aiohttp

from bench.servers import RunningServer
from homeserver.events.room_versions import KNOWN_ROOM_VERSIONS
from tests.test_federation_whispr import Client, page_back, users_on_both
from tests.test_room_versions_federation import converse, invite_withdrawn, knock_across, q, restricted_across
from tests.test_synapse_interop import peers, story, synapse_interpreter  # noqa: F401


async def test_every_room_version_with_synapse(peers: tuple[RunningServer, RunningServer]) -> None:
    whispr, synapse = peers
    async with aiohttp.ClientSession() as session:
        wanda, sam = await users_on_both(session, whispr, "wanda", synapse, "sam")
        for version in KNOWN_ROOM_VERSIONS:
            started = time.monotonic()
            await converse(sam, wanda, version)  # a room on Synapse, joined from Whispr
            await converse(wanda, sam, version)  # a room on Whispr, joined from Synapse
            print(f"v{version} with Synapse: {time.monotonic() - started:.1f} s")


async def test_knocking_both_ways_with_synapse(peers: tuple[RunningServer, RunningServer]) -> None:
    whispr, synapse = peers
    async with aiohttp.ClientSession() as session:
        wanda, sam = await users_on_both(session, whispr, "wanda", synapse, "sam")
        for version in ("7", "10"):
            await knock_across(sam, wanda, version)  # we knock on Synapse's room (make_knock/send_knock)
            # Synapse knocks on ours; it rescinds knocks only locally (1.163: it does not keep the
            # server it knocked through), so no retraction reaches us from it.
            await knock_across(wanda, sam, version, retract=False)


async def test_restricted_joins_both_ways_with_synapse(peers: tuple[RunningServer, RunningServer]) -> None:
    whispr, synapse = peers
    async with aiohttp.ClientSession() as session:
        wanda, sam = await users_on_both(session, whispr, "wanda", synapse, "sam")
        for version in ("8", "9", "10"):
            await restricted_across(sam, wanda, version)  # Synapse vouches for our user
            await restricted_across(wanda, sam, version)  # we vouch for Synapse's


async def test_invites_and_history_in_old_versions_with_synapse(peers: tuple[RunningServer, RunningServer]) -> None:
    """The invite story (invite state, join, messages, topic, typing, receipts, leave) and paging back
    through history from before the join (backfill), both ways, in old room versions."""
    whispr, synapse = peers
    async with aiohttp.ClientSession() as session:
        wanda, sam = await users_on_both(session, whispr, "wanda", synapse, "sam")
        for version in ("1", "2", "3", "5", "6", "8"):
            await story(wanda, sam, version, messages=3)   # a room on Whispr, Synapse's user invited
            await story(sam, wanda, version, messages=3)   # a room on Synapse, ours invited
            await history_in(sam, wanda, version)          # we backfill from Synapse
            await history_in(wanda, sam, version)          # Synapse backfills from us


async def history_in(owner: Client, guest: Client, version: str, messages: int = 8) -> None:
    room = (await owner.call("POST", "/createRoom", json={"preset": "public_chat", "room_version": version}))[
        "room_id"]
    for i in range(messages):
        await owner.send(room, f"h{i}")
    await guest.call("POST", f"/join/{q(room)}", params={"server_name": owner.user_id.split(":", 1)[1]}, json={})
    events = await page_back(guest, room, 3)
    bodies = [e["content"].get("body") for e in reversed(events) if e["type"] == "m.room.message"]
    assert bodies == [f"h{i}" for i in range(messages)], version
    assert events[-1]["type"] == "m.room.create"


async def test_withdrawn_invites_both_ways_with_synapse(peers: tuple[RunningServer, RunningServer]) -> None:
    whispr, synapse = peers
    async with aiohttp.ClientSession() as session:
        wanda, sam = await users_on_both(session, whispr, "wanda", synapse, "sam")
        for version in ("1", "10"):
            await invite_withdrawn(sam, wanda, version)  # Synapse withdraws its invite of our user
            await invite_withdrawn(wanda, sam, version)  # we withdraw ours of Synapse's
