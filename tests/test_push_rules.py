"""Push rules: the spec's conditions and examples, the default rule set, the /pushrules/ API, and
m.push_rules in /sync."""

from __future__ import annotations

from typing import Any

import pytest

from homeserver.push.conditions import EventFacts, Member
from homeserver.push.evaluator import CompiledRules
from homeserver.push.rules import DefaultRules, RuleEdits, put_rule, render
from tests.rooms_helpers import User

ALICE = Member("@alice:example.org", "alice", "Alice Liddell")


def matches(cond: dict[str, Any], pdu: dict[str, Any], members: int = 5, power: int = 0,
            levels: dict[str, Any] | None = None, member: Member = ALICE) -> bool:
    rules = CompiledRules({"override": [{"rule_id": "t", "conditions": [cond], "actions": ["notify"]}]})
    return rules.evaluate(EventFacts.of(pdu, members, power, levels or {}), member).notify


def topic(value: Any) -> dict[str, Any]:
    return {"type": "m.room.topic", "state_key": "", "sender": "@example:example.org",
            "room_id": "!636q39766251:example.com", "content": {"topic": value}}


def body(text: str, **content: Any) -> dict[str, Any]:
    return {"type": "m.room.message", "sender": "@example:example.org", "room_id": "!r:example.org",
            "content": {"msgtype": "m.text", "body": text, **content}}


# --- the spec's own examples (Client-Server API, "Conditions") ----------------------

@pytest.mark.parametrize("value, expected", [
    ("Lunch plans", True), ("LUNCH", True), (" lunch", False), ("lunc", False), (None, False)])
def test_event_match_spec_example(value: Any, expected: bool) -> None:
    assert matches({"kind": "event_match", "key": "content.topic", "pattern": "lunc?*"}, topic(value)) is expected


@pytest.mark.parametrize("text, expected", [
    ("An example event.", True), ("exple", True), ("An exciting triple-whammy", True),
    ("examples", False), ("counterexample", False)])
def test_event_match_body_word_boundaries(text: str, expected: bool) -> None:
    assert matches({"kind": "event_match", "key": "content.body", "pattern": "ex*ple"}, body(text)) is expected


def test_event_match_absent_or_not_string_never_matches() -> None:
    assert not matches({"kind": "event_match", "key": "content.nothing", "pattern": "*"}, body("x"))
    assert not matches({"kind": "event_match", "key": "content.n", "pattern": "*"}, body("x", n=1))


def create(federate: Any) -> dict[str, Any]:
    return {"type": "m.room.create", "state_key": "", "sender": "@example:example.org",
            "content": {"creator": "@example:example.org", "m.federate": federate, "room_version": "1",
                        "predecessor": {"event_id": "$something:example.org", "room_id": "!oldroom:example.org"}}}


@pytest.mark.parametrize("federate, expected", [(True, True), ("true", False), (1, False)])
def test_event_property_is_spec_example(federate: Any, expected: bool) -> None:
    cond = {"kind": "event_property_is", "key": "content.m\\.federate", "value": True}
    assert matches(cond, create(federate)) is expected


def test_event_property_is_null_and_integers() -> None:
    assert matches({"kind": "event_property_is", "key": "content.x", "value": None}, body("b", x=None))
    assert matches({"kind": "event_property_is", "key": "content.x", "value": 3}, body("b", x=3))
    assert not matches({"kind": "event_property_is", "key": "content.x", "value": 3}, body("b", x=3.0))


@pytest.mark.parametrize("value, expected", [("#myroom:example.com", True), (":example.com", False)])
def test_event_property_contains_spec_example(value: str, expected: bool) -> None:
    pdu = {"type": "m.room.canonical_alias", "state_key": "", "sender": "@example:example.org",
           "content": {"alias": "#somewhere:localhost", "alt_aliases": ["#somewhere:example.org",
                                                                        "#myroom:example.com"]}}
    cond = {"kind": "event_property_contains", "key": "content.alt_aliases", "value": value}
    assert matches(cond, pdu) is expected


@pytest.mark.parametrize("spec, count, expected", [
    ("2", 2, True), ("==2", 3, False), ("<10", 9, True), ("<10", 10, False), (">=10", 10, True),
    ("<=1", 2, False), (">2", 3, True), ("x2", 2, False)])
def test_room_member_count(spec: str, count: int, expected: bool) -> None:
    assert matches({"kind": "room_member_count", "is": spec}, body("x"), members=count) is expected


def test_sender_notification_permission() -> None:
    cond = {"kind": "sender_notification_permission", "key": "room"}
    assert matches(cond, body("x"), power=50) and not matches(cond, body("x"), power=49)
    assert matches(cond, body("x"), power=10, levels={"room": 10})


def test_contains_display_name() -> None:
    cond = {"kind": "contains_display_name"}
    assert matches(cond, body("hey alice liddell, lunch?"))
    assert not matches(cond, body("hey alice liddellx"))
    assert not matches(cond, body("x"), member=Member("@a:x", "a", None))


def test_unknown_condition_never_matches() -> None:
    assert not matches({"kind": "org.example.new"}, body("x"))


# --- the default rule set ---------------------------------------------------------------

def outcome(pdu: dict[str, Any], members: int = 5, power: int = 0, member: Member = ALICE) -> tuple[bool, bool]:
    rules = CompiledRules(render(DefaultRules().template(), RuleEdits()))
    result = rules.evaluate(EventFacts.of(pdu, members, power, {}), member)
    return result.notify, result.highlight


def test_defaults_messages_mentions_and_suppressions() -> None:
    assert outcome(body("hello")) == (True, False)
    assert outcome(body("hello", msgtype="m.notice")) == (False, False)
    assert outcome(body("hi", **{"m.mentions": {"user_ids": [ALICE.user_id]}})) == (True, True)
    assert outcome(body("hi", **{"m.mentions": {"user_ids": ["@bob:x"]}})) == (True, False)
    # legacy body mentions: only without m.mentions
    assert outcome(body("ping Alice Liddell")) == (True, True)
    assert outcome(body("ping alice!")) == (True, True)
    assert outcome(body("ping Alice Liddell", **{"m.mentions": {}})) == (True, False)
    # @room needs the notifications level
    room = body("hi all", **{"m.mentions": {"room": True}})
    assert outcome(room, power=50) == (True, True) and outcome(room, power=0) == (True, False)
    assert outcome(body("@room hi"), power=100) == (True, True)
    edit = body("* fixed", **{"m.relates_to": {"rel_type": "m.replace", "event_id": "$x"}})
    assert outcome(edit) == (False, False)
    assert outcome({"type": "m.reaction", "sender": "@b:x", "content": {}}) == (False, False)


def test_defaults_invites_calls_and_encrypted() -> None:
    invite = {"type": "m.room.member", "state_key": ALICE.user_id, "sender": "@b:x",
              "content": {"membership": "invite"}}
    assert outcome(invite) == (True, False)
    other = {**invite, "state_key": "@c:x"}
    assert outcome(other) == (False, False)
    assert outcome({"type": "m.call.invite", "sender": "@b:x", "content": {}}) == (True, False)
    encrypted = {"type": "m.room.encrypted", "sender": "@b:x", "content": {"ciphertext": "..."}}
    assert outcome(encrypted, members=2) == (True, False) and outcome(encrypted) == (True, False)
    assert outcome({"type": "m.room.tombstone", "state_key": "", "sender": "@b:x", "content": {}}) == (True, True)
    assert outcome({"type": "m.room.name", "state_key": "", "sender": "@b:x", "content": {"name": "n"}}) \
        == (False, False)


def test_default_rule_order_is_the_specs() -> None:
    ruleset = DefaultRules().for_user("@alice:example.org")
    assert [r["rule_id"] for r in ruleset["override"]] == [
        ".m.rule.master", ".m.rule.suppress_notices", ".m.rule.invite_for_me", ".m.rule.member_event",
        ".m.rule.is_user_mention", ".m.rule.contains_display_name", ".m.rule.is_room_mention",
        ".m.rule.roomnotif", ".m.rule.tombstone", ".m.rule.reaction", ".m.rule.room.server_acl",
        ".m.rule.suppress_edits"]
    assert [r["rule_id"] for r in ruleset["underride"]] == [
        ".m.rule.call", ".m.rule.encrypted_room_one_to_one", ".m.rule.room_one_to_one", ".m.rule.message",
        ".m.rule.encrypted"]
    assert ruleset["content"][0]["pattern"] == "alice"
    assert ruleset["override"][2]["conditions"][2]["pattern"] == "@alice:example.org"


def test_user_rules_come_before_defaults_but_after_master() -> None:
    edits = RuleEdits()
    put_rule(edits, "override", "mine", {"actions": [], "conditions": []}, None, None)
    rendered = render(DefaultRules().for_user("@a:x"), edits)
    assert [r["rule_id"] for r in rendered["override"][:3]] == [".m.rule.master", "mine", ".m.rule.suppress_notices"]
    assert rendered["override"][1]["default"] is False


def test_a_server_default_rule_can_be_added() -> None:
    defaults = DefaultRules()
    defaults.add("override", {"rule_id": ".org.whispr.rule.test", "conditions": [], "actions": ["notify"]},
                 after=".m.rule.master")
    assert defaults.for_user("@a:x")["override"][1]["rule_id"] == ".org.whispr.rule.test"
    with pytest.raises(ValueError):
        defaults.add("override", {"rule_id": "no-dot", "actions": []})


# --- the API ------------------------------------------------------------------------------

async def test_get_pushrules_as_element_fetches_it(client: Any) -> None:
    alice = await User.new(client, "alice")
    everything = await alice.call("GET", "/pushrules/")
    assert set(everything["global"]) == {"override", "content", "room", "sender", "underride"}
    assert everything["global"]["override"][0] == {"rule_id": ".m.rule.master", "default": True,
                                                   "enabled": False, "conditions": [], "actions": []}
    assert await alice.call("GET", "/pushrules/global/") == everything["global"]
    rule = await alice.call("GET", "/pushrules/global/content/.m.rule.contains_user_name")
    assert rule["pattern"] == "alice"
    await alice.call("GET", "/pushrules/global/override/nope", expect=404)
    await alice.call("GET", "/pushrules/global/bogus/x", expect=400)
    await alice.call("GET", "/pushrules/device/", expect=400)


async def test_put_delete_and_order(client: Any) -> None:
    alice = await User.new(client, "alice")
    g = "/pushrules/global"
    await alice.call("PUT", f"{g}/content/cake", json={"pattern": "cake*lie", "actions": ["notify"]})
    await alice.call("PUT", f"{g}/content/pie", json={"pattern": "pie", "actions": ["notify"]})  # most important
    await alice.call("PUT", f"{g}/content/tart?after=pie", json={"pattern": "tart", "actions": []})
    await alice.call("PUT", f"{g}/content/flan?before=pie", json={"pattern": "flan", "actions": []})
    ids = [r["rule_id"] for r in (await alice.call("GET", f"{g}/"))["content"]]
    assert ids == ["flan", "pie", "tart", "cake", ".m.rule.contains_user_name"]
    rule = await alice.call("GET", f"{g}/content/cake")
    assert rule == {"rule_id": "cake", "default": False, "enabled": True, "pattern": "cake*lie",
                    "actions": ["notify"]}
    # the spec's examples: mute a room, mute a sender
    room = await alice.create_room()
    await alice.call("PUT", f"{g}/room/{room}", json={"actions": []})
    await alice.call("PUT", f"{g}/sender/@spambot:matrix.org", json={"actions": []})
    assert await alice.call("GET", f"{g}/room/{room}") == {"rule_id": room, "default": False, "enabled": True,
                                                           "actions": []}
    sender_rule = await alice.call("GET", f"{g}/sender/@spambot:matrix.org")
    assert "conditions" not in sender_rule and "pattern" not in sender_rule
    await alice.call("DELETE", f"{g}/content/pie")
    await alice.call("GET", f"{g}/content/pie", expect=404)
    await alice.call("DELETE", f"{g}/content/pie", expect=404)
    # refusals
    for path, payload in [(f"{g}/content/.mine", {"pattern": "x", "actions": []}),
                          (f"{g}/content/x?before=.m.rule.contains_user_name", {"pattern": "x", "actions": []}),
                          (f"{g}/override/x", {"actions": ["wiggle"]}),
                          (f"{g}/content/x", {"actions": []}),
                          (f"{g}/kind/x", {"actions": []})]:
        resp = await alice.client.put("/_matrix/client/v3" + path, headers=alice.h, json=payload)
        assert resp.status == 400 and "errcode" in await resp.json(), path
    resp = await alice.client.put("/_matrix/client/v3" + f"{g}/content/x?after=missing", headers=alice.h,
                                  json={"pattern": "x", "actions": []})
    assert resp.status in (400, 404)
    await alice.call("DELETE", f"{g}/override/.m.rule.master", expect=400)


async def test_enabled_and_actions_of_default_and_user_rules(client: Any) -> None:
    alice = await User.new(client, "alice")
    g = "/pushrules/global"
    assert await alice.call("GET", f"{g}/override/.m.rule.master/enabled") == {"enabled": False}
    await alice.call("PUT", f"{g}/override/.m.rule.master/enabled", json={"enabled": True})
    assert await alice.call("GET", f"{g}/override/.m.rule.master/enabled") == {"enabled": True}
    await alice.call("PUT", f"{g}/underride/.m.rule.message/actions",
                     json={"actions": ["notify", {"set_tweak": "sound", "value": "x"}]})
    assert (await alice.call("GET", f"{g}/underride/.m.rule.message/actions"))["actions"][1]["value"] == "x"
    await alice.call("PUT", f"{g}/override/mine", json={"actions": ["notify"], "conditions": []})
    await alice.call("PUT", f"{g}/override/mine/enabled", json={"enabled": False})
    # an update of the rule keeps it disabled
    await alice.call("PUT", f"{g}/override/mine", json={"actions": [], "conditions": []})
    assert await alice.call("GET", f"{g}/override/mine/enabled") == {"enabled": False}
    await alice.call("PUT", f"{g}/override/mine/enabled", json={"enabled": "yes"}, expect=400)
    await alice.call("PUT", f"{g}/override/nope/enabled", json={"enabled": True}, expect=404)
    await alice.call("GET", f"{g}/override/mine/colour", expect=400)


async def test_push_rules_in_sync(client: Any) -> None:
    alice = await User.new(client, "alice")
    first = await alice.sync()
    data = {e["type"]: e["content"] for e in first["account_data"]["events"]}
    assert data["m.push_rules"]["global"]["override"][0]["rule_id"] == ".m.rule.master"
    await alice.call("PUT", "/pushrules/global/override/.m.rule.master/enabled", json={"enabled": True})
    nxt = await alice.sync(first["next_batch"])
    data = {e["type"]: e["content"] for e in nxt["account_data"]["events"]}
    assert data["m.push_rules"]["global"]["override"][0]["enabled"] is True
    # the account-data API refuses to write it directly
    await alice.call("PUT", f"/user/{alice.user_id}/account_data/m.push_rules", json={}, expect=405)
    again = await alice.sync(nxt["next_batch"])
    assert again["account_data"]["events"] == []


def test_a_hostile_pattern_does_not_backtrack_forever() -> None:
    import time
    pattern = "*a" * 30 + "*b"
    text = "a " * 30_000  # no b: every start fails
    t0 = time.perf_counter()
    assert not matches({"kind": "event_match", "key": "content.body", "pattern": pattern}, body(text))
    assert not matches({"kind": "event_match", "key": "content.topic", "pattern": pattern}, topic("a" * 60_000))
    assert time.perf_counter() - t0 < 2.0


def test_glob_brackets_are_literal() -> None:
    assert matches({"kind": "event_match", "key": "content.topic", "pattern": "[x]*"}, topic("[x] yes"))
    assert not matches({"kind": "event_match", "key": "content.topic", "pattern": "[x]*"}, topic("x yes"))


async def test_rule_size_limits(client: Any) -> None:
    alice = await User.new(client, "alice")
    many = [{"kind": "event_match", "key": "type", "pattern": "x"}] * 33
    await alice.call("PUT", "/pushrules/global/override/big", json={"actions": [], "conditions": many}, expect=400)
    await alice.call("PUT", "/pushrules/global/content/long", json={"actions": [], "pattern": "x" * 1001}, expect=400)
