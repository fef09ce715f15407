"""The redaction algorithm: what survives when an event is redacted (and what signatures cover)."""

from __future__ import annotations

import copy
from typing import Any

from homeserver.events.room_versions import RedactionRules, RoomVersion

_TOP_LEVEL_V11 = frozenset({
    "event_id", "type", "room_id", "sender", "state_key", "content", "hashes", "signatures",
    "depth", "prev_events", "auth_events", "origin_server_ts",
})
# Before v11 every algorithm additionally keeps these three legacy keys.
_TOP_LEVEL_V10 = _TOP_LEVEL_V11 | {"prev_state", "origin", "membership"}

_POWER_LEVEL_KEYS_V10 = ("ban", "events", "events_default", "kick", "redact", "state_default",
                         "users", "users_default")

# v6 (and v7): the v1 algorithm without m.room.aliases.
_CONTENT_V6: dict[str, tuple[str, ...]] = {
    "m.room.member": ("membership",),
    "m.room.create": ("creator",),
    "m.room.join_rules": ("join_rule",),
    "m.room.power_levels": _POWER_LEVEL_KEYS_V10,
    "m.room.history_visibility": ("history_visibility",),
}
# v1-v5 also keep the aliases of m.room.aliases.
_CONTENT_V1 = {**_CONTENT_V6, "m.room.aliases": ("aliases",)}
# v8 keeps the `allow` list of restricted join rules.
_CONTENT_V8 = {**_CONTENT_V6, "m.room.join_rules": ("join_rule", "allow")}
# v9 (the algorithm of v9 and v10) keeps the authoriser of a restricted join, which its signature needs.
_CONTENT_V10 = {**_CONTENT_V8, "m.room.member": ("membership", "join_authorised_via_users_server")}

_CONTENT_V11: dict[str, tuple[str, ...]] = {
    **_CONTENT_V10,
    "m.room.power_levels": _POWER_LEVEL_KEYS_V10 + ("invite",),
    "m.room.redaction": ("redacts",),
}

_CONTENT = {RedactionRules.V1: _CONTENT_V1, RedactionRules.V6: _CONTENT_V6, RedactionRules.V8: _CONTENT_V8,
            RedactionRules.V10: _CONTENT_V10, RedactionRules.V11: _CONTENT_V11}


def redact(pdu: dict[str, Any], room_version: RoomVersion) -> dict[str, Any]:
    """Return a redacted deep copy of `pdu`; the input is left untouched."""
    v11 = room_version.redaction_rules is RedactionRules.V11
    allowed_top = _TOP_LEVEL_V11 if v11 else _TOP_LEVEL_V10
    redacted = {k: copy.deepcopy(v) for k, v in pdu.items() if k in allowed_top}
    content = pdu.get("content")
    content = content if isinstance(content, dict) else {}
    redacted["content"] = _redact_content(pdu.get("type"), content, room_version.redaction_rules)
    return redacted


def _redact_content(event_type: Any, content: dict[str, Any], rules: RedactionRules) -> dict[str, Any]:
    v11 = rules is RedactionRules.V11
    if v11 and event_type == "m.room.create":
        return copy.deepcopy(content)  # v11+ keeps the whole create content
    keep = _CONTENT[rules].get(event_type, ())
    kept = {k: copy.deepcopy(content[k]) for k in keep if k in content}
    if v11 and event_type == "m.room.member":
        # v11 keeps only the `signed` part of a third-party invite, so the invite stays checkable.
        tpi = content.get("third_party_invite")
        if isinstance(tpi, dict) and "signed" in tpi:
            kept["third_party_invite"] = {"signed": copy.deepcopy(tpi["signed"])}
    return kept
