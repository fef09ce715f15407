"""Notifications from push rule evaluation: counts and highlights in /sync (reset by read
receipts, per thread when asked), GET /notifications, on both backends."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from tests.rooms_helpers import User

THREADS = json.dumps({"room": {"timeline": {"unread_thread_notifications": True}}})


def unread(body: dict[str, Any], room: str) -> tuple[int, int]:
    counts = body["rooms"]["join"][room]["unread_notifications"]
    return counts["notification_count"], counts["highlight_count"]


async def pair(client: Any) -> tuple[User, User, str]:
    alice, bob = await User.new(client, "alice"), await User.new(client, "bob")
    room = await alice.create_room(invite=[bob.user_id], preset="private_chat")
    await bob.call("POST", f"/join/{room}")
    carol = await User.new(client, "carol")  # three members: the group-chat rules apply
    await alice.call("POST", f"/rooms/{room}/invite", json={"user_id": carol.user_id})
    await carol.call("POST", f"/join/{room}")
    return alice, bob, room


async def send(user: User, room: str, content: dict[str, Any], event_type: str = "m.room.message") -> str:
    global _n
    _n += 1
    return (await user.call("PUT", f"/rooms/{room}/send/{event_type}/n{_n}", json=content))["event_id"]


_n = 0


async def test_counts_follow_the_rules_and_receipts(client: Any) -> None:
    alice, bob, room = await pair(client)
    first = await bob.sync()
    assert unread(first, room) == (0, 0)
    await alice.send(room, "hello")
    await send(alice, room, {"msgtype": "m.notice", "body": "a bot said"})  # .m.rule.suppress_notices
    await send(alice, room, {"msgtype": "m.text", "body": "bob, look",
                             "m.mentions": {"user_ids": [bob.user_id]}})  # .m.rule.is_user_mention
    last = await send(alice, room, {"msgtype": "m.text", "body": "hey bob!"})  # legacy user-name rule
    await send(alice, room, {"m.relates_to": {"rel_type": "m.annotation", "event_id": last, "key": "x"}},
               "m.reaction")
    # the initial sync counts from the database, the incremental one carries the count forward
    assert unread(await bob.sync(), room) == (3, 2)
    inc = await bob.sync(first["next_batch"])
    assert unread(inc, room) == (3, 2)
    # the sender's own messages never count
    assert unread(await alice.sync(), room) == (0, 0)
    await bob.call("POST", f"/rooms/{room}/receipt/m.read/{last}", json={})
    after_receipt = await bob.sync(inc["next_batch"])
    assert unread(after_receipt, room) == (0, 0)
    await alice.send(room, "one more")
    assert unread(await bob.sync(after_receipt["next_batch"]), room) == (1, 0)
    assert unread(await bob.sync(), room) == (1, 0)


async def test_a_muted_room_and_an_at_room(client: Any) -> None:
    alice, bob, room = await pair(client)
    start = await bob.sync()
    await send(alice, room, {"msgtype": "m.text", "body": "all", "m.mentions": {"room": True}})
    assert unread(await bob.sync(start["next_batch"]), room) == (1, 1)  # alice, the creator, has level 100
    await bob.call("PUT", f"/pushrules/global/room/{room}", json={"actions": []})
    mid = await bob.sync()
    await alice.send(room, "muted now")
    assert unread(await bob.sync(mid["next_batch"]), room) == (1, 1)


async def test_master_rule_turns_everything_off(client: Any) -> None:
    alice, bob, room = await pair(client)
    await bob.call("PUT", "/pushrules/global/override/.m.rule.master/enabled", json={"enabled": True})
    start = await bob.sync()
    await send(alice, room, {"msgtype": "m.text", "body": "x", "m.mentions": {"user_ids": [bob.user_id]}})
    assert unread(await bob.sync(start["next_batch"]), room) == (0, 0)
    assert unread(await bob.sync(), room) == (0, 0)


async def test_a_redacted_message_stops_counting(client: Any) -> None:
    alice, bob, room = await pair(client)
    start = await bob.sync()
    await alice.send(room, "keep")
    gone = await alice.send(room, "oops")
    assert unread(await bob.sync(start["next_batch"]), room) == (2, 0)
    await alice.call("PUT", f"/rooms/{room}/redact/{gone}/r1", json={})
    assert unread(await bob.sync(start["next_batch"]), room) == (1, 0)
    assert unread(await bob.sync(), room) == (1, 0)


async def test_thread_counts_when_the_filter_asks(client: Any) -> None:
    alice, bob, room = await pair(client)
    root = await alice.send(room, "root")
    await send(alice, room, {"msgtype": "m.text", "body": "in thread",
                             "m.relates_to": {"rel_type": "m.thread", "event_id": root}})
    reply2 = await send(alice, room, {"msgtype": "m.text", "body": "bob in thread",
                                      "m.mentions": {"user_ids": [bob.user_id]},
                                      "m.relates_to": {"rel_type": "m.thread", "event_id": root}})
    body = await bob.sync(filter=THREADS)
    assert unread(body, room) == (1, 0)
    assert body["rooms"]["join"][room]["unread_thread_notifications"] == {
        root: {"notification_count": 2, "highlight_count": 1}}
    # incremental syncs carry the thread counts forward
    await alice.send(room, "main again")
    await send(alice, room, {"msgtype": "m.text", "body": "third",
                             "m.relates_to": {"rel_type": "m.thread", "event_id": root}})
    inc = await bob.sync(body["next_batch"], filter=THREADS)
    assert unread(inc, room) == (2, 0)
    assert inc["rooms"]["join"][room]["unread_thread_notifications"] == {
        root: {"notification_count": 3, "highlight_count": 1}}
    assert (await bob.sync(filter=THREADS))["rooms"]["join"][room]["unread_thread_notifications"] == \
        inc["rooms"]["join"][room]["unread_thread_notifications"]
    # a threaded receipt clears that thread only
    await bob.call("POST", f"/rooms/{room}/receipt/m.read/{reply2}", json={"thread_id": root})
    body = await bob.sync(inc["next_batch"], filter=THREADS)
    assert unread(body, room) == (2, 0)
    assert body["rooms"]["join"][room]["unread_thread_notifications"] == {
        root: {"notification_count": 1, "highlight_count": 0}}
    # without the filter flag: one count for the room, and no thread section
    plain = await bob.sync()
    assert "unread_thread_notifications" not in plain["rooms"]["join"][room]


async def test_get_notifications(client: Any) -> None:
    alice, bob, room = await pair(client)
    ids = [await alice.send(room, f"m{i}") for i in range(5)]
    mention = await send(alice, room, {"msgtype": "m.text", "body": "hi", "m.mentions": {"user_ids": [bob.user_id]}})
    page = await bob.call("GET", "/notifications", params={"limit": "4"})
    got = [n["event"]["event_id"] for n in page["notifications"]]
    assert got == [mention, ids[4], ids[3], ids[2]]
    first = page["notifications"][0]
    assert first["room_id"] == room and first["read"] is False and "notify" in first["actions"]
    assert isinstance(first["ts"], int) and first["event"]["content"]["body"] == "hi"
    rest = await bob.call("GET", "/notifications", params={"limit": "4", "from": page["next_token"]})
    # and bob's invite into the room, which notified him too
    assert [n["event"]["event_id"] for n in rest["notifications"]][:2] == [ids[1], ids[0]]
    assert [n["event"]["type"] for n in rest["notifications"]][2:] == ["m.room.member"]
    assert "next_token" not in rest
    highlights = await bob.call("GET", "/notifications", params={"only": "highlight"})
    assert [n["event"]["event_id"] for n in highlights["notifications"]] == [mention]
    await bob.call("POST", f"/rooms/{room}/receipt/m.read/{ids[2]}", json={})
    marked = await bob.call("GET", "/notifications")
    assert [n["read"] for n in marked["notifications"]] == [False, False, False, True, True, True, True]
    await bob.call("GET", "/notifications", params={"from": "nope"}, expect=400)
    await bob.call("GET", "/notifications", params={"limit": "-1"}, expect=400)
    assert (await alice.call("GET", "/notifications"))["notifications"] == []


async def test_invites_notify_the_invitee(client: Any) -> None:
    alice, bob = await User.new(client, "alice"), await User.new(client, "bob")
    room = await alice.create_room()
    await alice.call("POST", f"/rooms/{room}/invite", json={"user_id": bob.user_id})
    found = await bob.call("GET", "/notifications")
    assert [n["event"]["type"] for n in found["notifications"]] == ["m.room.member"]
    assert found["notifications"][0]["event"]["state_key"] == bob.user_id


@pytest.mark.parametrize("backend", ["postgres+redis"], indirect=True)  # several workers need both
async def test_a_rule_changed_on_one_worker_holds_on_the_other(serve: Any, backend: dict[str, Any]) -> None:
    a, b = await serve(), await serve()
    alice, bob, room = await pair(a)
    alice_b = User(b, {"user_id": alice.user_id, "access_token": alice.token})
    start = await bob.sync()
    await alice_b.send(room, "counted")  # B compiles bob's rules (the defaults)
    await bob.call("PUT", f"/pushrules/global/room/{room}", json={"actions": []})  # changed on A
    await asyncio.sleep(0.3)  # the notifier relays the change to B
    await alice_b.send(room, "muted")
    assert unread(await bob.sync(start["next_batch"]), room) == (1, 0)


async def test_counts_in_a_room_of_many(client: Any) -> None:
    """More members than a small group: the in-memory results share the room's member set."""
    alice = await User.new(client, "alice")
    room = await alice.create_room(preset="public_chat")
    others = [await User.new(client, f"m{i}") for i in range(10)]
    for u in others:
        await u.call("POST", f"/join/{room}")
    starts = [await u.sync() for u in others]
    await alice.send(room, "everyone")
    await send(alice, room, {"msgtype": "m.text", "body": "you", "m.mentions": {"user_ids": [others[3].user_id]}})
    late = await User.new(client, "late")
    await late.call("POST", f"/join/{room}")
    for i, (u, start) in enumerate(zip(others, starts)):
        assert unread(await u.sync(start["next_batch"]), room) == ((2, 1) if i == 3 else (2, 0)), i
    assert unread(await late.sync(), room) == (0, 0)
    assert unread(await alice.sync(), room) == (0, 0)


async def test_a_friend_request_notifies_and_highlights(client: Any) -> None:
    alice, bob = await User.new(client, "alice"), await User.new(client, "bob")
    rules = await bob.call("GET", "/pushrules/global/override/.org.whispr.rule.friend_request")
    assert rules["enabled"] and rules["default"]
    await alice.client.post("/_matrix/client/unstable/org.whispr/friends/requests", headers=alice.h,
                            json={"user_id": bob.user_id, "message": "tea?"})
    found = await bob.call("GET", "/notifications")
    request = found["notifications"][0]
    assert request["event"]["type"] == "m.room.member" and request["event"]["state_key"] == bob.user_id
    assert {"set_tweak": "highlight"} in request["actions"]  # the rule above, not the plain invite rule
    # A group invite stays a plain notification.
    room = await alice.create_room()
    await alice.call("POST", f"/rooms/{room}/invite", json={"user_id": bob.user_id})
    plain = (await bob.call("GET", "/notifications"))["notifications"][0]
    assert plain["room_id"] == room and {"set_tweak": "highlight"} not in plain["actions"]


async def ignore(user: User, *user_ids: str) -> None:
    await user.call("PUT", f"/user/{user.user_id}/account_data/m.ignored_user_list",
                    json={"ignored_users": {u: {} for u in user_ids}})


async def test_events_from_ignored_users_notify_nobody_who_ignores_them(client: Any) -> None:
    """The spec: events from ignored users must not trigger notifications (small rooms and big)."""
    alice, bob, small = await pair(client)
    big = await alice.create_room(preset="public_chat")
    others = [await User.new(client, f"m{i}") for i in range(8)]
    for u in [bob, *others]:
        await u.call("POST", f"/join/{big}")
    await ignore(bob, alice.user_id)
    await ignore(others[0], "@someone:else.example")  # ignores somebody else: still counts alice
    starts = {u.user_id: await u.sync() for u in [bob, *others]}
    await alice.send(small, "in the small room")
    await alice.send(big, "in the big room")
    await send(alice, big, {"msgtype": "m.text", "body": "hey bob", "m.mentions": {"user_ids": [bob.user_id]}})
    bob_sync = await bob.sync()  # initial: every room's counts, though alice's messages are hidden
    assert unread(bob_sync, big) == (0, 0) and unread(bob_sync, small) == (0, 0)
    notified = (await bob.call("GET", "/notifications"))["notifications"]
    assert [n["event"]["type"] for n in notified] == ["m.room.member"]  # only the invite, before the ignore
    for u in others:
        assert unread(await u.sync(starts[u.user_id]["next_batch"]), big) == (2, 0), u.user_id
    await ignore(bob)  # no longer ignored: counted again
    start = await bob.sync()
    await alice.send(big, "heard again")
    assert unread(await bob.sync(start["next_batch"]), big) == (1, 0)


async def test_an_ignore_list_set_on_one_worker_holds_on_the_other(serve: Any, backend: dict[str, Any]) -> None:
    """Workers share changes through Redis (without it, one process per database)."""
    if "redis" not in backend:
        pytest.skip("several workers need Redis")
    a, b = await serve(), await serve()
    alice, bob, room = await pair(a)
    alice_b = User(b, {"user_id": alice.user_id, "access_token": alice.token})
    await alice_b.send(room, "counted")  # B has read who ignores whom (nobody)
    await ignore(bob, alice.user_id)  # set on A
    await asyncio.sleep(0.3)  # the notifier relays the change to B
    await alice_b.send(room, "not counted")
    # an initial sync shows the room's counts even though the ignored message itself is hidden
    assert unread(await bob.sync(), room) == (1, 0)
