"""Push rule conditions, compiled once into small callables.

A condition is split by what it needs: `shared` ones read only the event and the room (the same
answer for every user, so evaluated once per event), `personal` ones read the user too (their
ID, localpart or display name in the room). Unknown or malformed conditions never match (spec).
"""

from __future__ import annotations

import fnmatch
import functools
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from homeserver.push.rules import LOCALPART, USER_ID

MAX_SAFE_INT = 2**53 - 1
# How much of content.body a pattern with `*` is searched in (see _scan).
MAX_BODY_SCAN = 8_192
_WORD = "A-Za-z0-9_"
_IS = re.compile(r"^(==|<=|>=|<|>)?([0-9]+)$")


@dataclass(frozen=True)
class Member:
    """A local user an event is evaluated for (with the lower-case forms the matching compares)."""

    user_id: str
    localpart: str
    display_name: str | None
    lower: dict[str, str] = field(default_factory=dict, compare=False, hash=False, repr=False)

    def __post_init__(self) -> None:
        self.lower.update(user_id=self.user_id.lower(), localpart=self.localpart.lower(),
                          display_name=(self.display_name or "").lower())


@dataclass
class EventFacts:
    """What conditions read of one event, worked out once for all users."""

    pdu: dict[str, Any]
    member_count: int
    sender_power: int
    notification_levels: dict[str, Any]
    body_lower: str | None
    mentioned: frozenset[str]
    has_mentions: bool

    @classmethod
    def of(cls, pdu: dict[str, Any], member_count: int, sender_power: int,
           notification_levels: dict[str, Any]) -> EventFacts:
        content = pdu.get("content")
        content = content if isinstance(content, dict) else {}
        body = content.get("body")
        mentions = content.get("m.mentions")
        user_ids = mentions.get("user_ids") if isinstance(mentions, dict) else None
        mentioned = frozenset(u for u in user_ids if isinstance(u, str)) if isinstance(user_ids, list) else frozenset()
        return cls(pdu, member_count, sender_power, notification_levels,
                   body.lower() if isinstance(body, str) else None, mentioned, isinstance(mentions, dict))


Shared = Callable[[EventFacts], bool]
# A condition that reads the user: the IDs of the members (of those given) it holds for.
Personal = Callable[[EventFacts, Sequence[Member]], set[str]]


def split_key(key: str) -> tuple[str, ...]:
    """A dot-separated property path (spec appendix): `\\.` is a literal dot, `\\\\` a backslash."""
    parts, current, i = [], [], 0
    while i < len(key):
        c = key[i]
        if c == "\\" and i + 1 < len(key) and key[i + 1] in ".\\":
            current.append(key[i + 1])
            i += 2
            continue
        if c == ".":
            parts.append("".join(current))
            current = []
        else:
            current.append(c)
        i += 1
    parts.append("".join(current))
    return tuple(parts)


def lookup(pdu: dict[str, Any], path: tuple[str, ...]) -> tuple[bool, Any]:
    value: Any = pdu
    for part in path:
        if not isinstance(value, dict) or part not in value:
            return False, None
        value = value[part]
    return True, value


@functools.lru_cache(maxsize=4096)
def glob(pattern: str, words: bool) -> re.Pattern[str]:
    """A glob (`*`, `?`) matched case-insensitively: the whole value, or (`words`: content.body)
    any substring that starts and ends at word boundaries.

    Patterns come from users and so do bodies: fnmatch's translation puts every `*` but the last
    in an atomic group, so a pattern with many stars cannot make the match backtrack without end."""
    translated = fnmatch.translate(pattern.replace("[", "[[]"))  # the spec's globs have no classes
    inner = translated[len("(?s:"):-len(")\\Z")]
    if words:
        return re.compile(f"(?<![{_WORD}])(?:{inner})(?![{_WORD}])", re.IGNORECASE | re.DOTALL)
    return re.compile(f"(?:{inner})", re.IGNORECASE | re.DOTALL)


def _scan(value: str, pattern: str) -> str:
    """The part of a body a starred pattern is searched in: a word-boundary search tries every
    start, so a hostile body and pattern are kept to a bounded cost."""
    return value[:MAX_BODY_SCAN] if "*" in pattern else value


def _never(_: EventFacts) -> bool:
    return False


def _scalar(value: Any) -> bool:
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return True
    return isinstance(value, int) and -MAX_SAFE_INT <= value <= MAX_SAFE_INT


def _same(a: Any, b: Any) -> bool:
    return type(a) is type(b) and a == b  # True is not 1


def _event_match(cond: dict[str, Any]) -> Compiled:
    key, pattern = cond.get("key"), cond.get("pattern")
    if not isinstance(key, str) or not isinstance(pattern, str):
        return _never, None
    path = split_key(key)
    words = key == "content.body"
    if pattern in (USER_ID, LOCALPART):
        attr = "user_id" if pattern == USER_ID else "localpart"

        def personal(facts: EventFacts, members: Sequence[Member]) -> set[str]:
            found, value = lookup(facts.pdu, path)
            if not found or not isinstance(value, str):
                return set()
            lowered = value.lower()
            if not words:
                return {m.user_id for m in members if m.lower[attr] == lowered}
            # the cheap substring test first; the word-boundary match only where it passed
            return {m.user_id for m in members if m.lower[attr] in lowered
                    and glob(getattr(m, attr), True).search(value) is not None}
        return None, personal
    regex = glob(pattern, words)

    def shared(facts: EventFacts) -> bool:
        found, value = lookup(facts.pdu, path)
        if not found or not isinstance(value, str):
            return False
        return (regex.search(_scan(value, pattern)) if words else regex.fullmatch(value)) is not None
    return shared, None


def _property_is(cond: dict[str, Any]) -> Shared:
    key, wanted = cond.get("key"), cond.get("value")
    if not isinstance(key, str) or "value" not in cond or not _scalar(wanted):
        return _never
    path = split_key(key)

    def shared(facts: EventFacts) -> bool:
        found, value = lookup(facts.pdu, path)
        return found and _scalar(value) and _same(value, wanted)
    return shared


def _property_contains(cond: dict[str, Any]) -> Compiled:
    key, wanted = cond.get("key"), cond.get("value")
    if not isinstance(key, str) or "value" not in cond or not _scalar(wanted):
        return _never, None
    path = split_key(key)
    if wanted == USER_ID:
        def personal(facts: EventFacts, members: Sequence[Member]) -> set[str]:
            if key == "content.m\\.mentions.user_ids":
                wanted_ids: frozenset[str] = facts.mentioned
            else:
                found, value = lookup(facts.pdu, path)
                wanted_ids = frozenset(v for v in value if isinstance(v, str)) \
                    if found and isinstance(value, list) else frozenset()
            return {m.user_id for m in members if m.user_id in wanted_ids} if wanted_ids else set()
        return None, personal

    def shared(facts: EventFacts) -> bool:
        found, value = lookup(facts.pdu, path)
        return found and isinstance(value, list) and any(_scalar(v) and _same(v, wanted) for v in value)
    return shared, None


def _member_count(cond: dict[str, Any]) -> Shared:
    m = _IS.match(cond.get("is", "")) if isinstance(cond.get("is"), str) else None
    if m is None:
        return _never
    op, n = m.group(1) or "==", int(m.group(2))
    compare: dict[str, Callable[[int], bool]] = {
        "==": lambda c: c == n, "<": lambda c: c < n, ">": lambda c: c > n, "<=": lambda c: c <= n,
        ">=": lambda c: c >= n}
    test = compare[op]
    return lambda facts: test(facts.member_count)


def _sender_permission(cond: dict[str, Any]) -> Shared:
    key = cond.get("key")
    if not isinstance(key, str):
        return _never

    def shared(facts: EventFacts) -> bool:
        needed = facts.notification_levels.get(key, 50)
        if isinstance(needed, bool) or not isinstance(needed, int):
            needed = 50
        return facts.sender_power >= needed
    return shared


def _display_name(facts: EventFacts, members: Sequence[Member]) -> set[str]:
    body = facts.body_lower
    if body is None:
        return set()
    # the cheap substring test first: most bodies hold nobody's name
    return {m.user_id for m in members if m.display_name and m.lower["display_name"] in body
            and re.search(f"(?<![{_WORD}]){re.escape(m.lower['display_name'])}(?![{_WORD}])", body) is not None}


Compiled = tuple[Shared | None, Personal | None]


def compile_condition(cond: dict[str, Any]) -> Compiled:
    """(shared, None) or (None, personal)."""
    kind = cond.get("kind")
    if kind == "event_match":
        return _event_match(cond)
    if kind == "event_property_is":
        return _property_is(cond), None
    if kind == "event_property_contains":
        return _property_contains(cond)
    if kind == "contains_display_name":
        return None, _display_name
    if kind == "room_member_count":
        return _member_count(cond), None
    if kind == "sender_notification_permission":
        return _sender_permission(cond), None
    return _never, None
