"""Reporting events, rooms and users, and the admins' event reports (Synapse's admin API), on both engines."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from tests.conftest import auth
from tests.rooms_helpers import User
from tests.test_admin_api import ADMIN, start


async def test_event_reports_stored_listed_and_deleted(serve: Any) -> None:
    client, root = await start(serve)
    alice, bob = await User.new(client, "alice"), await User.new(client, "bob")
    room = await alice.create_room(preset="public_chat", name="Spam corner")
    await bob.call("POST", f"/join/{room}")
    spam = await alice.send(room, "buy now")
    other = await alice.send(room, "buy later")
    await bob.call("POST", f"/rooms/{room}/report/{spam}", json={"reason": "spam", "score": -100})
    await bob.call("POST", f"/rooms/{room}/report/{other}", json={})
    await bob.call("POST", f"/rooms/{room}/report/{spam}", expect=400, json={"score": 5})

    listed = await (await client.get(f"{ADMIN}/v1/event_reports", headers=auth(root))).json()
    assert listed["total"] == 2
    newest, oldest = listed["event_reports"]  # newest first by default
    assert (oldest["event_id"], oldest["reason"], oldest["score"]) == (spam, "spam", -100)
    assert (oldest["user_id"], oldest["sender"], oldest["room_id"], oldest["name"]) == (
        bob.user_id, alice.user_id, room, "Spam corner")
    assert newest["event_id"] == other and newest["reason"] is None
    page = await (await client.get(f"{ADMIN}/v1/event_reports", params={"limit": "1", "dir": "f"},
                                   headers=auth(root))).json()
    assert [r["event_id"] for r in page["event_reports"]] == [spam] and page["next_token"] == 1
    rest = await (await client.get(f"{ADMIN}/v1/event_reports", params={"from": "1", "dir": "f"},
                                   headers=auth(root))).json()
    assert [r["event_id"] for r in rest["event_reports"]] == [other] and "next_token" not in rest
    by_user = await (await client.get(f"{ADMIN}/v1/event_reports", params={"user_id": alice.user_id},
                                      headers=auth(root))).json()
    assert by_user["total"] == 0

    one = await client.get(f"{ADMIN}/v1/event_reports/{oldest['id']}", headers=auth(root))
    detail = await one.json()
    assert one.status == 200 and detail["event_json"]["content"]["body"] == "buy now"
    # Not for users who are not admins.
    assert (await client.get(f"{ADMIN}/v1/event_reports", headers=bob.h)).status == 403
    deleted = await client.delete(f"{ADMIN}/v1/event_reports/{oldest['id']}", headers=auth(root))
    assert deleted.status == 200
    gone = await client.get(f"{ADMIN}/v1/event_reports/{oldest['id']}", headers=auth(root))
    assert gone.status == 404 and (await gone.json())["errcode"] == "M_NOT_FOUND"
    assert (await client.get(f"{ADMIN}/v1/event_reports/x", headers=auth(root))).status == 400


async def test_unknown_or_invisible_events_are_404(client: Any) -> None:
    alice, bob = await User.new(client, "alice"), await User.new(client, "bob")
    room = await alice.create_room(preset="public_chat")
    await alice.call("PUT", f"/rooms/{room}/state/m.room.history_visibility", json={"history_visibility": "joined"})
    hidden = await alice.send(room, "before bob")
    body = await bob.call("POST", f"/rooms/{room}/report/{hidden}", expect=404, json={"reason": "x"})
    assert body["errcode"] == "M_NOT_FOUND"  # not in the room: the same answer
    await bob.call("POST", f"/join/{room}")
    await bob.call("POST", f"/rooms/{room}/report/{hidden}", expect=404, json={"reason": "x"})
    await bob.call("POST", f"/rooms/{room}/report/$nothing", expect=404, json={"reason": "x"})
    seen = await alice.send(room, "after bob")
    await bob.call("POST", f"/rooms/{room}/report/{seen}", json={"reason": "x"})


async def test_room_and_user_reports(client: Any) -> None:
    alice, bob = await User.new(client, "alice"), await User.new(client, "bob")
    room = await alice.create_room()
    await bob.call("POST", f"/rooms/{room}/report", json={"reason": "bad room"})
    await bob.call("POST", f"/rooms/{quote('!nothing:localhost:8448')}/report", expect=404,
                   json={"reason": "x"})
    await bob.call("POST", f"/rooms/{room}/report", expect=400, json={})
    await bob.call("POST", f"/users/{quote(alice.user_id)}/report", json={"reason": "rude"})
    body = await bob.call("POST", f"/users/{quote('@nobody:' + alice.user_id.split(':', 1)[1])}/report",
                          expect=404, json={"reason": "rude"})
    assert body["errcode"] == "M_NOT_FOUND"


async def test_reports_are_rate_limited(serve: Any) -> None:
    client = await serve(rate_limits={"enabled": True, "register": {"per_second": 100, "burst": 100},
                                      "report": {"per_second": 0.001, "burst": 2}})
    alice = await User.new(client, "alice")
    room = await alice.create_room()
    await alice.call("POST", f"/rooms/{room}/report", json={"reason": "1"})
    await alice.call("POST", f"/rooms/{room}/report", json={"reason": "2"})
    body = await alice.call("POST", f"/rooms/{room}/report", expect=429, json={"reason": "3"})
    assert body["errcode"] == "M_LIMIT_EXCEEDED"
