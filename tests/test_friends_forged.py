"""Friend requests from a hand-built peer: a marked invite into the peer's own room is a request;
only the inviting server can take it back, with a leave it really signed; a user who accepts no
requests has the peer's invite refused."""

from __future__ import annotations

import time
from typing import Any

import aiohttp
import pytest
from signedjson.key import generate_signing_key

from bench.servers import RunningServer
from homeserver.events.crypto import compute_event_id, sign_event
from homeserver.events.room_versions import ROOM_V10
from tests.test_federation_receipt import ReceiptPeer, peer_room, send_invite, setup
from tests.test_federation_whispr import Client
from tests.test_friends_federation import friend_event, friends_call, requests_of

__all__ = ["setup"]


def member(peer: ReceiptPeer, pdus: list[dict[str, Any]], room: str, sender: str, target: str,
           content: dict[str, Any], key: Any = None, prev: list[str] | None = None) -> dict[str, Any]:
    # A membership change cites the target's current membership (the invite, for a leave after one).
    pdu = {"room_id": room, "sender": sender, "type": "m.room.member", "state_key": target, "content": content,
           "prev_events": prev or [compute_event_id(pdus[-1], ROOM_V10)],
           "auth_events": [compute_event_id(p, ROOM_V10) for p in pdus[:3]] + (prev or []), "depth": len(pdus) + 2,
           "origin_server_ts": int(time.time() * 1000)}
    return sign_event(pdu, peer.name, key or peer.key, ROOM_V10)


async def test_a_peers_request_and_who_may_take_it_back(setup: tuple[RunningServer, ReceiptPeer]) -> None:
    server, peer = setup
    async with aiohttp.ClientSession() as session:
        carol = await Client.register(session, server, "carol")
        await carol.sync_until(lambda _: True)
        room, pdus = peer_room(peer, ROOM_V10)
        owner = pdus[0]["sender"]
        invite = member(peer, pdus, room, owner, carol.user_id,
                        {"membership": "invite", "is_direct": True, "org.whispr.friend_request": {"message": "hi"}})
        await send_invite(peer, server, invite)
        await carol.sync_until(friend_event("request_received", owner))
        incoming = (await friends_call(carol, "GET", "/requests"))["incoming"]
        assert [(r["user_id"], r["message"], r["room_id"]) for r in incoming] == [(owner, "hi", room)]
        invite_id = compute_event_id(invite, ROOM_V10)

        # a leave signed with a key the peer does not publish: dropped
        forged = member(peer, pdus, room, owner, carol.user_id, {"membership": "leave"},
                        key=generate_signing_key("p1"), prev=[invite_id])
        result = await peer.send(server.server_name, [forged], "forged-leave")
        assert result["pdus"][compute_event_id(forged, ROOM_V10)].get("error")
        # a leave of a user the peer never invited: not for this server
        dave = await Client.register(session, server, "dave")
        other = member(peer, pdus, room, owner, dave.user_id, {"membership": "leave"}, prev=[invite_id])
        result = await peer.send(server.server_name, [other], "other-leave")
        assert result["pdus"].get(compute_event_id(other, ROOM_V10)) != {}  # not accepted
        assert await requests_of(carol, "incoming")() == [owner]

        # the inviting server takes it back
        leave = member(peer, pdus, room, owner, carol.user_id, {"membership": "leave"}, prev=[invite_id])
        result = await peer.send(server.server_name, [leave], "real-leave")
        assert result["pdus"][compute_event_id(leave, ROOM_V10)] == {}
        body = await carol.sync_until(friend_event("cancelled", owner))
        assert room in body["rooms"]["leave"]
        assert await requests_of(carol, "incoming")() == []


async def test_a_user_who_takes_no_requests_refuses_the_peers(setup: tuple[RunningServer, ReceiptPeer]) -> None:
    server, peer = setup
    async with aiohttp.ClientSession() as session:
        carol = await Client.register(session, server, "carol")
        await friends_call(carol, "PUT", "/settings", json={"allow_requests": "nobody"})
        room, pdus = peer_room(peer, ROOM_V10)
        invite = member(peer, pdus, room, pdus[0]["sender"], carol.user_id,
                        {"membership": "invite", "is_direct": True, "org.whispr.friend_request": {}})
        with pytest.raises(Exception) as refused:
            await send_invite(peer, server, invite)
        assert getattr(refused.value, "status", None) == 403
        assert (await carol.call("GET", "/sync"))["rooms"]["invite"] == {}
