"""State resolution v2 / v2.1 on forked room graphs built from real signed events."""

from __future__ import annotations

import dataclasses
import itertools
import time

import pytest

from homeserver.events.auth_rules import CREATE_KEY, JOIN_RULES_KEY, POWER_LEVELS_KEY
from homeserver.events.event import StateKey
from homeserver.events.room_versions import ROOM_V10, ROOM_V11, ROOM_V12, RoomVersion
from homeserver.events.state_res import AuthGraphCycleError, _Resolver, is_power_event, resolve_state_v2, split_state
from tests.event_graph import ALICE, BOB, CHARLIE, ZARA, Branch, new_room

TOPIC: StateKey = ("m.room.topic", "")
NAME: StateKey = ("m.room.name", "")


def member(user: str) -> StateKey:
    return ("m.room.member", user)


async def resolve(*branches: Branch, version: RoomVersion | None = None) -> dict[StateKey, str]:
    graph = branches[0].graph
    return await resolve_state_v2(version or graph.room_version, [b.state for b in branches], graph.get_event)


async def resolve_both_ways(a: Branch, b: Branch) -> dict[StateKey, str]:
    """Resolution must not depend on the order the state sets arrive in."""
    forward, backward = await resolve(a, b), await resolve(b, a)
    assert forward == backward
    return forward


# ---- basics -------------------------------------------------------------------------------------

def test_split_state() -> None:
    a = {("t", ""): "$1", ("u", ""): "$2", ("only_a", ""): "$3"}
    b = {("t", ""): "$1", ("u", ""): "$4"}
    unconflicted, conflicted = split_state([a, b])
    assert unconflicted == {("t", ""): "$1"}
    assert conflicted == {"$2", "$4", "$3"}


async def test_trivial_inputs() -> None:
    branch = new_room()
    assert await resolve_state_v2(ROOM_V11, [], branch.graph.get_event) == {}
    assert await resolve(branch) == branch.state
    assert await resolve(branch, branch.fork()) == branch.state


def test_is_power_event() -> None:
    branch = new_room()
    branch.member(BOB, "join")
    graph = branch.graph
    assert is_power_event(graph.events[branch.state[POWER_LEVELS_KEY]])
    assert is_power_event(graph.events[branch.state[JOIN_RULES_KEY]])
    assert not is_power_event(graph.events[branch.state[member(BOB)]])
    assert not is_power_event(branch.member(BOB, "leave"))                    # leaving yourself
    assert is_power_event(branch.member(BOB, "ban", sender=ALICE))            # banning someone else
    assert not is_power_event(branch.send("m.room.topic", ALICE, {"topic": "x"}, ""))


# ---- power events: reverse topological power ordering -------------------------------------------

async def test_ban_races_power_level_change() -> None:
    """Bob (50) bans Zara while Alice (100) concurrently demotes Bob: Alice's change goes first,
    so Bob's ban no longer passes and Zara stays; Bob's earlier room name is unconflicted and stays."""
    base = new_room()
    for user in (BOB, ZARA):
        base.member(user, "join")
    base.power_levels(ALICE, {ALICE: 100, BOB: 50})
    name = base.send("m.room.name", BOB, {"name": "Bob's room"}, "")
    a, b = base.fork(), base.fork()
    a.member(ZARA, "ban", sender=BOB, ts=10)                 # earlier timestamp: does not matter
    demote = b.power_levels(ALICE, {ALICE: 100}, ts=20)

    resolved = await resolve_both_ways(a, b)
    assert resolved == {**base.state, POWER_LEVELS_KEY: demote.event_id}
    assert resolved[member(ZARA)] == base.state[member(ZARA)]
    assert resolved[NAME] == name.event_id


async def test_ban_beats_op_of_lower_power() -> None:
    """Alice bans Bob while Bob promotes Charlie: the ban (higher-power sender) is applied first
    and Bob's power change is then refused because he is no longer joined."""
    base = new_room()
    for user in (BOB, CHARLIE):
        base.member(user, "join")
    base.power_levels(ALICE, {ALICE: 100, BOB: 50})
    a, b = base.fork(), base.fork()
    ban = a.member(BOB, "ban", sender=ALICE, ts=50)
    b.power_levels(BOB, {ALICE: 100, BOB: 50, CHARLIE: 50}, ts=5)

    resolved = await resolve_both_ways(a, b)
    assert resolved == {**base.state, member(BOB): ban.event_id}


async def test_equal_power_changes_apply_oldest_first() -> None:
    """Two of Alice's concurrent join rule changes: same power, so the older one is applied first
    and the newer one wins; with equal timestamps the larger event ID is applied last."""
    base = new_room()
    base.member(BOB, "join")
    a, b = base.fork(), base.fork()
    a.send("m.room.join_rules", ALICE, {"join_rule": "invite"}, "", ts=7000)
    a.send("m.room.join_rules", ALICE, {"join_rule": "public"}, "", ts=5000)
    knock = b.send("m.room.join_rules", ALICE, {"join_rule": "knock"}, "", ts=6000)
    # a's 7000 event is superseded on its own branch and cited by nothing, so it takes no part:
    # the contest is a's current 5000 against b's 6000, and the newer timestamp is applied last.
    assert (await resolve_both_ways(a, b))[JOIN_RULES_KEY] == knock.event_id

    c, d = base.fork(), base.fork()
    x = c.send("m.room.join_rules", ALICE, {"join_rule": "invite"}, "", ts=9000)
    y = d.send("m.room.join_rules", ALICE, {"join_rule": "knock"}, "", ts=9000)
    assert (await resolve_both_ways(c, d))[JOIN_RULES_KEY] == max(x.event_id, y.event_id)

    e, f = base.fork(), base.fork()
    e.send("m.room.join_rules", ALICE, {"join_rule": "invite"}, "", ts=6000)
    later = f.send("m.room.join_rules", ALICE, {"join_rule": "knock"}, "", ts=7000)
    assert (await resolve_both_ways(e, f))[JOIN_RULES_KEY] == later.event_id


async def test_lower_power_change_is_applied_last_if_still_allowed() -> None:
    """Power order puts the more powerful sender first, so a still-authorised moderator's
    concurrent join rule change lands on top of the admin's."""
    base = new_room()
    base.member(BOB, "join")
    base.power_levels(ALICE, {ALICE: 100, BOB: 50})
    a, b = base.fork(), base.fork()
    bobs = a.send("m.room.join_rules", BOB, {"join_rule": "invite"}, "", ts=1)
    b.send("m.room.join_rules", ALICE, {"join_rule": "knock"}, "", ts=2)
    resolved = await resolve_both_ways(a, b)
    assert resolved[JOIN_RULES_KEY] == bobs.event_id


async def test_power_ordering_respects_auth_ancestry() -> None:
    """A chain of power level changes on one side is applied in DAG order, whatever the timestamps."""
    base = new_room()
    base.member(BOB, "join")
    a, b = base.fork(), base.fork()
    a.power_levels(ALICE, {ALICE: 100, BOB: 50}, ts=900)
    last = a.power_levels(ALICE, {ALICE: 100, BOB: 60}, ts=100)   # child with an older timestamp
    b.send("m.room.topic", ALICE, {"topic": "hello"}, "", ts=500)
    resolved = await resolve_both_ways(a, b)
    assert resolved[POWER_LEVELS_KEY] == last.event_id


# ---- the classic examples -----------------------------------------------------------------------

async def test_join_rule_evasion() -> None:
    """Zara joins a public room at the same time Alice makes it invite-only: she is refused."""
    base = new_room()
    base.member(BOB, "join")
    a, b = base.fork(), base.fork()
    invite_only = a.send("m.room.join_rules", ALICE, {"join_rule": "invite"}, "", ts=10**9)
    b.member(ZARA, "join", ts=1)
    b.send("m.room.message", ZARA, {"body": "sneaking in"})
    resolved = await resolve_both_ways(a, b)
    assert resolved == {**base.state, JOIN_RULES_KEY: invite_only.event_id}
    assert member(ZARA) not in resolved


async def test_topic_reset_after_ban() -> None:
    """Bob (moderator) changes the topic, then is banned; the other side never saw either. The ban
    wins, Bob's topic is then unauthorised and the topic falls back to Alice's."""
    base = new_room()
    base.member(BOB, "join")
    alice_topic = base.send("m.room.topic", ALICE, {"topic": "Alice's"}, "")
    base.power_levels(ALICE, {ALICE: 100, BOB: 50})
    a, b = base.fork(), base.fork()
    a.send("m.room.topic", BOB, {"topic": "Bob's"}, "")
    ban = a.member(BOB, "ban", sender=ALICE)
    resolved = await resolve_both_ways(a, b)
    assert resolved == {**base.state, member(BOB): ban.event_id, TOPIC: alice_topic.event_id}


async def test_topic_by_mainline_not_timestamp() -> None:
    """Alice's topic cites an older power levels event than Charlie's, so it sorts earlier on the
    mainline and Charlie's topic wins even though its timestamp is older."""
    base = new_room()
    base.member(CHARLIE, "join")
    base.power_levels(ALICE, {ALICE: 100})
    a, b = base.fork(), base.fork()
    alice_topic = a.send("m.room.topic", ALICE, {"topic": "Alice's"}, "", ts=9000)
    promote = b.power_levels(ALICE, {ALICE: 100, CHARLIE: 50}, ts=8000)
    charlie_topic = b.send("m.room.topic", CHARLIE, {"topic": "Charlie's"}, "", ts=100)
    assert charlie_topic.origin_server_ts < alice_topic.origin_server_ts
    resolved = await resolve_both_ways(a, b)
    assert resolved == {**base.state, POWER_LEVELS_KEY: promote.event_id, TOPIC: charlie_topic.event_id}


async def test_topic_same_mainline_position_uses_timestamp() -> None:
    base = new_room()
    branches = [base.fork() for _ in range(3)]
    topics = [br.send("m.room.topic", ALICE, {"topic": str(i)}, "", ts=ts)
              for i, (br, ts) in enumerate(zip(branches, (300, 500, 100)))]
    for order in itertools.permutations(branches):
        resolved = await resolve(*order)
        assert resolved[TOPIC] == topics[1].event_id  # the newest
        assert resolved == {**base.state, TOPIC: topics[1].event_id}


async def test_offtopic_power_levels() -> None:
    """Concurrent power level edits by Bob and Alice: Alice demotes Bob, so Bob's edit fails."""
    base = new_room()
    for user in (BOB, CHARLIE):
        base.member(user, "join")
    base.power_levels(ALICE, {ALICE: 100, BOB: 50})
    a, b = base.fork(), base.fork()
    a.power_levels(BOB, {ALICE: 100, BOB: 50, CHARLIE: 50}, ts=1)
    alices = b.power_levels(ALICE, {ALICE: 100, BOB: 0}, ts=2)
    resolved = await resolve_both_ways(a, b)
    assert resolved == {**base.state, POWER_LEVELS_KEY: alices.event_id}


async def test_auth_difference_brings_in_one_sided_history() -> None:
    """Bob joins, is promoted and sets a topic on one side only; Alice sets a topic on the other.
    Bob's join and promotion come from the auth difference; his topic is later on the mainline."""
    base = new_room()
    a, b = base.fork(), base.fork()
    bob_join = a.member(BOB, "join", ts=1000)
    promote = a.power_levels(ALICE, {ALICE: 100, BOB: 50}, ts=1001)
    bob_topic = a.send("m.room.topic", BOB, {"topic": "Bob's"}, "", ts=1002)
    b.send("m.room.topic", ALICE, {"topic": "Alice's"}, "", ts=5000)
    resolved = await resolve_both_ways(a, b)
    assert resolved == {**base.state, member(BOB): bob_join.event_id,
                        POWER_LEVELS_KEY: promote.event_id, TOPIC: bob_topic.event_id}


async def test_kick_and_rejoin_race() -> None:
    """Alice kicks Bob while Bob (still joined on his side) changes the name: the kick is a power
    event applied first, so Bob's name change is refused."""
    base = new_room()
    base.member(BOB, "join")
    base.power_levels(ALICE, {ALICE: 100, BOB: 50})
    a, b = base.fork(), base.fork()
    kick = a.member(BOB, "leave", sender=ALICE)
    b.send("m.room.name", BOB, {"name": "mine"}, "")
    resolved = await resolve_both_ways(a, b)
    assert resolved == {**base.state, member(BOB): kick.event_id}


# ---- v2.1 (room version 12) ---------------------------------------------------------------------

def _stale_kick_graph(version: RoomVersion) -> tuple[Branch, dict, dict]:
    """Charlie kicks Zara and then leaves. One state set has the kick, the other still has Zara's
    join; both agree that Charlie has left (unconflicted)."""
    users = {CHARLIE: 50} if version.creators_have_infinite_power else {ALICE: 100, CHARLIE: 50}
    base = new_room(version, users=users)
    base.member(CHARLIE, "join")
    zara_join = base.member(ZARA, "join")
    base.member(ZARA, "leave", sender=CHARLIE)
    base.member(CHARLIE, "leave")
    with_kick = dict(base.state)
    without_kick = {**base.state, member(ZARA): zara_join.event_id}
    return base, with_kick, without_kick


@pytest.mark.parametrize("version,zara_kicked", [(ROOM_V11, False), (ROOM_V12, True)])
async def test_v2_starts_from_unconflicted_state_v21_from_empty(version: RoomVersion, zara_kicked: bool) -> None:
    """v2 checks the kick against the unconflicted state, where Charlie has already left, so it is
    refused; v2.1 starts empty, checks it against its own auth events and keeps it."""
    base, with_kick, without_kick = _stale_kick_graph(version)
    graph = base.graph
    for order in ([with_kick, without_kick], [without_kick, with_kick]):
        resolved = await resolve_state_v2(version, order, graph.get_event)
        expected = with_kick if zara_kicked else without_kick
        assert resolved == expected


async def test_rejected_auth_events_are_not_used() -> None:
    """As above in v2.1, but Charlie's join (only reachable through the kick's auth events) was
    rejected: the kick then has no joined sender to vouch for it and Zara stays."""
    base, with_kick, without_kick = _stale_kick_graph(ROOM_V12)
    graph = base.graph
    charlie_join = next(e for e in graph.events.values()
                        if e.type == "m.room.member" and e.state_key == CHARLIE and e.membership == "join")
    graph.events[charlie_join.event_id] = dataclasses.replace(charlie_join, rejected="auth")
    resolved = await resolve_state_v2(ROOM_V12, [with_kick, without_kick], graph.get_event)
    assert resolved == without_kick


async def test_v21_conflicted_subgraph() -> None:
    """PL2 -> PL1 -> PL0: with PL0 and PL2 conflicting, PL1 lies on the path between them.
    It is in every auth chain (not in the auth difference), so only v2.1 adds it."""
    base = new_room(ROOM_V12, users={BOB: 10})
    pl0 = base.state[POWER_LEVELS_KEY]
    pl1 = base.power_levels(ALICE, {BOB: 20})
    base.member(CHARLIE, "join")           # cites PL1 from both sides
    pl2 = base.power_levels(ALICE, {BOB: 30})
    stale = {**base.state, POWER_LEVELS_KEY: pl0}
    resolver = _Resolver(ROOM_V12, base.graph.get_event, None)
    _, conflicted = split_state([base.state, stale])
    assert conflicted == {pl0, pl2.event_id}
    assert pl1.event_id not in await resolver._auth_difference([base.state, stale])
    assert await resolver._conflicted_subgraph(conflicted) == {pl0, pl1.event_id, pl2.event_id}
    resolved = await resolve_state_v2(ROOM_V12, [base.state, stale], base.graph.get_event)
    assert resolved[POWER_LEVELS_KEY] == pl2.event_id


async def test_v12_creator_outranks_everyone_in_power_order() -> None:
    """Bob (PL 100) bans Zara while the creator (infinite power) demotes Bob."""
    base = new_room(ROOM_V12, users={BOB: 100})
    assert CREATE_KEY in base.state
    for user in (BOB, ZARA):
        base.member(user, "join")
    a, b = base.fork(), base.fork()
    a.member(ZARA, "ban", sender=BOB, ts=1)
    demote = b.power_levels(ALICE, {}, ts=2)
    resolved = await resolve_both_ways(a, b)
    assert resolved == {**base.state, POWER_LEVELS_KEY: demote.event_id}


@pytest.mark.parametrize("version", [ROOM_V10, ROOM_V11, ROOM_V12])
async def test_join_rule_evasion_all_versions(version: RoomVersion) -> None:
    base = new_room(version)
    a, b = base.fork(), base.fork()
    invite_only = a.send("m.room.join_rules", ALICE, {"join_rule": "invite"}, "")
    b.member(ZARA, "join")
    resolved = await resolve_both_ways(a, b)
    assert resolved == {**base.state, JOIN_RULES_KEY: invite_only.event_id}


# ---- robustness and cost ------------------------------------------------------------------------

async def test_missing_events_are_left_out() -> None:
    base = new_room()
    a, b = base.fork(), base.fork()
    topic = a.send("m.room.topic", ALICE, {"topic": "x"}, "")
    ghost = {**b.state, TOPIC: "$not-stored"}
    resolved = await resolve_state_v2(ROOM_V11, [a.state, ghost], base.graph.get_event)
    assert resolved[TOPIC] == topic.event_id


async def test_auth_cycle_is_reported() -> None:
    from homeserver.events.event import Event
    looped = {
        "$a": Event("$a", {"type": "m.room.power_levels", "state_key": "", "sender": ALICE,
                           "content": {}, "auth_events": ["$b"]}),
        "$b": Event("$b", {"type": "m.room.power_levels", "state_key": "", "sender": ALICE,
                           "content": {}, "auth_events": ["$a"]}),
    }

    async def get(event_id: str):
        return looped.get(event_id)

    with pytest.raises(AuthGraphCycleError):
        await resolve_state_v2(ROOM_V11, [{POWER_LEVELS_KEY: "$a"}, {POWER_LEVELS_KEY: "$b"}], get)


async def test_get_auth_chain_callback_gives_same_answer() -> None:
    base = new_room()
    a, b = base.fork(), base.fork()
    a.member(BOB, "join")
    a.power_levels(ALICE, {ALICE: 100, BOB: 50})
    a.send("m.room.topic", BOB, {"topic": "Bob's"}, "")
    b.send("m.room.topic", ALICE, {"topic": "Alice's"}, "")
    graph = base.graph
    calls = []

    async def auth_chain(event_ids):
        calls.append(set(event_ids))
        seen, todo = set(), [a for e in event_ids for a in graph.events[e].auth_event_ids]
        while todo:
            event_id = todo.pop()
            if event_id not in seen:
                seen.add(event_id)
                todo.extend(graph.events[event_id].auth_event_ids)
        return seen

    with_callback = await resolve_state_v2(ROOM_V11, [a.state, b.state], graph.get_event, auth_chain)
    assert calls and with_callback == await resolve(a, b)


async def test_large_forked_room_is_resolved_quickly() -> None:
    """~3000 events: two branches of joins plus a 600-deep chain of power level changes."""
    base = new_room()
    base.member(BOB, "join")
    a, b = base.fork(), base.fork()
    for i in range(1000):
        a.member(f"@a{i}:example.org", "join")
        b.member(f"@b{i}:example.org", "join")
    for i in range(600):
        a.power_levels(ALICE, {ALICE: 100, BOB: i % 50})
    b.member(BOB, "ban", sender=ALICE)
    graph = base.graph
    graph.fetches = 0
    started = time.perf_counter()
    resolved = await resolve_both_ways(a, b)
    elapsed = time.perf_counter() - started
    assert resolved[POWER_LEVELS_KEY] == a.state[POWER_LEVELS_KEY]
    assert resolved[member(BOB)] == b.state[member(BOB)]
    assert all(resolved[member(f"@{side}{i}:example.org")] for side in "ab" for i in range(1000))
    assert graph.fetches <= 2 * len(graph.events)  # each event fetched at most once per resolution
    assert elapsed < 20, elapsed
