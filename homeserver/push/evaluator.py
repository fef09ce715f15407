"""Compiled rule sets and their evaluation for many users at once.

A rule set is compiled once (users who changed nothing share one compiled set of the server's
defaults) and kept until the rules change. For an event, each compiled set first drops every
rule whose shared conditions fail (once, whatever the number of users); each user then walks
only what is left, testing only the conditions that read them. For a plain message in a big
room that is a handful of set lookups per user.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from homeserver.push.conditions import EventFacts, Member, Personal, Shared, compile_condition
from homeserver.push.rules import KINDS, LEGACY_MENTION_RULES


@dataclass(frozen=True)
class Outcome:
    """What a matching rule does: its actions (JSON, stored as is), notify and highlight."""

    actions_json: str
    notify: bool
    highlight: bool

    @classmethod
    def of(cls, actions: list[Any]) -> Outcome:
        notify = "notify" in actions
        highlight = any(isinstance(a, dict) and a.get("set_tweak") == "highlight" and a.get("value", True) is True
                        for a in actions)
        return cls(json.dumps(actions, separators=(",", ":")), notify, highlight)


NOTHING = Outcome("[]", False, False)


@dataclass(frozen=True)
class CompiledRule:
    rule_id: str
    shared: tuple[Shared, ...]
    personal: tuple[Personal, ...]
    legacy_mention: bool
    outcome: Outcome


def _conditions(kind: str, rule: dict[str, Any]) -> list[dict[str, Any]]:
    if kind == "content":
        pattern = rule.get("pattern")
        return [{"kind": "event_match", "key": "content.body", "pattern": pattern}]
    if kind == "room":
        return [{"kind": "event_match", "key": "room_id", "pattern": rule["rule_id"]}]
    if kind == "sender":
        return [{"kind": "event_match", "key": "sender", "pattern": rule["rule_id"]}]
    conditions = rule.get("conditions", [])
    return conditions if isinstance(conditions, list) else [{"kind": "unknown"}]


class CompiledRules:
    """A rule set (with USER_ID/LOCALPART placeholders in the defaults) ready to evaluate."""

    def __init__(self, ruleset: dict[str, list[dict[str, Any]]]) -> None:
        rules = []
        for kind in KINDS:
            for rule in ruleset.get(kind, []):
                if not rule.get("enabled", True):
                    continue
                shared: list[Shared] = []
                personal: list[Personal] = []
                for cond in _conditions(kind, rule):
                    s, p = compile_condition(cond if isinstance(cond, dict) else {})
                    if s is not None:
                        shared.append(s)
                    if p is not None:
                        personal.append(p)
                actions = rule.get("actions", [])
                rules.append(CompiledRule(rule["rule_id"], tuple(shared), tuple(personal),
                                          bool(rule.get("default")) and rule["rule_id"] in LEGACY_MENTION_RULES,
                                          Outcome.of(actions if isinstance(actions, list) else [])))
        self.rules = tuple(rules)

    def candidates(self, facts: EventFacts) -> list[CompiledRule]:
        """The rules that may still match once the user is known, in order, up to the first that
        matches everyone."""
        left = []
        for rule in self.rules:
            if rule.legacy_mention and facts.has_mentions:
                continue  # intentional mentions replace the body-scanning rules
            if all(test(facts) for test in rule.shared):
                left.append(rule)
                if not rule.personal:
                    break
        return left

    @staticmethod
    def assign(candidates: list[CompiledRule], facts: EventFacts, members: list[Member]) -> dict[Outcome, list[str]]:
        """Each member's outcome (the first candidate that holds for them), as outcome -> user IDs;
        members no rule matched are left out. Personal conditions run over all members at once."""
        out: dict[Outcome, list[str]] = {}
        remaining = members
        for rule in candidates:
            if not remaining:
                break
            if not rule.personal:
                out.setdefault(rule.outcome, []).extend(m.user_id for m in remaining)
                break
            matched: set[str] | None = None
            for test in rule.personal:
                found = test(facts, remaining if matched is None else [m for m in remaining if m.user_id in matched])
                matched = found if matched is None else matched & found
                if not matched:
                    break
            if matched:
                out.setdefault(rule.outcome, []).extend(m.user_id for m in remaining if m.user_id in matched)
                remaining = [m for m in remaining if m.user_id not in matched]
        return out

    def evaluate(self, facts: EventFacts, member: Member) -> Outcome:
        """One member's outcome (tests and single evaluations)."""
        for outcome in self.assign(self.candidates(facts), facts, [member]):
            return outcome
        return NOTHING
