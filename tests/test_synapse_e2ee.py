"""matrix-nio with encryption across servers: between two Whispr servers, and between Whispr and a
real Synapse both ways (each side's client decrypts what the other's sent)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.servers import RunningServer
from tests.test_federation_e2ee import keys_story
from tests.test_federation_whispr import pair  # noqa: F401 (fixture)
from tests.test_nio_e2ee import encrypted_story
from tests.test_synapse_interop import peers, synapse_interpreter  # noqa: F401 (fixtures)

pytest.importorskip("olm")


async def test_encrypted_chat_between_two_whispr_servers(pair: tuple[RunningServer, RunningServer],  # noqa: F811
                                                         tmp_path: Path) -> None:
    a, b = pair
    await encrypted_story(a.base_url, b.base_url, tmp_path, "ab")
    await encrypted_story(b.base_url, a.base_url, tmp_path, "ba")


async def test_encrypted_chat_with_synapse_both_ways(peers: tuple[RunningServer, RunningServer],  # noqa: F811
                                                     tmp_path: Path) -> None:
    whispr, synapse = peers
    await encrypted_story(whispr.base_url, synapse.base_url, tmp_path, "ws")  # room on Whispr
    await encrypted_story(synapse.base_url, whispr.base_url, tmp_path, "sw")  # room on Synapse


async def test_keys_and_device_lists_with_synapse_both_ways(peers: tuple[RunningServer, RunningServer]) -> None:  # noqa: F811
    whispr, synapse = peers
    await keys_story(whispr, synapse)  # a Whispr user follows a Synapse user's keys and devices
    await keys_story(synapse, whispr)  # and the other way
