"""What /sync answers from memory (recent events, unread counts) is exactly what the database says."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from homeserver.events.event import Event
from homeserver.rooms.recent_events import RecentEvents
from tests.rooms_helpers import User

LIMIT_50 = json.dumps({"room": {"timeline": {"limit": 50}, "state": {"lazy_load_members": True}}})


def _ev(stream: int, room: str = "!r:hs", redacts: str | None = None) -> Event:
    pdu: dict[str, Any] = {"room_id": room, "type": "m.room.message", "sender": "@a:hs", "content": {}}
    if redacts:
        pdu.update(type="m.room.redaction", content={"redacts": redacts})
    return Event(f"$e{stream}", pdu, stream=stream)


def _ids(events: list[Event] | None) -> list[int] | None:
    return None if events is None else [e.stream for e in events]


def test_recent_events_answer_only_what_they_surely_hold() -> None:
    recent = RecentEvents(per_room=4)
    for s in (5, 7, 8):
        recent.append(_ev(s))
    assert _ids(recent.between("!r:hs", 4, 8)) == [8, 7, 5]
    assert _ids(recent.between("!r:hs", 5, 7)) == [7]
    assert _ids(recent.between("!r:hs", 3, 8)) is None  # before the first event appended: unknown
    assert _ids(recent.between("!r:hs", None, 8, limit=2)) == [8, 7]  # enough newer ones
    assert _ids(recent.between("!r:hs", None, 8, limit=4)) is None
    assert recent.between("!other:hs", 0, 8) is None
    recent.observe(6, "!other:hs", False)
    recent.observe(7, "!r:hs", False)  # held: nothing changes
    recent.observe(9, "!r:hs", True)  # a receipt is no event
    assert _ids(recent.between("!r:hs", 4, 9)) == [8, 7, 5]
    recent.observe(10, "!r:hs", False)  # an event appended elsewhere
    assert recent.between("!r:hs", 8, 10) is None
    recent.append(_ev(11))
    assert _ids(recent.between("!r:hs", 10, 11)) == [11]
    assert _ids(recent.between("!r:hs", 10, 11, min_floor=10)) == [11]
    assert recent.between("!r:hs", 10, 11, min_floor=11) is None  # a gap the notifier gave up on


def test_recent_events_bounded_out_of_order_and_redactions() -> None:
    recent = RecentEvents(per_room=3)
    for s in (1, 3, 2, 4):  # 2 is appended late, as a concurrent writer's can be
        recent.append(_ev(s))
    assert _ids(recent.between("!r:hs", 1, 4)) == [4, 3, 2]
    assert recent.between("!r:hs", 0, 4) is None  # 1 was dropped to keep 3
    recent.append(_ev(5, redacts="$e3"))  # not applied (refused by the rules): the held copy of 3 stands
    assert _ids(recent.between("!r:hs", 2, 5)) == [5, 4, 3]
    recent.append(_ev(6, redacts="$e3"), redacted="$e3")  # applied: the held copy of 3 is stale now
    assert recent.between("!r:hs", 2, 6) is None
    assert _ids(recent.between("!r:hs", 3, 6)) == [6, 5, 4]


async def test_incremental_sync_shows_a_redaction_of_a_recent_event(client: Any) -> None:
    alice, bob = await User.new(client, "alice"), await User.new(client, "bob")
    room = await alice.create_room(preset="public_chat")
    await bob.call("POST", f"/join/{room}")
    since = (await bob.sync(filter=LIMIT_50))["next_batch"]
    ids = [await alice.send(room, f"m{i}") for i in range(3)]
    seen = await bob.sync(since, filter=LIMIT_50)
    assert [e["event_id"] for e in seen["rooms"]["join"][room]["timeline"]["events"]] == ids
    red = await alice.call("PUT", f"/rooms/{room}/redact/{ids[1]}/r1", json={})
    again = await bob.sync(since, filter=LIMIT_50)
    events = again["rooms"]["join"][room]["timeline"]["events"]
    assert [e["event_id"] for e in events] == [*ids, red["event_id"]]
    assert events[1]["content"] == {} and events[1]["unsigned"]["redacted_because"]["event_id"] == red["event_id"]
    assert events[0]["content"]["body"] == "m0"


async def test_unread_counts_follow_messages_receipts_and_redactions(client: Any) -> None:
    alice, bob = await User.new(client, "alice"), await User.new(client, "bob")
    room = await alice.create_room(preset="public_chat")
    await bob.call("POST", f"/join/{room}")
    body = await bob.sync(filter=LIMIT_50)

    async def unread() -> int:
        nonlocal body
        body = await bob.sync(body["next_batch"], filter=LIMIT_50)
        return int(body["rooms"]["join"][room]["unread_notifications"]["notification_count"])

    ids = [await alice.send(room, "a0")]
    assert await unread() == 1
    ids += [await alice.send(room, "a1"), await alice.send(room, "a2")]
    await bob.send(room, "mine")  # one's own messages are never unread
    assert await unread() == 3
    await alice.call("PUT", f"/rooms/{room}/redact/{ids[2]}/r1", json={})
    assert await unread() == 2
    await bob.call("POST", f"/rooms/{room}/receipt/m.read/{ids[0]}", json={})
    assert await unread() == 1
    ids.append(await alice.send(room, "a3"))
    assert await unread() == 2
    await bob.call("POST", f"/rooms/{room}/receipt/m.read.private/{ids[3]}", json={})
    assert await unread() == 0
    await alice.send(room, "a4")
    assert await unread() == 1


@pytest.mark.parametrize("backend", ["postgres+redis"], indirect=True)  # several workers need both
async def test_two_workers_sync_every_message_once(serve: Any, backend: dict[str, Any]) -> None:
    """Two processes on one PostgreSQL and Redis: a sync on B sees what A wrote, in order, once."""
    a, b = await serve(), await serve()
    alice = await User.new(a, "alice")
    bob = await User.new(a, "bob")
    alice_b, bob_b = User(b, {"user_id": alice.user_id, "access_token": alice.token}), User(
        b, {"user_id": bob.user_id, "access_token": bob.token})
    room = await alice.create_room(preset="public_chat")
    await bob.call("POST", f"/join/{room}")
    body = await bob_b.sync(filter=LIMIT_50)
    got: list[str] = []
    unread = 0
    for i in range(12):
        sender = (alice if i % 3 else alice_b)  # mostly on A, sometimes on B itself
        poll = asyncio.create_task(bob_b.sync(body["next_batch"], timeout=5000, filter=LIMIT_50))
        await asyncio.sleep(0.01)
        await sender.send(room, f"m{i}")
        body = await poll
        while True:
            joined = body["rooms"]["join"].get(room)
            if joined:
                got += [e["content"]["body"] for e in joined["timeline"]["events"] if e["type"] == "m.room.message"]
                unread = joined["unread_notifications"]["notification_count"]
            if len(got) > i:
                break
            body = await bob_b.sync(body["next_batch"], timeout=5000, filter=LIMIT_50)
    assert got == [f"m{i}" for i in range(12)]
    assert unread == 12
