"""Friends with a real Synapse (1.163.2) whose user is driven by matrix-nio: a Whispr friend request
is a direct-chat invite with the message, joining accepts it; a Synapse user's direct-chat invite is
an incoming request on Whispr, and accepting it makes friends."""

from __future__ import annotations

from typing import Any

import aiohttp
import nio
import pytest

from bench.servers import RunningServer
from tests.test_federation_whispr import Client
from tests.test_friends_federation import eventually, friend_ids, friends_call, requests_of
from tests.test_synapse_interop import peers, synapse_interpreter

__all__ = ["peers", "synapse_interpreter"]


async def nio_user(session: aiohttp.ClientSession, synapse: RunningServer, name: str) -> nio.AsyncClient:
    sam = await Client.register(session, synapse, name)
    client = nio.AsyncClient(synapse.base_url, sam.user_id)
    client.restore_login(sam.user_id, "nio", sam.h["Authorization"].split(" ", 1)[1])
    return client


async def nio_sync_until(client: nio.AsyncClient, predicate: Any, rounds: int = 30) -> nio.SyncResponse:
    for _ in range(rounds):
        resp = await client.sync(timeout=2000)
        assert isinstance(resp, nio.SyncResponse), resp
        if predicate(resp):
            return resp
    pytest.fail("condition never held")


async def test_friends_with_a_synapse_user(peers: tuple[RunningServer, RunningServer]) -> None:
    whispr, synapse = peers
    async with aiohttp.ClientSession() as session:
        wanda = await Client.register(session, whispr, "wanda")
        sam = await nio_user(session, synapse, "sam")
        try:
            await sam.sync(timeout=0)
            # Whispr -> Synapse: sam sees a direct-chat invite carrying the message, and joins
            sent = await friends_call(wanda, "POST", "/requests", json={"user_id": sam.user_id,
                                                                        "message": "tea sometime?"})
            room = sent["room_id"]
            resp = await nio_sync_until(sam, lambda r: room in r.rooms.invite)
            member = next(e for e in resp.rooms.invite[room].invite_state
                          if isinstance(e, nio.InviteMemberEvent) and e.state_key == sam.user_id)
            assert member.content["is_direct"] is True
            assert member.content["org.whispr.friend_request"] == {"message": "tea sometime?"}
            assert member.sender == wanda.user_id
            assert isinstance(await sam.join(room), nio.JoinResponse)
            friends = await eventually(lambda: friends_call(wanda, "GET", ""),
                                       lambda body: [f["user_id"] for f in body["friends"]] == [sam.user_id])
            assert friends["friends"][0]["room_id"] == room and friends["friends"][0]["displayname"] == "sam"
            assert await requests_of(wanda, "outgoing")() == []

            # Synapse -> Whispr: sam opens a direct chat with wanda; it is her incoming request
            await friends_call(wanda, "DELETE", f"/{sam.user_id}")
            created = await sam.room_create(is_direct=True, invite=[wanda.user_id],
                                            preset=nio.RoomPreset.trusted_private_chat)
            assert isinstance(created, nio.RoomCreateResponse), created
            incoming = await eventually(lambda: friends_call(wanda, "GET", "/requests"),
                                        lambda body: [r["user_id"] for r in body["incoming"]] == [sam.user_id])
            assert incoming["incoming"][0]["room_id"] == created.room_id
            accepted = await friends_call(wanda, "POST", f"/requests/{sam.user_id}/accept")
            assert accepted == {"status": "friends", "room_id": created.room_id}
            assert await friend_ids(wanda)() == [sam.user_id]
            await nio_sync_until(sam, lambda r: created.room_id in sam.rooms
                                 and wanda.user_id in sam.rooms[created.room_id].users)
            # the chat works both ways
            await sam.room_send(created.room_id, "m.room.message", {"msgtype": "m.text", "body": "hi wanda"})
            assert await wanda.collect_messages(created.room_id, 1) == ["hi wanda"]

            # sam declines a request by rejecting the invite; wanda hears of it
            await friends_call(wanda, "DELETE", f"/{sam.user_id}")
            again = (await friends_call(wanda, "POST", "/requests", json={"user_id": sam.user_id}))["room_id"]
            await nio_sync_until(sam, lambda r: again in r.rooms.invite)
            assert isinstance(await sam.room_leave(again), nio.RoomLeaveResponse)
            await eventually(requests_of(wanda, "outgoing"), lambda r: r == [])
            assert await friend_ids(wanda)() == []
        finally:
            await sam.close()
