"""What changes between room versions 1 and 12, each difference tested on both of its sides: event
IDs and references, the redaction algorithm, the auth rules, and state resolution (v1, v2) on
forked graphs built from real signed events."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from federation.ingest import PduRejected, check_format
from homeserver.events.auth_rules import AuthError, check_auth, redaction_allowed, user_power_level
from homeserver.events.crypto import compute_event_id, compute_reference_hash, event_reference, sign_event
from homeserver.events.event import Event
from homeserver.events.redaction import redact
from homeserver.events.room_versions import (
    KNOWN_ROOM_VERSIONS, ROOM_V1, ROOM_V2, ROOM_V3, ROOM_V4, ROOM_V5, RoomVersion,
)
from homeserver.events.state_res import resolve_state
from homeserver.events.state_res_v1 import separate
from tests.event_graph import ALICE, BOB, EVE, KEY, SERVER, ZARA, Branch, new_room

ALL = list(KNOWN_ROOM_VERSIONS.values())
OLD = [v for v in ALL if int(v.identifier) < 10]
TOPIC = ("m.room.topic", "")


def versions(*ids: int) -> list[RoomVersion]:
    return [KNOWN_ROOM_VERSIONS[str(i)] for i in ids]


def allowed(branch: Branch, event: Event) -> None:
    check_auth(event, branch.auth_state(), branch.graph.room_version)


def refused(branch: Branch, event: Event, reason: str = "") -> None:
    with pytest.raises(AuthError) as info:
        check_auth(event, branch.auth_state(), branch.graph.room_version)
    assert reason in info.value.reason


def levels(version: RoomVersion, users: dict[str, Any]) -> dict[str, Any]:
    """Power levels users for Alice's rooms: v12 creators have infinite power and are never listed."""
    return {u: v for u, v in users.items() if not (version.creators_have_infinite_power and u == ALICE)}


def room(version: RoomVersion, members: tuple[str, ...] = (BOB,), join_rule: str = "public",
         users: dict[str, Any] | None = None) -> Branch:
    branch = new_room(version, users=levels(version, {ALICE: 100, **(users or {})}))
    for user in members:
        branch.member(user, "join")
    if join_rule != "public":
        branch.send("m.room.join_rules", ALICE, {"join_rule": join_rule}, "")
    return branch


# ---- event IDs and references -------------------------------------------------------------------

def _pdu() -> dict[str, Any]:
    return {"type": "m.room.message", "room_id": f"!r:{SERVER}", "sender": ALICE, "content": {"body": "x"},
            "origin_server_ts": 1, "depth": 3, "prev_events": [], "auth_events": []}


@pytest.mark.parametrize("version", ALL, ids=lambda v: f"v{v.identifier}")
def test_event_id_format(version: RoomVersion) -> None:
    pdu = _pdu()
    if version.event_id_in_pdu:
        pdu["event_id"] = f"$abc:{SERVER}"
    signed = sign_event(pdu, SERVER, KEY, version)
    event_id = compute_event_id(signed, version)
    digest = compute_reference_hash(signed, version)
    if version in (ROOM_V1, ROOM_V2):
        assert event_id == f"$abc:{SERVER}"
        with pytest.raises(ValueError):
            compute_event_id({k: v for k, v in signed.items() if k != "event_id"}, version)
    elif version is ROOM_V3:
        assert event_id == "$" + base64.b64encode(digest).decode().rstrip("=")
    else:
        assert event_id == "$" + base64.urlsafe_b64encode(digest).decode().rstrip("=")


def test_v3_and_v4_ids_differ_only_in_alphabet() -> None:
    for n in range(40):  # some reference hash holds '+' or '/' in standard base64
        signed = sign_event({**_pdu(), "depth": n}, SERVER, KEY, ROOM_V3)
        v3, v4 = compute_event_id(signed, ROOM_V3), compute_event_id(signed, ROOM_V4)
        assert v3.replace("+", "-").replace("/", "_") == v4
        if v3 != v4:
            return
    pytest.fail("no hash with '+' or '/' in 40 tries")


def test_v1_references_are_hash_pairs() -> None:
    signed = sign_event({**_pdu(), "event_id": f"$p:{SERVER}"}, SERVER, KEY, ROOM_V1)
    digest = base64.b64encode(compute_reference_hash(signed, ROOM_V1)).decode().rstrip("=")
    assert event_reference(f"$p:{SERVER}", signed, ROOM_V1) == [f"$p:{SERVER}", {"sha256": digest}]
    assert event_reference("$p", signed, ROOM_V3) == "$p"
    child = Event(f"$c:{SERVER}", {**_pdu(), "prev_events": [[f"$p:{SERVER}", {"sha256": digest}]],
                                   "auth_events": [["$a:x", {}], ["$b:x", {}]]})
    assert child.prev_event_ids == [f"$p:{SERVER}"] and child.auth_event_ids == ["$a:x", "$b:x"]


@pytest.mark.parametrize("version,event_id,refs,ok", [
    (ROOM_V1, "$e:hs", [["$p:hs", {"sha256": "x"}]], True),
    (ROOM_V2, None, [["$p:hs", {"sha256": "x"}]], False),        # no event_id
    (ROOM_V1, "e:hs", [["$p:hs", {"sha256": "x"}]], False),      # not an event ID
    (ROOM_V1, "$e :hs", [["$p:hs", {"sha256": "x"}]], False),    # blank inside
    (ROOM_V1, "$e:hs", [["$p\n:hs", {"sha256": "x"}]], False),   # control character
    (ROOM_V1, "$" + "e" * 300 + ":hs", [["$p:hs", {}]], False),  # too long
    (ROOM_V1, "$e:hs", ["$p:hs"], False),                        # plain IDs
    (ROOM_V1, "$e:hs", [["$p:hs"]], False),                      # half a pair
    (ROOM_V3, None, ["$p"], True),
    (ROOM_V4, None, [["$p:hs", {}]], False),                     # pairs after v2
])
def test_format_of_references(version: RoomVersion, event_id: str | None, refs: list[Any], ok: bool) -> None:
    pdu = {**_pdu(), "prev_events": refs, "auth_events": refs, "hashes": {"sha256": "x"}, "signatures": {}}
    if event_id is not None:
        pdu["event_id"] = event_id
    if ok:
        check_format(pdu, version)
    else:
        with pytest.raises(PduRejected):
            check_format(pdu, version)


def test_canonical_json_enforced_from_v6() -> None:
    pdu = {**_pdu(), "content": {"body": "x", "score": 0.5, "big": 2**60}, "hashes": {}, "signatures": {}}
    check_format(pdu, ROOM_V5)
    for version in versions(6, 7, 8, 9, 10, 11):
        with pytest.raises(PduRejected, match="canonical"):
            check_format(pdu, version)


# ---- redaction algorithm ------------------------------------------------------------------------

def _state(type_: str, content: dict[str, Any]) -> dict[str, Any]:
    return {**_pdu(), "type": type_, "state_key": "", "content": content}


@pytest.mark.parametrize("type_,content,kept_by", [
    # (event, content, {version: what the redacted content keeps})
    ("m.room.aliases", {"aliases": ["#a:hs"]},
     {1: {"aliases": ["#a:hs"]}, 5: {"aliases": ["#a:hs"]}, 6: {}, 9: {}, 10: {}}),
    ("m.room.join_rules", {"join_rule": "restricted", "allow": [{"type": "m.room_membership"}]},
     {1: {"join_rule": "restricted"}, 7: {"join_rule": "restricted"},
      8: {"join_rule": "restricted", "allow": [{"type": "m.room_membership"}]},
      9: {"join_rule": "restricted", "allow": [{"type": "m.room_membership"}]}}),
    ("m.room.member", {"membership": "join", "join_authorised_via_users_server": "@b:hs", "displayname": "B"},
     {1: {"membership": "join"}, 8: {"membership": "join"},
      9: {"membership": "join", "join_authorised_via_users_server": "@b:hs"},
      10: {"membership": "join", "join_authorised_via_users_server": "@b:hs"}}),
    ("m.room.create", {"creator": "@a:hs", "room_version": "1"},
     {1: {"creator": "@a:hs"}, 9: {"creator": "@a:hs"}, 11: {"creator": "@a:hs", "room_version": "1"}}),
])
def test_redaction_per_version(type_: str, content: dict[str, Any], kept_by: dict[int, dict[str, Any]]) -> None:
    pdu = _state(type_, content)
    for number, kept in kept_by.items():
        assert redact(pdu, KNOWN_ROOM_VERSIONS[str(number)])["content"] == kept, number


def test_v1_redaction_keeps_event_id_and_legacy_keys() -> None:
    pdu = {**_pdu(), "event_id": "$e:hs", "origin": "hs", "membership": "join", "prev_state": [], "junk": 1}
    assert set(redact(pdu, ROOM_V1)) == set(pdu) - {"junk"}


# ---- auth rules ---------------------------------------------------------------------------------

@pytest.mark.parametrize("version", versions(1, 3, 5, 6, 9), ids=lambda v: f"v{v.identifier}")
def test_aliases_special_until_v6(version: RoomVersion) -> None:
    branch = room(version)
    # Eve is not in the room: before v6 her server may still publish its aliases.
    mine = branch.draft("m.room.aliases", EVE, {"aliases": ["#x:evil.example"]}, "evil.example")
    not_mine = branch.draft("m.room.aliases", EVE, {"aliases": []}, SERVER)
    if version.special_case_aliases_auth:
        allowed(branch, mine)
        refused(branch, not_mine, "sender's server")
    else:
        refused(branch, mine, "not joined")


@pytest.mark.parametrize("version", versions(1, 2, 3, 10), ids=lambda v: f"v{v.identifier}")
def test_redactions_in_the_auth_rules_of_v1_v2(version: RoomVersion) -> None:
    branch = room(version, members=(BOB, ZARA))
    alices = branch.send("m.room.message", ALICE, {"body": "a"})
    zaras = branch.send("m.room.message", ZARA, {"body": "z"})
    redacts = {"redacts": zaras.event_id}
    # Bob (power 0) redacting Zara's event: same domain in every ID here (one test server)...
    bob_redacts = branch.draft("m.room.redaction", BOB, {**redacts} if version.redacts_in_content else {},
                               extra=redacts)
    allowed(branch, bob_redacts)
    assert redaction_allowed(bob_redacts, zaras, branch.auth_state(), version)
    # ...but an event ID of another domain is a v1/v2 refusal (v3+ only judge it when applying).
    foreign = Event("$x:evil.example", {**alices.pdu, "event_id": "$x:evil.example"})
    other = branch.draft("m.room.redaction", BOB, {}, extra={"redacts": foreign.event_id})
    if version.redaction_auth_rule:
        refused(branch, other, "redact")
        assert version.event_id_in_pdu
    else:
        allowed(branch, other)


@pytest.mark.parametrize("version", OLD + versions(10), ids=lambda v: f"v{v.identifier}")
def test_string_power_levels_until_v10(version: RoomVersion) -> None:
    branch = room(version)
    levels = {"users": {ALICE: "100", BOB: " +050 "}, "ban": "60", "events": {"m.room.topic": "40"}}
    event = branch.draft("m.room.power_levels", ALICE, levels, "")
    if version.integer_only_power_levels:
        refused(branch, event, "integer")
        return
    allowed(branch, event)
    branch.send("m.room.power_levels", ALICE, levels, "")
    state = branch.auth_state()
    assert user_power_level(BOB, state, version) == 50
    allowed(branch, branch.draft("m.room.topic", BOB, {"topic": "t"}, ""))          # 50 >= "40"
    refused(branch, branch.draft("m.room.member", BOB, {"membership": "ban"}, ALICE), "ban")
    # Bob may not raise himself above his (string) level; "50" to 50 is no change at all.
    refused(branch, branch.draft("m.room.power_levels", BOB, {**levels, "users": {ALICE: "100", BOB: 51}}, ""))
    refused(branch, branch.draft("m.room.power_levels", ALICE, {"users": {ALICE: "1x"}}, ""), "integers")


@pytest.mark.parametrize("version", versions(1, 5, 6), ids=lambda v: f"v{v.identifier}")
def test_float_power_levels_before_v6(version: RoomVersion) -> None:
    branch = room(version)
    event = branch.draft("m.room.power_levels", ALICE, {"users": {ALICE: 100, BOB: 50.7}}, "")
    if version.strict_canonical_json:
        refused(branch, event, "integers")
        return
    allowed(branch, event)
    branch.send("m.room.power_levels", ALICE, {"users": {ALICE: 100, BOB: 50.7}}, "")
    assert user_power_level(BOB, branch.auth_state(), version) == 50  # truncated


@pytest.mark.parametrize("version", versions(5, 6, 10), ids=lambda v: f"v{v.identifier}")
def test_notifications_levels_guarded_from_v6(version: RoomVersion) -> None:
    branch = room(version, users={BOB: 50})
    branch.send("m.room.power_levels", ALICE, {"users": {ALICE: 100, BOB: 50}, "events": {"m.room.power_levels": 50},
                                               "notifications": {"room": 80}}, "")
    change = branch.draft("m.room.power_levels", BOB, {"users": {ALICE: 100, BOB: 50},
                                                       "events": {"m.room.power_levels": 50},
                                                       "notifications": {"room": 10}}, "")
    if version.limit_notifications_power_levels:
        refused(branch, change, "notifications.room")
    else:
        allowed(branch, change)


@pytest.mark.parametrize("version", versions(1, 6, 7, 9), ids=lambda v: f"v{v.identifier}")
def test_knocking_from_v7(version: RoomVersion) -> None:
    branch = room(version, join_rule="knock")
    knock = branch.draft("m.room.member", ZARA, {"membership": "knock"}, ZARA)
    if version.knock_join_rule:
        allowed(branch, knock)
        branch.send("m.room.member", ZARA, {"membership": "knock"}, ZARA)
        allowed(branch, branch.draft("m.room.member", ZARA, {"membership": "leave"}, ZARA))  # retracting
        allowed(branch, branch.draft("m.room.member", ALICE, {"membership": "invite"}, ZARA))
    else:
        refused(branch, knock, "knock")
    # A knock join rule never lets anyone straight in.
    refused(branch, branch.draft("m.room.member", EVE, {"membership": "join"}, EVE))


@pytest.mark.parametrize("version", versions(7, 8, 9, 10), ids=lambda v: f"v{v.identifier}")
def test_restricted_joins_from_v8(version: RoomVersion) -> None:
    branch = room(version, join_rule="restricted")
    content = {"membership": "join", "join_authorised_via_users_server": ALICE}
    join = branch.draft("m.room.member", ZARA, content, ZARA)
    if version.restricted_join_rule:
        allowed(branch, join)
        unauthorised = branch.draft("m.room.member", ZARA, {"membership": "join"}, ZARA)
        refused(branch, unauthorised, "join_authorised_via_users_server")
    else:
        refused(branch, join, "does not allow joining")


@pytest.mark.parametrize("version", versions(7, 8), ids=lambda v: f"v{v.identifier}")
def test_authoriser_signature_rule_only_from_v8(version: RoomVersion) -> None:
    """Before v8 join_authorised_via_users_server is just data: no signature of its server needed."""
    branch = room(version)
    join = branch.draft("m.room.member", ZARA, {"membership": "join",
                                                 "join_authorised_via_users_server": "@x:elsewhere.example"}, ZARA)
    if version.restricted_join_rule:
        refused(branch, join, "not signed")
    else:
        allowed(branch, join)


@pytest.mark.parametrize("version", OLD, ids=lambda v: f"v{v.identifier}")
def test_common_rules_hold_in_every_old_version(version: RoomVersion) -> None:
    branch = room(version, join_rule="invite")
    refused(branch, branch.draft("m.room.member", ZARA, {"membership": "join"}, ZARA), "invite")
    branch.member(ZARA, "invite", sender=ALICE)
    allowed(branch, branch.draft("m.room.member", ZARA, {"membership": "join"}, ZARA))
    refused(branch, branch.draft("m.room.member", BOB, {"membership": "ban"}, ALICE), "ban")
    refused(branch, branch.draft("m.room.name", BOB, {"name": "n"}, ""), "power level")
    allowed(branch, branch.draft("m.room.message", BOB, {"body": "hi"}))
    refused(branch, branch.draft("m.room.message", EVE, {"body": "hi"}), "not joined")


# ---- state resolution ---------------------------------------------------------------------------

async def resolve(version: RoomVersion, *branches: Branch) -> dict[Any, str]:
    graph = branches[0].graph
    forward = await resolve_state(version, [b.state for b in branches], graph.get_event)
    backward = await resolve_state(version, [b.state for b in reversed(branches)], graph.get_event)
    assert forward == backward
    return forward


def test_v1_separation() -> None:
    a = {("t", ""): "$1", ("u", ""): "$2", ("only_a", ""): "$3"}
    b = {("t", ""): "$1", ("u", ""): "$4"}
    unconflicted, conflicted = separate([a, b])
    assert unconflicted == {("t", ""): "$1", ("only_a", ""): "$3"}  # held by one set only: not a conflict
    assert conflicted == {("u", ""): {"$2", "$4"}}


@pytest.mark.parametrize("version", ALL, ids=lambda v: f"v{v.identifier}")
async def test_topic_race_depth_wins_in_v1_timestamp_in_v2(version: RoomVersion) -> None:
    """Branch a sets the topic after more events (deeper) but earlier; branch b later but shallower.
    v1 takes the deepest; v2 orders by mainline position, then time, so the later one wins."""
    base = room(version)
    a, b = base.fork(), base.fork()
    for i in range(3):
        a.send("m.room.message", BOB, {"body": str(i)}, ts=10 + i)
    deep = a.send("m.room.topic", ALICE, {"topic": "deep"}, "", ts=20)
    late = b.send("m.room.topic", ALICE, {"topic": "late"}, "", ts=90)
    assert deep.depth > late.depth
    resolved = await resolve(version, a, b)
    assert resolved[TOPIC] == (deep.event_id if version is ROOM_V1 else late.event_id)


@pytest.mark.parametrize("version", ALL, ids=lambda v: f"v{v.identifier}")
async def test_ban_races_demotion_in_every_version(version: RoomVersion) -> None:
    """Bob (50) bans Zara while Alice demotes Bob: Alice's demotion stands in every algorithm, and
    Bob's ban, no longer allowed, does not."""
    base = room(version, members=(BOB, ZARA), users={BOB: 50})
    a, b = base.fork(), base.fork()
    a.member(ZARA, "ban", sender=BOB, ts=10)
    demote = b.power_levels(ALICE, levels(version, {ALICE: 100}), ts=20)
    resolved = await resolve(version, a, b)
    assert resolved[("m.room.power_levels", "")] == demote.event_id
    assert resolved[("m.room.member", ZARA)] == base.state[("m.room.member", ZARA)]


async def test_v1_power_levels_pass_stops_at_the_first_refusal() -> None:
    """Power levels candidates in ascending depth: the first is taken, each next one replaces it while
    allowed against the result so far. Bob's deeper change of his own level is not allowed once
    Alice's shallower one (which lowered him) is in, so Alice's stays."""
    base = room(ROOM_V1, users={BOB: 60})
    base.power_levels(ALICE, {ALICE: 100, BOB: 60}, ts=1)
    a, b = base.fork(), base.fork()
    lowered = a.power_levels(ALICE, {ALICE: 100, BOB: 10}, ts=5)
    b.send("m.room.message", BOB, {"body": "x"})
    b.send("m.room.message", BOB, {"body": "y"})
    raised = b.send("m.room.power_levels", BOB, {"users": {ALICE: 100, BOB: 60}, "ban": 55}, "", ts=6)
    assert raised.depth > lowered.depth
    resolved = await resolve(ROOM_V1, a, b)
    assert resolved[("m.room.power_levels", "")] == lowered.event_id
