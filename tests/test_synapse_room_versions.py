"""Rooms of versions 1 to 9 (and 10-12 for comparison) between Whispr and a real Synapse 1.163.2:
a room of each version created on either side, joined from the other, messages and redactions both
ways. One Synapse and one Whispr process for every version, to keep the run short."""

from __future__ import annotations

import time

import aiohttp

from bench.servers import RunningServer
from homeserver.events.room_versions import KNOWN_ROOM_VERSIONS
from tests.test_federation_whispr import users_on_both
from tests.test_room_versions_federation import converse, knock_across, restricted_across
from tests.test_synapse_interop import peers, synapse_interpreter  # noqa: F401


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
