"""Authorisation rules (room versions 10, 11, 12), each refusal paired with the allowed case."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from signedjson.key import encode_verify_key_base64, generate_signing_key, get_verify_key
from signedjson.sign import sign_json

from homeserver.events.auth_rules import (
    CREATE_KEY, JOIN_RULES_KEY, POWER_LEVELS_KEY, AuthError, auth_types_for_event, check_auth,
    check_auth_events, redaction_allowed, user_power_level,
)
from homeserver.events.event import Event
from homeserver.events.room_versions import ROOM_V10, ROOM_V11, ROOM_V12
from tests.event_graph import ALICE, BOB, CHARLIE, EVE, SERVER, ZARA, Branch, RoomGraph, new_room


def allowed(branch: Branch, event: Event) -> None:
    check_auth(event, branch.auth_state(), branch.graph.room_version)


def refused(branch: Branch, event: Event, reason: str = "") -> None:
    with pytest.raises(AuthError) as info:
        check_auth(event, branch.auth_state(), branch.graph.room_version)
    assert reason in info.value.reason


def room_with(members: list[str], users: dict[str, int] | None = None, join_rule: str = "public",
              version=ROOM_V11) -> Branch:
    """A room where `members` have joined and `users` are the power levels (Alice 100 by default)."""
    branch = new_room(version, join_rule="public", users={ALICE: 100, **(users or {})})
    for user in members:
        branch.member(user, "join")
    if join_rule != "public":
        branch.send("m.room.join_rules", ALICE, {"join_rule": join_rule}, "")
    return branch


# ---- create -------------------------------------------------------------------------------------

def _create(version, **overrides: Any) -> Event:
    graph = RoomGraph(version)
    content = {"room_version": version.identifier}
    if version.creator_in_create_content:
        content["creator"] = ALICE
    content.update(overrides.pop("content", {}))
    return graph.make("m.room.create", overrides.pop("sender", ALICE), content, state_key="",
                      prev=overrides.pop("prev", []), state={}, **overrides)


@pytest.mark.parametrize("version", [ROOM_V10, ROOM_V11, ROOM_V12])
def test_create_allowed(version) -> None:
    check_auth(_create(version), {}, version)


def test_create_refusals() -> None:
    with pytest.raises(AuthError, match="prev_events"):
        check_auth(_create(ROOM_V11, prev=["$earlier"]), {}, ROOM_V11)
    with pytest.raises(AuthError, match="domain"):
        check_auth(_create(ROOM_V11, sender=EVE), {}, ROOM_V11)
    with pytest.raises(AuthError, match="room version"):
        check_auth(_create(ROOM_V11, content={"room_version": "999"}), {}, ROOM_V11)


def test_create_creator_field_v10_only() -> None:
    graph = RoomGraph(ROOM_V10)
    no_creator = graph.make("m.room.create", ALICE, {"room_version": "10"}, state_key="", prev=[], state={})
    with pytest.raises(AuthError, match="creator"):
        check_auth(no_creator, {}, ROOM_V10)
    check_auth(no_creator, {}, ROOM_V11)  # v11: the sender is the creator


def test_v12_create_rules() -> None:
    with pytest.raises(AuthError, match="room_id"):
        check_auth(_create(ROOM_V12, extra={"room_id": f"!x:{SERVER}"}), {}, ROOM_V12)
    with pytest.raises(AuthError, match="additional_creators"):
        check_auth(_create(ROOM_V12, content={"additional_creators": ["not-a-user"]}), {}, ROOM_V12)
    check_auth(_create(ROOM_V12, content={"additional_creators": [BOB]}), {}, ROOM_V12)


# ---- auth events --------------------------------------------------------------------------------

def test_auth_types_for_event() -> None:
    branch = room_with([BOB])
    message = {"type": "m.room.message", "sender": BOB, "content": {}}
    assert auth_types_for_event(message, ROOM_V11) == {CREATE_KEY, POWER_LEVELS_KEY, ("m.room.member", BOB)}
    assert auth_types_for_event(message, ROOM_V12) == {POWER_LEVELS_KEY, ("m.room.member", BOB)}
    join = branch.draft("m.room.member", CHARLIE, {"membership": "join",
                                                  "join_authorised_via_users_server": BOB}, CHARLIE)
    assert auth_types_for_event(join, ROOM_V11) == {
        CREATE_KEY, POWER_LEVELS_KEY, JOIN_RULES_KEY, ("m.room.member", CHARLIE), ("m.room.member", BOB)}
    invite = {"type": "m.room.member", "sender": BOB, "state_key": CHARLIE,
              "content": {"membership": "invite", "third_party_invite": {"signed": {"token": "tok"}}}}
    assert ("m.room.third_party_invite", "tok") in auth_types_for_event(invite, ROOM_V11)
    leave = {"type": "m.room.member", "sender": BOB, "state_key": CHARLIE, "content": {"membership": "ban"}}
    assert JOIN_RULES_KEY not in auth_types_for_event(leave, ROOM_V11)
    assert auth_types_for_event({"type": "m.room.create", "sender": ALICE}, ROOM_V11) == set()


def test_check_auth_events() -> None:
    branch = room_with([BOB])
    graph = branch.graph
    message = branch.draft("m.room.message", BOB, {"body": "hi"})
    auth = [graph.events[e] for e in message.auth_event_ids]
    check_auth_events(message, auth, ROOM_V11)
    with pytest.raises(AuthError, match="duplicate"):
        check_auth_events(message, auth + [auth[0]], ROOM_V11)
    with pytest.raises(AuthError, match="unexpected"):
        check_auth_events(message, auth + [graph.events[branch.state[JOIN_RULES_KEY]]], ROOM_V11)
    with pytest.raises(AuthError, match="no m.room.create"):
        check_auth_events(message, [a for a in auth if a.type != "m.room.create"], ROOM_V11)
    rejected = [dataclasses.replace(a, rejected="bad") if a.type == "m.room.power_levels" else a for a in auth]
    with pytest.raises(AuthError, match="rejected"):
        check_auth_events(message, rejected, ROOM_V11)
    elsewhere = [Event(a.event_id, {**a.pdu, "room_id": "!other:x"}) if a.type == "m.room.power_levels" else a
                 for a in auth]
    with pytest.raises(AuthError, match="another room"):
        check_auth_events(message, elsewhere, ROOM_V11)


def test_v12_create_must_not_be_an_auth_event() -> None:
    branch = new_room(ROOM_V12)
    create = branch.graph.events[branch.state[CREATE_KEY]]
    message = branch.draft("m.room.message", ALICE, {"body": "hi"})
    auth = [branch.graph.events[e] for e in message.auth_event_ids]
    assert create not in auth
    check_auth_events(message, auth, ROOM_V12)
    with pytest.raises(AuthError, match="unexpected"):
        check_auth_events(message, auth + [create], ROOM_V12)


def test_v12_room_id_must_match_create_event() -> None:
    branch = new_room(ROOM_V12)
    allowed(branch, branch.draft("m.room.message", ALICE, {}))
    refused(branch, branch.draft("m.room.message", ALICE, {}, extra={"room_id": f"!other:{SERVER}"}),
            "m.room.create")


# ---- join ---------------------------------------------------------------------------------------

def test_creator_first_join_only_right_after_create() -> None:
    graph = RoomGraph(ROOM_V11)
    branch = Branch(graph)
    branch.send("m.room.create", ALICE, {"room_version": "11"}, "")
    # No join rules yet (invite-only by default): only the creator's first join is allowed.
    allowed(branch, branch.draft("m.room.member", ALICE, {"membership": "join"}, ALICE))
    refused(branch, branch.draft("m.room.member", BOB, {"membership": "join"}, BOB), "invite")


def test_creator_rejoin_is_not_a_first_join() -> None:
    branch = new_room(ROOM_V11, join_rule="invite")
    branch.member(ALICE, "leave")
    # Alice created the room but her join no longer follows the create event directly.
    refused(branch, branch.draft("m.room.member", ALICE, {"membership": "join"}, ALICE), "invite")


def test_v10_first_join_uses_content_creator_v11_uses_sender() -> None:
    for version, expected_creator in ((ROOM_V10, BOB), (ROOM_V11, ALICE)):
        graph = RoomGraph(version)
        branch = Branch(graph)
        # The sender is Alice but content names Bob: v10 trusts content, v11 the sender.
        branch.send("m.room.create", ALICE, {"room_version": version.identifier, "creator": BOB}, "")
        other = ALICE if expected_creator == BOB else BOB
        allowed(branch, branch.draft("m.room.member", expected_creator, {"membership": "join"}, expected_creator))
        refused(branch, branch.draft("m.room.member", other, {"membership": "join"}, other))
        assert user_power_level(expected_creator, branch.auth_state(), version) == 100
        assert user_power_level(other, branch.auth_state(), version) == 0


def test_join_on_behalf_of_someone_else() -> None:
    branch = room_with([BOB])
    refused(branch, branch.draft("m.room.member", BOB, {"membership": "join"}, CHARLIE), "behalf")


def test_join_public_and_banned() -> None:
    branch = room_with([BOB])
    allowed(branch, branch.draft("m.room.member", CHARLIE, {"membership": "join"}, CHARLIE))
    branch.member(CHARLIE, "ban", sender=ALICE)
    refused(branch, branch.draft("m.room.member", CHARLIE, {"membership": "join"}, CHARLIE), "banned")


@pytest.mark.parametrize("rule", ["invite", "knock"])
def test_join_invite_only(rule: str) -> None:
    branch = room_with([BOB], join_rule=rule)
    refused(branch, branch.draft("m.room.member", CHARLIE, {"membership": "join"}, CHARLIE))
    branch.member(CHARLIE, "invite", sender=ALICE)
    allowed(branch, branch.draft("m.room.member", CHARLIE, {"membership": "join"}, CHARLIE))


def test_unknown_join_rule_refuses_join() -> None:
    branch = room_with([], join_rule="private")
    refused(branch, branch.draft("m.room.member", CHARLIE, {"membership": "join"}, CHARLIE))


@pytest.mark.parametrize("rule", ["restricted", "knock_restricted"])
def test_restricted_join(rule: str) -> None:
    branch = room_with([BOB, CHARLIE], join_rule=rule)
    branch.send("m.room.power_levels", ALICE, {"users": {ALICE: 100}, "invite": 10}, "")

    def join(authoriser: str | None, **kwargs: Any) -> Event:
        content = {"membership": "join"}
        if authoriser is not None:
            content["join_authorised_via_users_server"] = authoriser
        return branch.draft("m.room.member", ZARA, content, ZARA, **kwargs)

    refused(branch, join(None), "join_authorised_via_users_server")
    refused(branch, join(BOB), "may not invite")          # Bob (0) is below the invite level (10)
    refused(branch, join(f"@nobody:{SERVER}"), "not joined")
    allowed(branch, join(ALICE))
    # The authorising server must have signed the event.
    unsigned = join(ALICE)
    stripped = Event(unsigned.event_id, {**unsigned.pdu, "signatures": {}})
    refused(branch, stripped, "signed")


def test_restricted_join_by_invited_user_needs_no_authoriser() -> None:
    branch = room_with([], join_rule="restricted")
    branch.member(ZARA, "invite", sender=ALICE)
    allowed(branch, branch.draft("m.room.member", ZARA, {"membership": "join"}, ZARA))


# ---- invite -------------------------------------------------------------------------------------

def test_invite_rules() -> None:
    branch = room_with([BOB, CHARLIE])
    allowed(branch, branch.draft("m.room.member", BOB, {"membership": "invite"}, ZARA))
    refused(branch, branch.draft("m.room.member", ZARA, {"membership": "invite"}, ZARA), "not joined")
    refused(branch, branch.draft("m.room.member", BOB, {"membership": "invite"}, CHARLIE), "already joined")
    branch.send("m.room.power_levels", ALICE, {"users": {ALICE: 100}, "invite": 50}, "")
    refused(branch, branch.draft("m.room.member", BOB, {"membership": "invite"}, ZARA), "too low")
    allowed(branch, branch.draft("m.room.member", ALICE, {"membership": "invite"}, ZARA))
    branch.member(ZARA, "ban", sender=ALICE)
    refused(branch, branch.draft("m.room.member", ALICE, {"membership": "invite"}, ZARA), "banned")


def _third_party_setup() -> tuple[Branch, Any, dict]:
    branch = room_with([BOB])
    id_key = generate_signing_key("0")
    branch.send("m.room.third_party_invite", ALICE, {
        "display_name": "z…", "key_validity_url": "https://id.example/isvalid",
        "public_key": encode_verify_key_base64(get_verify_key(id_key))}, "tok")
    signed = sign_json({"mxid": ZARA, "token": "tok"}, "id.example", id_key)
    return branch, id_key, signed


def test_third_party_invite_signed_by_identity_server() -> None:
    branch, _, signed = _third_party_setup()
    invite = branch.draft("m.room.member", ALICE, {"membership": "invite",
                                                   "third_party_invite": {"display_name": "z", "signed": signed}}, ZARA)
    assert ("m.room.third_party_invite", "tok") in {branch.graph.events[a].key for a in invite.auth_event_ids}
    allowed(branch, invite)


def test_third_party_invite_refusals() -> None:
    branch, _, signed = _third_party_setup()

    def invite(sender: str, target: str, tpi: Any) -> Event:
        return branch.draft("m.room.member", sender, {"membership": "invite", "third_party_invite": tpi}, target)

    refused(branch, invite(ALICE, ZARA, {"display_name": "z"}), "signed")
    refused(branch, invite(ALICE, ZARA, {"signed": {"mxid": ZARA}}), "mxid and token")
    refused(branch, invite(ALICE, CHARLIE, {"signed": signed}), "mxid does not match")
    refused(branch, invite(BOB, ZARA, {"signed": signed}), "did not issue")
    other_key = generate_signing_key("0")
    forged = sign_json({"mxid": ZARA, "token": "tok"}, "id.example", other_key)
    refused(branch, invite(ALICE, ZARA, {"signed": forged}), "signature")
    no_such_token = sign_json({"mxid": ZARA, "token": "nope"}, "id.example", other_key)
    refused(branch, invite(ALICE, ZARA, {"signed": no_such_token}), "no m.room.third_party_invite")


def test_third_party_invite_event_needs_invite_level() -> None:
    branch = room_with([BOB])
    branch.send("m.room.power_levels", ALICE, {"users": {ALICE: 100}, "invite": 50}, "")
    content = {"display_name": "x", "key_validity_url": "https://x", "public_key": "AAAA"}
    refused(branch, branch.draft("m.room.third_party_invite", BOB, content, "t"), "may not invite")
    allowed(branch, branch.draft("m.room.third_party_invite", ALICE, content, "t"))


# ---- leave / kick / ban / knock -----------------------------------------------------------------

def test_leave_self() -> None:
    branch = room_with([BOB])
    allowed(branch, branch.draft("m.room.member", BOB, {"membership": "leave"}, BOB))
    refused(branch, branch.draft("m.room.member", ZARA, {"membership": "leave"}, ZARA))
    branch.member(ZARA, "invite", sender=ALICE)
    allowed(branch, branch.draft("m.room.member", ZARA, {"membership": "leave"}, ZARA))  # reject invite


def test_kick_rules() -> None:
    branch = room_with([BOB, CHARLIE, ZARA], users={BOB: 50, CHARLIE: 50})
    allowed(branch, branch.draft("m.room.member", BOB, {"membership": "leave"}, ZARA))
    refused(branch, branch.draft("m.room.member", BOB, {"membership": "leave"}, CHARLIE), "kick")  # peer
    refused(branch, branch.draft("m.room.member", BOB, {"membership": "leave"}, ALICE), "kick")    # superior
    refused(branch, branch.draft("m.room.member", ZARA, {"membership": "leave"}, BOB), "kick")     # powerless
    branch.member(ZARA, "leave")
    refused(branch, branch.draft("m.room.member", ZARA, {"membership": "leave"}, BOB), "not joined")


def test_unban_needs_ban_level() -> None:
    branch = room_with([BOB, ZARA], users={BOB: 50})
    branch.member(ZARA, "ban", sender=ALICE)
    branch.send("m.room.power_levels", ALICE, {"users": {ALICE: 100, BOB: 50}, "ban": 60}, "")
    refused(branch, branch.draft("m.room.member", BOB, {"membership": "leave"}, ZARA), "unban")
    allowed(branch, branch.draft("m.room.member", ALICE, {"membership": "leave"}, ZARA))


def test_ban_rules() -> None:
    branch = room_with([BOB, CHARLIE], users={BOB: 50})
    allowed(branch, branch.draft("m.room.member", BOB, {"membership": "ban"}, CHARLIE))
    allowed(branch, branch.draft("m.room.member", BOB, {"membership": "ban"}, ZARA))  # not even in the room
    refused(branch, branch.draft("m.room.member", BOB, {"membership": "ban"}, ALICE), "ban")
    refused(branch, branch.draft("m.room.member", CHARLIE, {"membership": "ban"}, BOB), "ban")
    refused(branch, branch.draft("m.room.member", ZARA, {"membership": "ban"}, CHARLIE), "not joined")


def test_knock_rules() -> None:
    public = room_with([BOB])
    refused(public, public.draft("m.room.member", ZARA, {"membership": "knock"}, ZARA), "knock")
    branch = room_with([BOB], join_rule="knock")
    allowed(branch, branch.draft("m.room.member", ZARA, {"membership": "knock"}, ZARA))
    refused(branch, branch.draft("m.room.member", BOB, {"membership": "knock"}, ZARA), "behalf")
    refused(branch, branch.draft("m.room.member", BOB, {"membership": "knock"}, BOB), "joined")
    branch.member(ZARA, "ban", sender=ALICE)
    refused(branch, branch.draft("m.room.member", ZARA, {"membership": "knock"}, ZARA), "banned")
    restricted = room_with([], join_rule="knock_restricted")
    allowed(restricted, restricted.draft("m.room.member", ZARA, {"membership": "knock"}, ZARA))


def test_membership_shape() -> None:
    branch = room_with([BOB])
    refused(branch, branch.draft("m.room.member", BOB, {"membership": "dance"}, BOB), "unknown membership")
    refused(branch, branch.draft("m.room.member", BOB, {}, BOB), "membership")
    refused(branch, branch.draft("m.room.member", BOB, {"membership": "join"}), "state_key")


# ---- non-membership events ----------------------------------------------------------------------

def test_sender_must_be_joined() -> None:
    branch = room_with([BOB])
    allowed(branch, branch.draft("m.room.message", BOB, {"body": "hi"}))
    refused(branch, branch.draft("m.room.message", ZARA, {"body": "hi"}), "not joined")
    branch.member(BOB, "leave")
    refused(branch, branch.draft("m.room.message", BOB, {"body": "hi"}), "not joined")


def test_required_power_level() -> None:
    branch = room_with([BOB])
    refused(branch, branch.draft("m.room.topic", BOB, {"topic": "t"}, ""), "too low")  # state_default 50
    allowed(branch, branch.draft("m.room.topic", ALICE, {"topic": "t"}, ""))
    branch.send("m.room.power_levels", ALICE, {"users": {ALICE: 100}, "events": {"m.room.message": 20}}, "")
    refused(branch, branch.draft("m.room.message", BOB, {"body": "hi"}), "too low")
    allowed(branch, branch.draft("m.reaction", BOB, {}))  # events_default 0


def test_state_key_impersonation() -> None:
    branch = room_with([BOB])
    branch.send("m.room.power_levels", ALICE, {"users": {ALICE: 100}, "state_default": 0}, "")
    allowed(branch, branch.draft("org.example.status", BOB, {}, BOB))
    refused(branch, branch.draft("org.example.status", BOB, {}, ALICE), "another user")
    allowed(branch, branch.draft("org.example.status", BOB, {}, "plain"))


def test_m_federate_false_keeps_other_servers_out() -> None:
    graph = RoomGraph(ROOM_V11)
    branch = Branch(graph)
    branch.send("m.room.create", ALICE, {"room_version": "11", "m.federate": False}, "")
    branch.member(ALICE, "join")
    branch.send("m.room.join_rules", ALICE, {"join_rule": "public"}, "")
    allowed(branch, branch.draft("m.room.member", BOB, {"membership": "join"}, BOB))
    refused(branch, branch.draft("m.room.member", EVE, {"membership": "join"}, EVE), "federate")


# ---- power levels -------------------------------------------------------------------------------

@pytest.mark.parametrize("content", [
    {"ban": "50"}, {"kick": 50.0}, {"invite": True}, {"users_default": None},
    {"events": {"m.room.name": "50"}}, {"events": []}, {"notifications": {"room": 1.5}},
    {"users": {"not-a-user": 50}}, {"users": {BOB: "50"}}, {"users": []},
])
@pytest.mark.parametrize("version", [ROOM_V10, ROOM_V11])
def test_power_levels_must_be_integers(version, content: dict) -> None:
    branch = room_with([BOB], version=version)
    refused(branch, branch.draft("m.room.power_levels", ALICE, {"users": {ALICE: 100}, **content}, ""))


def test_first_power_levels_event_is_only_shape_checked() -> None:
    graph = RoomGraph(ROOM_V11)
    branch = Branch(graph)
    branch.send("m.room.create", ALICE, {"room_version": "11"}, "")
    branch.member(ALICE, "join")
    allowed(branch, branch.draft("m.room.power_levels", ALICE, {"users": {ALICE: 100, BOB: 100}}, ""))
    refused(branch, branch.draft("m.room.power_levels", ALICE, {"users": {ALICE: "100"}}, ""))


def test_power_level_changes() -> None:
    branch = room_with([BOB, CHARLIE, ZARA], users={BOB: 50, CHARLIE: 50})
    branch.send("m.room.power_levels", ALICE, {"users": {ALICE: 100, BOB: 50, CHARLIE: 50}, "state_default": 50,
                                               "ban": 50, "events": {"m.room.name": 75}}, "")
    base = {"users": {ALICE: 100, BOB: 50, CHARLIE: 50}, "state_default": 50, "ban": 50,
            "events": {"m.room.name": 75}}

    def change(sender: str, **updates: Any) -> Event:
        content = {**base, **updates}
        return branch.draft("m.room.power_levels", sender, content, "")

    allowed(branch, change(BOB, users={**base["users"], ZARA: 50}))           # raise to own level
    refused(branch, change(BOB, users={**base["users"], ZARA: 51}), "raise")  # above own level
    refused(branch, change(BOB, users={**base["users"], ALICE: 0}), "not below yours")
    refused(branch, change(BOB, users={**base["users"], CHARLIE: 0}), "not below yours")  # peer
    refused(branch, change(BOB, users={ALICE: 100, BOB: 50}), "not below yours")         # removing a peer
    allowed(branch, change(BOB, users={**base["users"], BOB: 10}))            # demote self
    allowed(branch, change(BOB, ban=40))
    refused(branch, change(BOB, ban=60), "above your power level")
    refused(branch, change(BOB, events={"m.room.name": 10}), "current value")  # current 75 > 50
    refused(branch, change(BOB, events={}), "current value")                   # removing it likewise
    allowed(branch, change(BOB, events={"m.room.name": 75, "m.room.topic": 50}))
    refused(branch, change(BOB, events={"m.room.name": 75, "m.room.topic": 51}), "above")
    refused(branch, change(BOB, notifications={"room": 60}), "above")
    allowed(branch, change(ALICE, users={ALICE: 100, BOB: 0, CHARLIE: 99}))
    refused(branch, change(ZARA, ban=40), "too low")  # Zara (0) is below state_default


# ---- v12 creators -------------------------------------------------------------------------------

def test_v12_creators_have_infinite_power() -> None:
    branch = new_room(ROOM_V12, users={BOB: 100})
    graph = branch.graph
    assert graph.room_id == "!" + branch.state[CREATE_KEY][1:]
    branch.member(BOB, "join")
    state = branch.auth_state()
    assert user_power_level(ALICE, state, ROOM_V12) == float("inf")
    # Bob at 100 cannot touch the creator; the creator can do anything to Bob.
    refused(branch, branch.draft("m.room.member", BOB, {"membership": "ban"}, ALICE), "ban")
    allowed(branch, branch.draft("m.room.member", ALICE, {"membership": "ban"}, BOB))
    allowed(branch, branch.draft("m.room.power_levels", ALICE, {"users": {BOB: 10**9}}, ""))
    refused(branch, branch.draft("m.room.power_levels", ALICE, {"users": {ALICE: 100}}, ""), "creators")


def test_v12_additional_creators() -> None:
    graph = RoomGraph(ROOM_V12)
    branch = Branch(graph)
    branch.send("m.room.create", ALICE, {"room_version": "12", "additional_creators": [BOB]}, "")
    branch.member(ALICE, "join")
    branch.power_levels(ALICE, {CHARLIE: 100})
    branch.send("m.room.join_rules", ALICE, {"join_rule": "public"}, "")
    branch.member(BOB, "join")
    branch.member(CHARLIE, "join")
    assert user_power_level(BOB, branch.auth_state(), ROOM_V12) == float("inf")
    refused(branch, branch.draft("m.room.member", CHARLIE, {"membership": "leave"}, BOB), "kick")
    allowed(branch, branch.draft("m.room.member", BOB, {"membership": "leave"}, CHARLIE))
    refused(branch, branch.draft("m.room.power_levels", BOB, {"users": {BOB: 1}}, ""), "creators")
    # v11 ignores additional_creators entirely.
    assert user_power_level(BOB, branch.auth_state(), ROOM_V11) == 0


# ---- redactions ---------------------------------------------------------------------------------

def test_redactions_are_authorised_like_any_event_then_checked_when_applied() -> None:
    branch = room_with([BOB, CHARLIE, EVE], users={CHARLIE: 50})
    target = branch.send("m.room.message", BOB, {"body": "hello"})
    eve_redaction = branch.draft("m.room.redaction", EVE, {"redacts": target.event_id})
    allowed(branch, eve_redaction)  # the auth rules ignore the redact level...
    state = branch.auth_state()
    assert not redaction_allowed(eve_redaction, target, state, ROOM_V11)  # ...but it is not applied
    same_server = branch.draft("m.room.redaction", CHARLIE, {"redacts": target.event_id})
    assert redaction_allowed(same_server, target, state, ROOM_V11)
    branch.send("m.room.power_levels", ALICE, {"users": {ALICE: 100, EVE: 50}}, "")
    assert redaction_allowed(eve_redaction, target, branch.auth_state(), ROOM_V11)
    branch.send("m.room.power_levels", ALICE, {"users": {ALICE: 100}, "events": {"m.room.redaction": 10}}, "")
    refused(branch, branch.draft("m.room.redaction", BOB, {"redacts": target.event_id}), "too low")
