"""POST /search (room_events) over the full-text index, on SQLite (FTS5) and PostgreSQL (tsvector):
ranking and recent order, paging, filters, context with profiles, history visibility, redactions."""

from __future__ import annotations

from typing import Any

import aiohttp

from tests.rooms_helpers import User
from tests.test_federation_whispr import Client, page_back, pair  # noqa: F401 (pair is a fixture)


async def search(user: User, term: str, expect: int = 200, next_batch: str | None = None,
                 **room_events: Any) -> Any:
    params = {"next_batch": next_batch} if next_batch else None
    body = await user.call("POST", "/search", expect=expect, params=params,
                           json={"search_categories": {"room_events": {"search_term": term, **room_events}}})
    return body if expect != 200 else body["search_categories"]["room_events"]


def found(section: dict[str, Any]) -> list[str]:
    return [r["result"]["content"].get("body") or r["result"]["content"].get("name")
            or r["result"]["content"].get("topic") for r in section["results"]]


async def test_rank_recent_and_highlights(client: Any) -> None:
    alice = await User.new(client, "alice")
    room = await alice.create_room(name="Cheese lovers", topic="all about cheese")
    await alice.send(room, "I like cheese")
    await alice.send(room, "nothing to see here")
    await alice.send(room, "cheese, cheese and more cheese")
    await alice.send(room, "Cheddar is a cheese too")

    recent = await search(alice, "cheese", order_by="recent")
    assert found(recent) == ["Cheddar is a cheese too", "cheese, cheese and more cheese", "I like cheese",
                             "all about cheese", "Cheese lovers"]
    assert recent["count"] == 5
    assert "next_batch" not in recent
    assert "cheese" in recent["highlights"] and "Cheese" in recent["highlights"]
    ranked = await search(alice, "cheese")
    assert found(ranked)[0] == "cheese, cheese and more cheese"  # three times: the best match
    assert [r["rank"] for r in ranked["results"]] == sorted((r["rank"] for r in ranked["results"]), reverse=True)
    assert found(await search(alice, "lovers")) == ["Cheese lovers"]
    # Keys narrow the search to a field; several words must all match; prefixes match.
    assert found(await search(alice, "cheese", keys=["content.topic"])) == ["all about cheese"]
    assert found(await search(alice, "cheddar cheese")) == ["Cheddar is a cheese too"]
    assert found(await search(alice, "chedd")) == ["Cheddar is a cheese too"]
    assert found(await search(alice, "gouda")) == []


async def test_paging_with_next_batch(client: Any) -> None:
    alice = await User.new(client, "alice")
    room = await alice.create_room()
    for i in range(7):
        await alice.send(room, f"page word {i}")
    for order in ("recent", "rank"):
        seen: list[str] = []
        token = None
        for _ in range(4):
            page = await search(alice, "word", next_batch=token, order_by=order, filter={"limit": 3})
            seen += found(page)
            token = page.get("next_batch")
            if token is None:
                break
        assert sorted(seen) == sorted(f"page word {i}" for i in range(7)), order
        assert len(seen) == 7
        if order == "recent":
            assert seen == [f"page word {i}" for i in reversed(range(7))]
    for token in ("nonsense", "o-3", "r5", "o" + "9" * 30):
        await search(alice, "word", expect=400, next_batch=token)
    assert found(await search(alice, "w" * 5000 + " word")) == []


async def test_filters_rooms_and_senders(client: Any) -> None:
    alice, bob = await User.new(client, "alice"), await User.new(client, "bob")
    one = await alice.create_room(preset="public_chat")
    two = await alice.create_room(preset="public_chat")
    await bob.call("POST", f"/join/{one}")
    await alice.send(one, "apple from alice in one")
    await bob.send(one, "apple from bob in one")
    await alice.send(two, "apple from alice in two")
    assert sorted(found(await search(alice, "apple", filter={"rooms": [two]}))) == ["apple from alice in two"]
    assert sorted(found(await search(alice, "apple", filter={"not_rooms": [two]}))) == [
        "apple from alice in one", "apple from bob in one"]
    assert found(await search(alice, "apple", filter={"senders": [bob.user_id]})) == ["apple from bob in one"]
    assert len(found(await search(alice, "apple", filter={"not_senders": [bob.user_id]}))) == 2
    assert found(await search(alice, "apple", filter={"types": ["m.room.topic"]})) == []
    # bob is not in room two: he finds nothing there, even when he asks for it.
    assert found(await search(bob, "apple", filter={"rooms": [two]})) == []
    grouped = await search(alice, "apple", groupings={"group_by": [{"key": "room_id"}, {"key": "sender"}]})
    assert set(grouped["groups"]["room_id"]) == {one, two}
    assert len(grouped["groups"]["room_id"][one]["results"]) == 2
    assert set(grouped["groups"]["sender"]) == {alice.user_id, bob.user_id}
    with_state = await search(alice, "apple", filter={"rooms": [two]}, include_state=True)
    assert any(e["type"] == "m.room.create" for e in with_state["state"][two])


async def test_context_with_profiles(client: Any) -> None:
    alice, bob = await User.new(client, "alice"), await User.new(client, "bob")
    await bob.call("PUT", f"/profile/{bob.user_id}/displayname", json={"displayname": "Bobby"})
    room = await alice.create_room(preset="public_chat")
    await bob.call("POST", f"/join/{room}")
    await alice.send(room, "first")
    await bob.send(room, "second")
    await alice.send(room, "the needle")
    await bob.send(room, "fourth")
    await alice.send(room, "fifth")
    section = await search(alice, "needle", event_context={"before_limit": 2, "after_limit": 1,
                                                          "include_profile": True})
    context = section["results"][0]["context"]
    assert [e["content"]["body"] for e in context["events_before"]] == ["second", "first"]
    assert [e["content"]["body"] for e in context["events_after"]] == ["fourth"]
    assert context["profile_info"][bob.user_id]["displayname"] == "Bobby"
    assert context["profile_info"][alice.user_id]["displayname"] == "alice"
    assert context["start"] and context["end"]


async def test_only_visible_events(client: Any) -> None:
    alice, bob = await User.new(client, "alice"), await User.new(client, "bob")
    room = await alice.create_room(preset="public_chat")
    await alice.call("PUT", f"/rooms/{room}/state/m.room.history_visibility", json={"history_visibility": "joined"})
    await alice.send(room, "secret before bob")
    await bob.call("POST", f"/join/{room}")
    await alice.send(room, "secret after bob joined")
    assert found(await search(bob, "secret")) == ["secret after bob joined"]
    assert len(found(await search(alice, "secret"))) == 2
    # After leaving, bob finds what he could read while he was there, nothing later.
    await bob.call("POST", f"/rooms/{room}/leave")
    await alice.send(room, "secret after bob left")
    assert found(await search(bob, "secret")) == ["secret after bob joined"]
    # A stranger finds nothing.
    carol = await User.new(client, "carol")
    assert found(await search(carol, "secret")) == []


async def test_redacted_events_are_not_found(client: Any) -> None:
    alice = await User.new(client, "alice")
    room = await alice.create_room()
    event_id = await alice.send(room, "regrettable words")
    await alice.send(room, "fine words")
    assert len(found(await search(alice, "words"))) == 2
    await alice.call("PUT", f"/rooms/{room}/redact/{event_id}/r1", json={})
    assert found(await search(alice, "words")) == ["fine words"]
    assert found(await search(alice, "regrettable")) == []


async def test_bad_requests(client: Any) -> None:
    alice = await User.new(client, "alice")
    await alice.call("POST", "/search", expect=400, json={})
    await search(alice, "x", expect=400, keys=["content.nothing"])
    await search(alice, "x", expect=400, order_by="sideways")
    await alice.call("POST", "/search", expect=400, json={"search_categories": {"room_events": {}}})
    assert (await alice.call("POST", "/search", json={"search_categories": {}})) == {"search_categories": {}}
    # Punctuation and query syntax of either engine are only words here.
    assert found(await search(alice, '" OR * ) & ! :* NEAR(')) == []


async def test_received_and_backfilled_events_are_found(pair: Any) -> None:
    """Bob on B (PostgreSQL) finds what A (SQLite) sent: received over /send, and history
    backfilled from before his server joined, less what was redacted; alice on A finds it too."""
    a, b = pair
    async with aiohttp.ClientSession() as session:
        alice = await Client.register(session, a, "alice")
        bob = await Client.register(session, b, "bob")
        room = (await alice.call("POST", "/createRoom", json={"preset": "public_chat"}))["room_id"]
        for i in range(3):
            await alice.send(room, f"ancient scroll {i}")
        await alice.call("PUT", f"/rooms/{room}/redact/{await alice.send(room, 'ancient secret scroll')}/r1",
                         json={})
        await bob.sync_until(lambda _: True)
        await bob.call("POST", f"/join/{room}")
        await alice.send(room, "fresh scroll")
        assert "fresh scroll" in await bob.collect_messages(room, 1)
        body = {"search_categories": {"room_events": {"search_term": "scroll", "order_by": "recent"}}}

        def bodies(answer: Any) -> list[str]:
            return [r["result"]["content"]["body"] for r in answer["search_categories"]["room_events"]["results"]]

        assert bodies(await bob.call("POST", "/search", json=body)) == ["fresh scroll"]
        await page_back(bob, room, 50)  # backfills the history from before B joined
        expected = ["fresh scroll", "ancient scroll 2", "ancient scroll 1", "ancient scroll 0"]
        assert bodies(await bob.call("POST", "/search", json=body)) == expected
        assert bodies(await alice.call("POST", "/search", json=body)) == expected


async def test_bodies_the_index_cannot_hold(client: Any) -> None:
    """A NUL in a body is valid JSON that PostgreSQL's text cannot hold: the message is sent all
    the same, just not found (on SQLite the text stops there)."""
    alice = await User.new(client, "alice")
    room = await alice.create_room()
    await alice.send(room, "before\u0000after nul")
    await alice.call("PUT", f"/rooms/{room}/send/m.room.message/n1", json={"msgtype": "m.text", "body": 42})
    await alice.send(room, "plain nul")
    assert "plain nul" in found(await search(alice, "nul"))
    assert found(await search(alice, "after")) == []


async def test_long_filter_lists(client: Any) -> None:
    """A filter list longer than either engine takes parameters is one parameter here."""
    alice = await User.new(client, "alice")
    room = await alice.create_room()
    await alice.send(room, "needle in a haystack")
    senders = [f"@u{i}:x" for i in range(40_000)] + [alice.user_id]
    assert found(await search(alice, "needle", filter={"senders": senders})) == ["needle in a haystack"]
    assert found(await search(alice, "needle", filter={"not_senders": senders})) == []
    assert found(await search(alice, "needle", filter={"rooms": [f"!r{i}:x" for i in range(40_000)]})) == []
