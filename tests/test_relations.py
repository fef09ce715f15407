"""Relations (Client-Server API "Forming relationships between events", threads, edits, references):
the index, GET /relations and /threads, and bundled aggregations on /sync, /messages, /event and
/context, on SQLite and PostgreSQL; then a relation received from a second Whispr server, and the
index migration over events held before it."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from typing import Any

import aiohttp
import nio
from nio.api import RelationshipType, ThreadInclusion

from bench.servers import RunningServer
from storage import Store, open_database
from storage.migrations import MIGRATIONS, run_migrations
from tests.rooms_helpers import User
from tests.test_nio_rooms import nio_client
from tests.test_synapse_interop import peers, synapse_interpreter
from tests.test_federation_whispr import Client, membership_in_timeline, page_back, pair, users_on_both

__all__ = ["pair", "peers", "synapse_interpreter"]

V1 = "/_matrix/client/v1"
_txn = itertools.count()


async def v1(user: User, path: str, expect: int = 200, **params: str) -> Any:
    resp = await user.client.get(V1 + path, headers=user.h, params=params)
    body = await resp.json()
    assert resp.status == expect, (path, resp.status, body)
    return body


async def send(user: User, room: str, content: dict[str, Any], event_type: str = "m.room.message",
               expect: int = 200) -> Any:
    result = await user.call("PUT", f"/rooms/{room}/send/{event_type}/r{next(_txn)}", json=content, expect=expect)
    return result.get("event_id", result)


def thread_reply(root: str, body: str) -> dict[str, Any]:
    return {"msgtype": "m.text", "body": body, "m.relates_to": {"rel_type": "m.thread", "event_id": root}}


def edit(original: str, body: str, new_content: bool = True) -> dict[str, Any]:
    content: dict[str, Any] = {"msgtype": "m.text", "body": "* " + body,
                               "m.relates_to": {"rel_type": "m.replace", "event_id": original}}
    if new_content:
        content["m.new_content"] = {"msgtype": "m.text", "body": body}
    return content


def reaction(target: str, key: str) -> dict[str, Any]:
    return {"m.relates_to": {"rel_type": "m.annotation", "event_id": target, "key": key}}


def relations_of(ev: dict[str, Any]) -> dict[str, Any]:
    return ev.get("unsigned", {}).get("m.relations", {})


async def room_with(alice: User, *others: User) -> str:
    room = await alice.create_room(preset="public_chat")
    for other in others:
        await other.call("POST", f"/join/{room}", json={})
    return room


async def test_threads_bundle_everywhere_and_list_by_activity(client: Any) -> None:
    alice, bob, carol = [await User.new(client, n) for n in ("alice", "bob", "carol")]
    room = await room_with(alice, bob, carol)
    root = await send(alice, room, {"msgtype": "m.text", "body": "root"})
    first = await send(bob, room, thread_reply(root, "one"))
    last = await send(bob, room, thread_reply(root, "two"))
    plain = await send(alice, room, {"msgtype": "m.text", "body": "no thread"})

    for who, participated in ((alice, True), (bob, True), (carol, False)):
        thread = relations_of(await who.call("GET", f"/rooms/{room}/event/{root}"))["m.thread"]
        assert (thread["count"], thread["latest_event"]["event_id"], thread["current_user_participated"]) == \
            (2, last, participated)
        assert thread["latest_event"]["content"]["body"] == "two"
    assert relations_of(await alice.call("GET", f"/rooms/{room}/event/{plain}")) == {}

    chunk = (await alice.call("GET", f"/rooms/{room}/messages", params={"dir": "b", "limit": "10"}))["chunk"]
    by_id = {e["event_id"]: e for e in chunk}
    assert relations_of(by_id[root])["m.thread"]["count"] == 2
    assert relations_of(by_id[plain]) == {} and relations_of(by_id[first]) == {}
    context = await alice.call("GET", f"/rooms/{room}/context/{first}", params={"limit": "10"})
    before = {e["event_id"]: e for e in context["events_before"]}
    assert relations_of(before[root])["m.thread"]["latest_event"]["event_id"] == last
    assert relations_of((await alice.call("GET", f"/rooms/{room}/context/{root}"))["event"])["m.thread"]["count"] == 2

    initial = await carol.sync()
    timeline = {e["event_id"]: e for e in initial["rooms"]["join"][room]["timeline"]["events"]}
    assert relations_of(timeline[root])["m.thread"]["count"] == 2
    assert relations_of(timeline[plain]) == {}
    # An incremental sync whose page holds the root and its new reply bundles the new count.
    since = initial["next_batch"]
    root2 = await send(carol, room, {"msgtype": "m.text", "body": "root 2"})
    reply2 = await send(alice, room, thread_reply(root2, "in 2"))
    page = {e["event_id"]: e for e in (await carol.sync(since))["rooms"]["join"][room]["timeline"]["events"]}
    thread = relations_of(page[root2])["m.thread"]
    assert (thread["count"], thread["current_user_participated"], thread["latest_event"]["event_id"]) == \
        (1, True, reply2)
    assert relations_of(page[reply2]) == {}

    # /threads: latest activity first, bundled, paged; `participated` is the root's sender or a replier.
    listed = await v1(alice, f"/rooms/{room}/threads")
    assert [e["event_id"] for e in listed["chunk"]] == [root2, root]
    assert relations_of(listed["chunk"][1])["m.thread"]["count"] == 2
    await send(bob, room, thread_reply(root, "three"))
    assert [e["event_id"] for e in (await v1(alice, f"/rooms/{room}/threads"))["chunk"]] == [root, root2]
    page1 = await v1(alice, f"/rooms/{room}/threads", limit="1")
    assert [e["event_id"] for e in page1["chunk"]] == [root]
    page2 = await v1(alice, f"/rooms/{room}/threads", limit="1", **{"from": page1["next_batch"]})
    assert [e["event_id"] for e in page2["chunk"]] == [root2]
    assert [e["event_id"] for e in (await v1(bob, f"/rooms/{room}/threads", include="participated"))["chunk"]] \
        == [root]
    assert [e["event_id"] for e in (await v1(carol, f"/rooms/{room}/threads", include="participated"))["chunk"]] \
        == [root2]
    await v1(alice, f"/rooms/{room}/threads", 400, include="mine")
    await v1(alice, f"/rooms/{room}/threads", 400, limit="0")

    # A thread cannot start from an event that relates to another (the spec's validation).
    failed = await send(alice, room, thread_reply(first, "nested"), expect=400)
    assert failed["errcode"] == "M_UNKNOWN"


async def test_sync_bundles_a_root_older_than_the_events_kept_in_memory(client: Any) -> None:
    """/sync skips the lookup only when its recent events prove there are no children: a root
    that fell out of them (100 per room) still gets its bundle, from the database."""
    alice, bob = await User.new(client, "alice"), await User.new(client, "bob")
    room = await room_with(alice, bob)
    root = await send(alice, room, {"msgtype": "m.text", "body": "root"})
    await send(bob, room, thread_reply(root, "reply"))
    for i in range(110):
        await alice.send(room, f"filler {i}")
    body = await bob.sync(filter=json.dumps({"room": {"timeline": {"limit": 200}}}))
    timeline = {e["event_id"]: e for e in body["rooms"]["join"][room]["timeline"]["events"]}
    assert relations_of(timeline[root])["m.thread"]["count"] == 1
    since = body["next_batch"]
    await send(bob, room, thread_reply(root, "late reply"))
    page = (await bob.sync(since))["rooms"]["join"][room]["timeline"]["events"]
    assert [relations_of(e) for e in page] == [{}]  # the root is not in this page


async def test_edits_bundle_the_latest_valid_one_and_keep_the_original_content(client: Any) -> None:
    alice, bob = await User.new(client, "alice"), await User.new(client, "bob")
    room = await room_with(alice, bob)
    original = await send(alice, room, {"msgtype": "m.text", "body": "I like cake"})
    first = await send(alice, room, edit(original, "I like chocolate cake"))
    await asyncio.sleep(0.01)  # the most recent edit is judged by origin_server_ts
    second = await send(alice, room, edit(original, "I like all cake"))
    await asyncio.sleep(0.01)
    await send(bob, room, edit(original, "bob was here"))  # another sender: invalid
    await send(alice, room, edit(original, "no new content", new_content=False))  # invalid
    await send(alice, room, edit(original, "as a notice"), event_type="m.room.notice")  # another type: invalid
    await send(alice, room, edit(first, "an edit of an edit"))  # invalid: its target is an edit

    ev = await alice.call("GET", f"/rooms/{room}/event/{original}")
    assert ev["content"]["body"] == "I like cake"  # the spec (v1.7+): the original content stays
    replace = relations_of(ev)["m.replace"]
    assert (replace["event_id"], replace["sender"], replace["content"]["m.new_content"]["body"]) == \
        (second, alice.user_id, "I like all cake")
    assert "m.replace" not in relations_of(await alice.call("GET", f"/rooms/{room}/event/{first}"))

    # State events can't be edited (and get no bundle).
    topic = (await alice.call("PUT", f"/rooms/{room}/state/m.room.topic", json={"topic": "t"}))["event_id"]
    await send(alice, room, edit(topic, "new topic"), event_type="m.room.topic")
    state_edit = {"topic": "t2", "m.new_content": {"topic": "t2"},
                  "m.relates_to": {"rel_type": "m.replace", "event_id": topic}}
    await alice.call("PUT", f"/rooms/{room}/state/m.room.topic", json=state_edit)
    assert relations_of(await alice.call("GET", f"/rooms/{room}/event/{topic}")) == {}

    # Redacting the latest edit falls back to the one before; redacting the original drops the bundle.
    await alice.call("PUT", f"/rooms/{room}/redact/{second}/x1", json={})
    ev = await alice.call("GET", f"/rooms/{room}/event/{original}")
    assert relations_of(ev)["m.replace"]["event_id"] == first
    chunk = (await alice.call("GET", f"/rooms/{room}/messages", params={"limit": "20"}))["chunk"]
    assert relations_of(next(e for e in chunk if e["event_id"] == original))["m.replace"]["event_id"] == first
    await alice.call("PUT", f"/rooms/{room}/redact/{original}/x2", json={})
    assert "m.replace" not in relations_of(await alice.call("GET", f"/rooms/{room}/event/{original}"))


async def test_relations_pages_both_ways_filters_and_recurses(client: Any) -> None:
    alice, bob = await User.new(client, "alice"), await User.new(client, "bob")
    room = await room_with(alice, bob)
    target = await send(alice, room, {"msgtype": "m.text", "body": "react to me"})
    reactions = [await send(u, room, reaction(target, k), "m.reaction") for u, k in
                 ((alice, "a"), (bob, "b"), (alice, "c"), (bob, "d"), (alice, "e"))]
    ref = await send(bob, room, {"msgtype": "m.text", "body": "see above",
                                 "m.relates_to": {"rel_type": "m.reference", "event_id": target}})
    reply = await send(bob, room, thread_reply(target, "reply"))
    on_reply = await send(alice, room, reaction(reply, "r"), "m.reaction")

    # Backwards (the default), newest first, two at a time.
    seen, token, pages = [], None, 0
    while True:
        params = {"limit": "2", **({"from": token} if token else {})}
        body = await v1(alice, f"/rooms/{room}/relations/{target}", **params)
        seen += [e["event_id"] for e in body["chunk"]]
        pages += 1
        if "next_batch" not in body:
            break
        assert len(body["chunk"]) == 2
        token = body["next_batch"]
    assert seen == [reply, ref, *reversed(reactions)] and pages == 4
    # Forwards, oldest first.
    forward, token = [], None
    while True:
        body = await v1(alice, f"/rooms/{room}/relations/{target}", dir="f", limit="3",
                        **({"from": token} if token else {}))
        forward += [e["event_id"] for e in body["chunk"]]
        if "next_batch" not in body:
            break
        token = body["next_batch"]
    assert forward == [*reactions, ref, reply]
    assert "recursion_depth" not in body and "prev_batch" in body

    # Filtered by relation type and event type; `to` stops a page.
    only = await v1(alice, f"/rooms/{room}/relations/{target}/m.annotation/m.reaction")
    assert [e["event_id"] for e in only["chunk"]] == list(reversed(reactions))
    assert (await v1(alice, f"/rooms/{room}/relations/{target}/m.annotation/m.room.message"))["chunk"] == []
    assert [e["event_id"] for e in (await v1(alice, f"/rooms/{room}/relations/{target}/m.reference"))["chunk"]] \
        == [ref]
    first_page = await v1(alice, f"/rooms/{room}/relations/{target}/m.annotation", limit="2")
    rest = await v1(alice, f"/rooms/{room}/relations/{target}/m.annotation", **{"from": first_page["next_batch"]})
    assert [e["event_id"] for e in rest["chunk"]] == list(reversed(reactions))[2:]
    bounded = await v1(alice, f"/rooms/{room}/relations/{target}", **{"to": first_page["next_batch"]})
    assert [e["event_id"] for e in bounded["chunk"]] == [reply, ref, reactions[4], reactions[3]]

    # Through the thread reply to its reaction, with recurse; the chunk bundles too.
    deep = await v1(alice, f"/rooms/{room}/relations/{target}", recurse="true", limit="20")
    assert deep["recursion_depth"] == 3 and [e["event_id"] for e in deep["chunk"]][0] == on_reply
    assert on_reply not in [e["event_id"] for e in (await v1(alice, f"/rooms/{room}/relations/{target}",
                                                             recurse="false", limit="20"))["chunk"]]
    await v1(alice, f"/rooms/{room}/relations/{target}", 400, recurse="yes")
    await v1(alice, f"/rooms/{room}/relations/{target}", 400, dir="up")
    await v1(alice, f"/rooms/{room}/relations/{target}", 400, **{"from": "nonsense"})

    # The reference is bundled; annotations are not part of the spec's bundles.
    bundle = relations_of(await alice.call("GET", f"/rooms/{room}/event/{target}"))
    assert bundle["m.reference"] == {"chunk": [{"event_id": ref}]}
    assert bundle["m.thread"]["count"] == 1 and "m.annotation" not in bundle

    # A redacted relation no longer counts anywhere.
    await bob.call("PUT", f"/rooms/{room}/redact/{reactions[1]}/x1", json={})
    await bob.call("PUT", f"/rooms/{room}/redact/{reply}/x2", json={})
    left = await v1(alice, f"/rooms/{room}/relations/{target}/m.annotation")
    assert [e["event_id"] for e in left["chunk"]] == [reactions[4], reactions[3], reactions[2], reactions[0]]
    assert "m.thread" not in relations_of(await alice.call("GET", f"/rooms/{room}/event/{target}"))
    assert (await v1(alice, f"/rooms/{room}/threads"))["chunk"] == []


async def test_who_may_read_relations_and_relations_across_rooms(client: Any) -> None:
    alice, bob, eve = [await User.new(client, n) for n in ("alice", "bob", "eve")]
    private = await alice.create_room(preset="private_chat")
    secret = await send(alice, private, {"msgtype": "m.text", "body": "secret"})
    await send(alice, private, thread_reply(secret, "more secret"))
    # Not a member of a room that is not world-readable: 403, like /event and /messages.
    for path in (f"/rooms/{private}/relations/{secret}", f"/rooms/{private}/threads"):
        assert (await v1(eve, path, 403))["errcode"] == "M_FORBIDDEN"
    assert (await v1(alice, f"/rooms/{private}/relations/$nope", 404))["errcode"] == "M_NOT_FOUND"

    # A relation to another room's event is ignored: no bundle, no child, not a thread there.
    other = await room_with(alice, bob)
    await send(bob, other, thread_reply(secret, "from elsewhere"))
    await send(bob, other, reaction(secret, "x"), "m.reaction")
    assert relations_of(await alice.call("GET", f"/rooms/{private}/event/{secret}"))["m.thread"]["count"] == 1
    assert len((await v1(alice, f"/rooms/{private}/relations/{secret}"))["chunk"]) == 1
    assert (await v1(alice, f"/rooms/{other}/relations/{secret}", 404))["errcode"] == "M_NOT_FOUND"
    assert (await v1(alice, f"/rooms/{other}/threads"))["chunk"] == []
    # Malformed relations never fail the event.
    for bad in ({"rel_type": 5, "event_id": secret}, {"rel_type": "m.thread"}, "m.thread", [secret],
                {"rel_type": "m.thread", "event_id": {"$x": 1}}):
        await send(alice, other, {"msgtype": "m.text", "body": "odd", "m.relates_to": bad})

    # A user who left reads relations only as of their leave.
    public = await room_with(alice, bob)
    root = await send(alice, public, {"msgtype": "m.text", "body": "root"})
    before = await send(bob, public, thread_reply(root, "before leaving"))
    await bob.call("POST", f"/rooms/{public}/leave", json={})
    await send(alice, public, thread_reply(root, "after"))
    assert [e["event_id"] for e in (await v1(bob, f"/rooms/{public}/relations/{root}"))["chunk"]] == [before]
    thread = relations_of(await bob.call("GET", f"/rooms/{public}/event/{root}"))["m.thread"]
    assert (thread["count"], thread["latest_event"]["event_id"]) == (1, before)  # nothing from after the leave
    assert relations_of(await alice.call("GET", f"/rooms/{public}/event/{root}"))["m.thread"]["count"] == 2


async def test_thread_summary_shows_the_latest_edit_and_skips_ignored_users(client: Any) -> None:
    alice, bob, mallory = [await User.new(client, n) for n in ("alice", "bob", "mallory")]
    room = await room_with(alice, bob, mallory)
    root = await send(alice, room, {"msgtype": "m.text", "body": "root"})
    reply = await send(bob, room, thread_reply(root, "typo"))
    fixed = await send(bob, room, edit(reply, "fixed"))
    latest = relations_of(await alice.call("GET", f"/rooms/{room}/event/{root}"))["m.thread"]["latest_event"]
    assert (latest["event_id"], relations_of(latest)["m.replace"]["event_id"]) == (reply, fixed)

    await send(mallory, room, thread_reply(root, "spam"))
    await send(mallory, room, {"msgtype": "m.text", "body": "see", "m.relates_to": {"rel_type": "m.reference",
                                                                                   "event_id": root}})
    assert relations_of(await alice.call("GET", f"/rooms/{room}/event/{root}"))["m.thread"]["count"] == 2
    await alice.call("PUT", f"/user/{alice.user_id}/account_data/m.ignored_user_list",
                     json={"ignored_users": {mallory.user_id: {}}})
    bundle = relations_of(await alice.call("GET", f"/rooms/{room}/event/{root}"))
    assert (bundle["m.thread"]["count"], bundle["m.thread"]["latest_event"]["event_id"]) == (1, reply)
    assert "m.reference" not in bundle
    assert relations_of(await bob.call("GET", f"/rooms/{room}/event/{root}"))["m.thread"]["count"] == 2
    # A thread an ignored user started is listed, its root redacted (the spec's /threads).
    spam_root = await send(mallory, room, {"msgtype": "m.text", "body": "buy now"})
    await send(bob, room, thread_reply(spam_root, "no"))
    listed = (await v1(alice, f"/rooms/{room}/threads"))["chunk"]
    assert [(e["event_id"], e["content"]) for e in listed] == [(spam_root, {}), (root, {"msgtype": "m.text",
                                                                                       "body": "root"})]
    assert (await v1(bob, f"/rooms/{room}/threads"))["chunk"][0]["content"]["body"] == "buy now"


async def test_thread_receipts_are_accepted_and_synced(client: Any) -> None:
    alice, bob = await User.new(client, "alice"), await User.new(client, "bob")
    room = await room_with(alice, bob)
    root = await send(alice, room, {"msgtype": "m.text", "body": "root"})
    reply = await send(alice, room, thread_reply(root, "in thread"))
    since = (await bob.sync())["next_batch"]
    await bob.call("POST", f"/rooms/{room}/receipt/m.read/{reply}", json={"thread_id": root})
    body = await bob.sync(since)
    receipts = [e for e in body["rooms"]["join"][room]["ephemeral"]["events"] if e["type"] == "m.receipt"]
    assert receipts[0]["content"][reply]["m.read"][bob.user_id]["thread_id"] == root
    await bob.call("POST", f"/rooms/{room}/receipt/m.read/{reply}", json={"thread_id": 5}, expect=400)


async def test_matrix_nio_reads_relations_and_threads(client: Any) -> None:
    alice, bob = await nio_client(client, "alice"), await nio_client(client, "bob")
    try:
        room = (await alice.room_create(preset=nio.RoomPreset.public_chat)).room_id
        assert isinstance(await bob.join(room), nio.JoinResponse)
        root = (await alice.room_send(room, "m.room.message", {"msgtype": "m.text", "body": "root"})).event_id
        replies = [(await bob.room_send(room, "m.room.message", thread_reply(root, f"r{i}"))).event_id
                   for i in range(3)]
        liked = (await alice.room_send(room, "m.reaction", reaction(root, "+1"))).event_id

        # nio pages through next_batch on its own, two at a time here.
        children = [e.event_id async for e in alice.room_get_event_relations(room, root, limit=2)]
        assert children == [liked, *reversed(replies)]
        threaded = [e.event_id async for e in alice.room_get_event_relations(
            room, root, rel_type=RelationshipType.thread, event_type="m.room.message")]
        assert threaded == list(reversed(replies))
        roots = [e async for e in bob.room_get_threads(room, include=ThreadInclusion.participated)]
        assert [e.event_id for e in roots] == [root]
        assert roots[0].source["unsigned"]["m.relations"]["m.thread"]["count"] == 3
        got = await bob.room_get_event(room, root)
        assert isinstance(got, nio.RoomGetEventResponse), got
        assert got.event.source["unsigned"]["m.relations"]["m.thread"]["latest_event"]["event_id"] == replies[-1]
    finally:
        await alice.close()
        await bob.close()


async def test_relation_received_over_federation_is_indexed(pair: tuple[RunningServer, RunningServer]) -> None:
    """Relations from another Whispr server, live and backfilled, are indexed where they arrive."""
    a, b = pair
    async with aiohttp.ClientSession() as session:
        alice, bob = await users_on_both(session, a, "alice", b, "bob")
        room = (await alice.call("POST", "/createRoom", json={"preset": "public_chat"}))["room_id"]
        old_root = await alice.send(room, "old root")
        old_reply = (await alice.call("PUT", f"/rooms/{room}/send/m.room.message/fed0",
                                      json=thread_reply(old_root, "old reply")))["event_id"]
        await bob.call("POST", f"/join/{room}")
        # History from before B joined comes by backfill as B pages back, and its thread with it.
        await page_back(bob, room, 50)
        old = relations_of(await bob.call("GET", f"/rooms/{room}/event/{old_root}"))["m.thread"]
        assert (old["count"], old["latest_event"]["event_id"]) == (1, old_reply)
        await alice.sync_until(membership_in_timeline(room, bob.user_id, "join"))
        root = await alice.send(room, "root on A")
        await bob.collect_messages(room, 1)
        reply = (await bob.call("PUT", f"/rooms/{room}/send/m.room.message/fed1",
                                json=thread_reply(root, "reply from B")))["event_id"]
        await alice.collect_messages(room, 1)

        async def relations(client: Client) -> Any:
            url = f"{client.server.base_url}{V1}/rooms/{room}/relations/{root}"
            async with session.get(url, headers=client.h) as resp:
                assert resp.status == 200
                return await resp.json()

        assert [e["event_id"] for e in (await relations(alice))["chunk"]] == [reply]
        assert [e["event_id"] for e in (await relations(bob))["chunk"]] == [reply]
        thread = relations_of(await alice.call("GET", f"/rooms/{room}/event/{root}"))["m.thread"]
        assert (thread["count"], thread["latest_event"]["event_id"]) == (1, reply)
        # B's redaction reaches A and takes the reply out of the thread there too.
        await bob.call("PUT", f"/rooms/{room}/redact/{reply}/fed2", json={})
        deadline = time.monotonic() + 20
        while (await relations(alice))["chunk"] and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        assert (await relations(alice))["chunk"] == []


async def test_threads_and_edits_agree_with_synapse(peers: tuple[RunningServer, RunningServer]) -> None:
    """A room on Whispr with a Synapse (1.163.2) member: each side's thread replies and edits are
    indexed by the other, and both servers bundle the same thread and edit for the same events."""
    whispr, synapse = peers
    async with aiohttp.ClientSession() as session:
        wanda, sam = await users_on_both(session, whispr, "wanda", synapse, "sam")
        room = (await wanda.call("POST", "/createRoom", json={"preset": "public_chat"}))["room_id"]
        await wanda.call("POST", f"/rooms/{room}/invite", json={"user_id": sam.user_id})
        await sam.sync_until(lambda body: room in body["rooms"].get("invite", {}))
        await sam.call("POST", f"/join/{room}")
        await wanda.sync_until(membership_in_timeline(room, sam.user_id, "join"))
        root = await wanda.send(room, "root on Whispr")
        await sam.collect_messages(room, 1)
        sams = (await sam.call("PUT", f"/rooms/{room}/send/m.room.message/s1",
                               json=thread_reply(root, "from Synapse")))["event_id"]
        await wanda.collect_messages(room, 1)
        wandas = (await wanda.call("PUT", f"/rooms/{room}/send/m.room.message/w1",
                                   json=thread_reply(root, "from Whispr")))["event_id"]
        fixed = (await wanda.call("PUT", f"/rooms/{room}/send/m.room.message/w2",
                                  json=edit(root, "root, edited")))["event_id"]
        await sam.collect_messages(room, 2)

        async def bundle(client: Client) -> dict[str, Any]:
            return relations_of(await client.call("GET", f"/rooms/{room}/event/{root}"))

        async def children(client: Client) -> list[str]:
            url = f"{client.server.base_url}{V1}/rooms/{room}/relations/{root}/m.thread"
            async with session.get(url, headers=client.h) as resp:
                assert resp.status == 200
                return [e["event_id"] for e in (await resp.json())["chunk"]]

        assert await children(wanda) == await children(sam) == [wandas, sams]
        ours, theirs = await bundle(wanda), await bundle(sam)
        for b in (ours, theirs):
            assert (b["m.thread"]["count"], b["m.thread"]["latest_event"]["event_id"], b["m.replace"]["event_id"]) \
                == (2, wandas, fixed)
        assert ours["m.thread"]["current_user_participated"] == theirs["m.thread"]["current_user_participated"]


async def test_migration_indexes_the_relations_of_events_held_before_it(db_args: dict[str, Any]) -> None:
    index = next(m for m in MIGRATIONS if m.description.startswith("relations:"))
    db = await open_database(**db_args, migrate=False)
    try:
        await run_migrations(db, tuple(m for m in MIGRATIONS if m.version < index.version))
        contents: list[tuple[str, Any, dict[str, Any]]] = [
            ("$reply", None, {"m.relates_to": {"rel_type": "m.thread", "event_id": "$root"}}),
            ("$redacted", "$r", {"m.relates_to": {"rel_type": "m.annotation", "event_id": "$root"}}),
            ("$number", None, {"m.relates_to": {"rel_type": 5, "event_id": "$root"}}),
            ("$nul", None, {"m.relates_to": {"rel_type": "m.thread", "event_id": "$a\u0000\ud800"}}),
            ("$text", None, {"m.relates_to": "m.thread"}),
            ("$plain", None, {"body": "x"}),
        ]
        for stream, (event_id, redacted_by, content) in enumerate(contents, start=1):
            await db.execute(
                "INSERT INTO events (stream, event_id, room_id, type, sender, depth, origin_server_ts, json,"
                " redacted_by) VALUES (?, ?, '!r:x', 'm.room.message', '@u:x', 1, 0, ?, ?)",
                stream, event_id, json.dumps({"type": "m.room.message", "content": content}), redacted_by)
        await run_migrations(db)
        rows = await Store(db).relations.children("!r:x", "$root", rel_type=None, event_type=None, after=None,
                                                  upto=None, backwards=True, limit=10)
        assert [(r.event_id, r.rel_type, r.stream) for r in rows] == [("$reply", "m.thread", 1)]
    finally:
        await db.close()
