"""Push evaluation of a real Synapse's events (matrix-synapse 1.163.2): a Synapse user's invite
and messages notify a Whispr user, mentions highlight, and the counts agree with Synapse's own
for its user in the same room."""

from __future__ import annotations

import aiohttp

from bench.servers import RunningServer
from tests.test_federation_whispr import membership_in_timeline, users_on_both
from tests.test_push_federation import notifications_until
from tests.test_synapse_interop import peers, synapse_interpreter

__all__ = ["peers", "synapse_interpreter"]


async def test_synapse_events_notify_whispr_users(peers: tuple[RunningServer, RunningServer]) -> None:
    whispr, synapse = peers
    async with aiohttp.ClientSession() as session:
        wanda, sam = await users_on_both(session, whispr, "wanda", synapse, "sam")
        room = (await sam.call("POST", "/createRoom", json={"preset": "private_chat"}))["room_id"]
        await sam.call("POST", f"/rooms/{room}/invite", json={"user_id": wanda.user_id})
        invites = await notifications_until(wanda, 1)
        assert [(n["event"]["type"], n["event"]["state_key"]) for n in invites] == [("m.room.member", wanda.user_id)]
        await wanda.call("POST", f"/join/{room}")
        await sam.sync_until(membership_in_timeline(room, wanda.user_id, "join"))
        await sam.send(room, "hello from synapse")
        await sam.call("PUT", f"/rooms/{room}/send/m.room.message/m1",
                       json={"msgtype": "m.text", "body": "wanda?", "m.mentions": {"user_ids": [wanda.user_id]}})
        body = await wanda.sync_until(lambda body: any(
            e.get("content", {}).get("body") == "wanda?"
            for e in body["rooms"]["join"].get(room, {}).get("timeline", {}).get("events", [])))
        assert body["rooms"]["join"][room]["unread_notifications"] == {"notification_count": 2, "highlight_count": 1}
        # and the other way: Synapse counts what Wanda sends for Sam (its own evaluator)
        await wanda.call("PUT", f"/rooms/{room}/send/m.room.message/w1",
                         json={"msgtype": "m.text", "body": "sam!", "m.mentions": {"user_ids": [sam.user_id]}})
        seen = await sam.sync_until(lambda body: any(
            e.get("content", {}).get("body") == "sam!"
            for e in body["rooms"]["join"].get(room, {}).get("timeline", {}).get("events", [])))
        assert seen["rooms"]["join"][room]["unread_notifications"]["highlight_count"] == 1
