"""Space hierarchies with a real Synapse (1.163.2): Synapse walks into a Whispr room through our
federation /hierarchy, and Whispr walks a Synapse space through Synapse's."""

from __future__ import annotations

from typing import Any

import aiohttp

from bench.servers import RunningServer
from tests.test_federation_whispr import Client
from tests.test_synapse_interop import peers, synapse_interpreter

__all__ = ["peers", "synapse_interpreter"]

V1 = "/_matrix/client/v1"


async def hierarchy(user: Client, room: str) -> Any:
    resp = await user.session.get(f"{user.server.base_url}{V1}/rooms/{room}/hierarchy", headers=user.h)
    body = await resp.json()
    assert resp.status == 200, body
    return body


async def test_hierarchy_with_synapse(peers: tuple[RunningServer, RunningServer]) -> None:
    whispr, synapse = peers
    async with aiohttp.ClientSession() as session:
        wanda = await Client.register(session, whispr, "wanda")
        sam = await Client.register(session, synapse, "sam")
        ours = (await wanda.call("POST", "/createRoom", json={"name": "Whispr room", "topic": "made here",
                                                              "preset": "public_chat"}))["room_id"]
        closed = (await wanda.call("POST", "/createRoom", json={"name": "Closed"}))["room_id"]
        space = (await sam.call("POST", "/createRoom", json={"name": "Synapse space", "preset": "public_chat",
                                                             "creation_content": {"type": "m.space"}}))["room_id"]
        for child in (ours, closed):
            await sam.call("PUT", f"/rooms/{space}/state/m.space.child/{child}",
                           json={"via": [whispr.server_name], "suggested": True})

        # Synapse asks us about our rooms: the public one is described, the closed one is not.
        body = await hierarchy(sam, space)
        rooms = {r["room_id"]: r for r in body["rooms"]}
        assert set(rooms) == {space, ours}
        assert rooms[ours]["name"] == "Whispr room" and rooms[ours]["topic"] == "made here"
        assert rooms[ours]["join_rule"] == "public" and rooms[ours]["num_joined_members"] == 1

        # We ask Synapse about its space; our own children come from here (wanda sees her closed room).
        body = await hierarchy(wanda, space)
        assert [r["room_id"] for r in body["rooms"]] == [space, ours, closed]
        top = body["rooms"][0]
        assert top["name"] == "Synapse space" and top["room_type"] == "m.space"
        assert {e["state_key"] for e in top["children_state"]} == {ours, closed}
