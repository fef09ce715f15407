"""Push rules: the spec's server-default rule set and a user's edits of it.

A user's rules are the defaults rendered for them plus what they changed, kept as a small
edit document (their own rules in priority order, and the `enabled`/`actions` they set on
default rules), so a later change of the defaults reaches every user who did not override it.
Order within a kind: user-defined rules before server-default ones, except `.m.rule.master`,
which comes before everything (spec: "Predefined Rules").
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from homeserver.errors import MatrixError, bad_json, not_found

KINDS = ("override", "content", "room", "sender", "underride")
MASTER = ".m.rule.master"
MAX_RULES_PER_KIND = 1_000
# Every rule of a user is evaluated for every event of their rooms: bound their size.
MAX_CONDITIONS = 32
MAX_PATTERN_LENGTH = 1_000
MAX_RULE_ID_LENGTH = 255
# Actions the spec defines; dont_notify and coalesce are legacy no-ops clients still send.
STRING_ACTIONS = ("notify", "dont_notify", "coalesce")

_SOUND_DEFAULT = {"set_tweak": "sound", "value": "default"}
_HIGHLIGHT = {"set_tweak": "highlight"}
USER_ID = "[the user's Matrix ID]"
LOCALPART = "[the user's localpart]"


def _match(key: str, pattern: str) -> dict[str, Any]:
    return {"kind": "event_match", "key": key, "pattern": pattern}


def _rule(rule_id: str, conditions: list[dict[str, Any]] | None, actions: list[Any], enabled: bool = True,
          pattern: str | None = None) -> dict[str, Any]:
    rule: dict[str, Any] = {"rule_id": rule_id, "default": True, "enabled": enabled, "actions": actions}
    if conditions is not None:
        rule["conditions"] = conditions
    if pattern is not None:
        rule["pattern"] = pattern
    return rule


def spec_defaults() -> dict[str, list[dict[str, Any]]]:
    """The spec's server-default rules in its order, with the legacy body-mention rules
    (`.m.rule.contains_display_name`, `.m.rule.roomnotif`, `.m.rule.contains_user_name`) where
    Synapse and older spec versions place them; USER_ID and LOCALPART are filled in per user."""
    return {
        "override": [
            _rule(MASTER, [], [], enabled=False),
            _rule(".m.rule.suppress_notices", [_match("content.msgtype", "m.notice")], []),
            _rule(".m.rule.invite_for_me", [_match("type", "m.room.member"), _match("content.membership", "invite"),
                                            _match("state_key", USER_ID)], ["notify", _SOUND_DEFAULT]),
            _rule(".m.rule.member_event", [_match("type", "m.room.member")], []),
            _rule(".m.rule.is_user_mention",
                  [{"kind": "event_property_contains", "key": "content.m\\.mentions.user_ids", "value": USER_ID}],
                  ["notify", _SOUND_DEFAULT, _HIGHLIGHT]),
            _rule(".m.rule.contains_display_name", [{"kind": "contains_display_name"}],
                  ["notify", _SOUND_DEFAULT, _HIGHLIGHT]),
            _rule(".m.rule.is_room_mention",
                  [{"kind": "event_property_is", "key": "content.m\\.mentions.room", "value": True},
                   {"kind": "sender_notification_permission", "key": "room"}], ["notify", _HIGHLIGHT]),
            _rule(".m.rule.roomnotif", [{"kind": "sender_notification_permission", "key": "room"},
                                        _match("content.body", "@room")], ["notify", _HIGHLIGHT]),
            _rule(".m.rule.tombstone", [_match("type", "m.room.tombstone"), _match("state_key", "")],
                  ["notify", _HIGHLIGHT]),
            _rule(".m.rule.reaction", [_match("type", "m.reaction")], []),
            _rule(".m.rule.room.server_acl", [_match("type", "m.room.server_acl"), _match("state_key", "")], []),
            _rule(".m.rule.suppress_edits",
                  [{"kind": "event_property_is", "key": "content.m\\.relates_to.rel_type", "value": "m.replace"}], []),
        ],
        "content": [
            _rule(".m.rule.contains_user_name", None, ["notify", _SOUND_DEFAULT, _HIGHLIGHT], pattern=LOCALPART),
        ],
        "room": [],
        "sender": [],
        "underride": [
            _rule(".m.rule.call", [_match("type", "m.call.invite")],
                  ["notify", {"set_tweak": "sound", "value": "ring"}]),
            _rule(".m.rule.encrypted_room_one_to_one",
                  [{"kind": "room_member_count", "is": "2"}, _match("type", "m.room.encrypted")],
                  ["notify", _SOUND_DEFAULT]),
            _rule(".m.rule.room_one_to_one", [{"kind": "room_member_count", "is": "2"},
                                              _match("type", "m.room.message")],
                  ["notify", _SOUND_DEFAULT]),
            _rule(".m.rule.message", [_match("type", "m.room.message")], ["notify"]),
            _rule(".m.rule.encrypted", [_match("type", "m.room.encrypted")], ["notify"]),
        ],
    }


# The legacy rules that look for mentions in the body; skipped for events with `m.mentions`
# (intentional mentions, MSC3952), as Synapse does.
LEGACY_MENTION_RULES = frozenset({".m.rule.contains_display_name", ".m.rule.roomnotif", ".m.rule.contains_user_name"})


class DefaultRules:
    """The server-default rules of this server: the spec's, plus any a Whispr domain adds
    (friends adds one for friend requests) through `add`."""

    def __init__(self) -> None:
        self._rules = spec_defaults()
        self.version = 0  # bumped on every change, so compiled rule sets know they are stale

    def add(self, kind: str, rule: dict[str, Any], after: str | None = None) -> None:
        """Add a server-default rule (its rule_id must start with a dot): after the default
        rule `after`, else last of its kind (first after `.m.rule.master` for overrides would be
        `after=".m.rule.master"`). USER_ID and LOCALPART in string values are filled in per user."""
        if kind not in KINDS or not str(rule.get("rule_id", "")).startswith("."):
            raise ValueError("a server-default rule needs a known kind and a rule_id starting with '.'")
        rule = {"default": True, "enabled": True, **copy.deepcopy(rule)}
        rules = [r for r in self._rules[kind] if r["rule_id"] != rule["rule_id"]]
        index = len(rules)
        if after is not None:
            index = next((i + 1 for i, r in enumerate(rules) if r["rule_id"] == after), index)
        rules.insert(index, rule)
        self._rules[kind] = rules
        self.version += 1

    def template(self) -> dict[str, list[dict[str, Any]]]:
        """The rules with their USER_ID/LOCALPART placeholders (what evaluation compiles)."""
        return self._rules

    def for_user(self, user_id: str) -> dict[str, list[dict[str, Any]]]:
        localpart = user_id[1:].split(":", 1)[0]
        return {kind: [_fill(r, user_id, localpart) for r in rules] for kind, rules in self._rules.items()}


def _fill(value: Any, user_id: str, localpart: str) -> Any:
    if isinstance(value, str):
        return user_id if value == USER_ID else localpart if value == LOCALPART else value
    if isinstance(value, list):
        return [_fill(v, user_id, localpart) for v in value]
    if isinstance(value, dict):
        return {k: _fill(v, user_id, localpart) for k, v in value.items()}
    return value


@dataclass
class RuleEdits:
    """What a user changed: their own rules per kind (most important first) and, per default
    rule ("kind/rule_id"), the `enabled` and `actions` they set."""

    user: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: {k: [] for k in KINDS})
    defaults: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def from_json(cls, raw: dict[str, Any] | None) -> RuleEdits:
        if not raw:
            return cls()
        user = {k: list(raw.get("user", {}).get(k, [])) for k in KINDS}
        return cls(user, dict(raw.get("defaults", {})))

    def to_json(self) -> dict[str, Any]:
        return {"user": self.user, "defaults": self.defaults}


def render(defaults: dict[str, list[dict[str, Any]]], edits: RuleEdits) -> dict[str, list[dict[str, Any]]]:
    """The user's rule set, as GET /pushrules/global/ answers it."""
    ruleset: dict[str, list[dict[str, Any]]] = {}
    for kind in KINDS:
        base = []
        for rule in defaults[kind]:
            change = edits.defaults.get(f"{kind}/{rule['rule_id']}")
            base.append({**rule, **change} if change else rule)
        user = [{**r, "default": False} for r in edits.user[kind]]
        if kind == "override" and base and base[0]["rule_id"] == MASTER:
            ruleset[kind] = [base[0], *user, *base[1:]]
        else:
            ruleset[kind] = [*user, *base]
    return ruleset


def find(ruleset: dict[str, list[dict[str, Any]]], kind: str, rule_id: str) -> dict[str, Any]:
    check_kind(kind)
    for rule in ruleset[kind]:
        if rule["rule_id"] == rule_id:
            return rule
    raise not_found("The push rule was not found.")


def check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise MatrixError(400, "M_INVALID_PARAM", f"Unknown push rule kind {kind!r}")


def check_scope(scope: str) -> None:
    if scope != "global":
        raise MatrixError(400, "M_INVALID_PARAM", "The only push rule scope is 'global'")


def validate_actions(actions: Any) -> list[Any]:
    if not isinstance(actions, list):
        raise bad_json("actions must be a list")
    for action in actions:
        if isinstance(action, str):
            if action not in STRING_ACTIONS:
                raise MatrixError(400, "M_INVALID_PARAM", f"Unknown action {action!r}")
        elif isinstance(action, dict):
            if not isinstance(action.get("set_tweak"), str):
                raise MatrixError(400, "M_INVALID_PARAM", "A tweak action needs a set_tweak string")
        else:
            raise MatrixError(400, "M_INVALID_PARAM", "Actions are strings or set_tweak objects")
    return actions


def _validate_conditions(conditions: Any) -> list[dict[str, Any]]:
    if not isinstance(conditions, list) or not all(isinstance(c, dict) and isinstance(c.get("kind"), str)
                                                   for c in conditions):
        raise bad_json("conditions must be a list of objects with a kind")
    if len(conditions) > MAX_CONDITIONS:
        raise MatrixError(400, "M_INVALID_PARAM", f"A rule has at most {MAX_CONDITIONS} conditions")
    for c in conditions:
        if len(str(c.get("pattern", ""))) > MAX_PATTERN_LENGTH or len(str(c.get("key", ""))) > MAX_PATTERN_LENGTH:
            raise MatrixError(400, "M_INVALID_PARAM", f"Keys and patterns are at most {MAX_PATTERN_LENGTH} characters")
    return conditions


def put_rule(edits: RuleEdits, kind: str, rule_id: str, body: dict[str, Any], before: str | None,
             after: str | None) -> None:
    """Create or replace a user-defined rule (PUT /pushrules/global/{kind}/{ruleId})."""
    check_kind(kind)
    if not rule_id or rule_id.startswith(".") or "/" in rule_id or "\\" in rule_id \
            or len(rule_id) > MAX_RULE_ID_LENGTH:
        raise MatrixError(400, "M_INVALID_PARAM",
                          "A rule ID may not start with '.' (server-default rules) nor contain slashes")
    rule: dict[str, Any] = {"rule_id": rule_id, "enabled": True, "actions": validate_actions(body.get("actions"))}
    if kind in ("override", "underride"):
        rule["conditions"] = _validate_conditions(body.get("conditions", []))
    elif kind == "content":
        if not isinstance(body.get("pattern"), str):
            raise bad_json("A content rule needs a pattern string")
        if len(body["pattern"]) > MAX_PATTERN_LENGTH:
            raise MatrixError(400, "M_INVALID_PARAM", f"A pattern is at most {MAX_PATTERN_LENGTH} characters")
        rule["pattern"] = body["pattern"]
    # room and sender rules match their rule_id (evaluator.py): the API shows them without conditions
    rules = edits.user[kind]
    index = next((i for i, r in enumerate(rules) if r["rule_id"] == rule_id), None)
    if index is not None:
        rule["enabled"] = rules[index].get("enabled", True)  # an update keeps the rule's switch
    anchor = before if before is not None else after
    if index is not None and anchor is None:
        rules[index] = rule
        return
    if index is None and len(rules) >= MAX_RULES_PER_KIND:
        raise MatrixError(400, "M_LIMIT_EXCEEDED", f"At most {MAX_RULES_PER_KIND} rules of a kind")
    rest = [r for r in rules if r["rule_id"] != rule_id]
    position = 0
    if anchor is not None:
        if anchor.startswith("."):
            raise MatrixError(400, "M_INVALID_PARAM", "Rules cannot be placed relative to server-default rules")
        found = next((i for i, r in enumerate(rest) if r["rule_id"] == anchor), None)
        if found is None:
            raise MatrixError(400, "M_UNKNOWN", f"before/after rule not found: {anchor}")
        position = found if before is not None else found + 1
    rest.insert(position, rule)
    edits.user[kind] = rest


def delete_rule(edits: RuleEdits, kind: str, rule_id: str) -> None:
    check_kind(kind)
    if rule_id.startswith("."):
        raise MatrixError(400, "M_INVALID_PARAM", "Server-default rules cannot be deleted")
    rules = edits.user[kind]
    if not any(r["rule_id"] == rule_id for r in rules):
        raise not_found("The push rule was not found.")
    edits.user[kind] = [r for r in rules if r["rule_id"] != rule_id]


def set_attribute(edits: RuleEdits, ruleset: dict[str, list[dict[str, Any]]], kind: str, rule_id: str,
                  attribute: str, value: Any) -> None:
    """PUT .../{ruleId}/enabled or /actions, on a user rule or a default one."""
    rule = find(ruleset, kind, rule_id)
    if attribute == "enabled":
        if not isinstance(value, bool):
            raise bad_json("enabled must be a boolean")
    else:
        value = validate_actions(value)
    if rule.get("default"):
        key = f"{kind}/{rule_id}"
        edits.defaults[key] = {**edits.defaults.get(key, {}), attribute: value}
        return
    for r in edits.user[kind]:
        if r["rule_id"] == rule_id:
            r[attribute] = value
