"""Event authorisation rules for room versions 1 to 12.

`check_auth` applies the rules against one set of state (the event's auth events, the state
before it, or the current state: the caller picks). The rules about the *shape* of an event's
`auth_events` list (duplicates, unexpected entries, rejected entries) only make sense against the
auth events themselves, so they live in `check_auth_events`.

Versions differ only through RoomVersion flags:
- v1-v5: m.room.aliases is allowed for the server its state_key names; v1, v2: redactions need the
  redact level or an event ID of the same domain; v1-v9: power levels may be integer strings (and,
  before strict canonical JSON in v6, floats, truncated); v6+: `notifications` levels are guarded;
  v7+: knocking; v8+: restricted joins.
- v10: m.room.create needs `content.creator`, which names the creator.
- v11: the create event's sender is the creator.
- v12: the room ID is derived from the create event, which is never listed in auth_events (callers
  must still put it in `auth_state`); creators (sender + additional_creators) have infinite power.
"""

from __future__ import annotations

import math
import re
from typing import Any, Iterable, Mapping, TypeGuard, cast

from canonicaljson import encode_canonical_json
from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey

from homeserver.events.crypto import decode_base64
from homeserver.events.event import Event, StateKey
from homeserver.events.room_versions import KNOWN_ROOM_VERSIONS, RoomVersion

CREATE_KEY: StateKey = ("m.room.create", "")
POWER_LEVELS_KEY: StateKey = ("m.room.power_levels", "")
JOIN_RULES_KEY: StateKey = ("m.room.join_rules", "")

PowerLevel = int | float  # float only for v12 creators' math.inf

_PL_INT_KEYS = ("users_default", "events_default", "state_default", "ban", "redact", "kick", "invite")
_PL_MAP_KEYS = ("events", "notifications")
_PL_DEFAULTS = {"users_default": 0, "events_default": 0, "state_default": 50,
                "ban": 50, "kick": 50, "redact": 50, "invite": 0}

# Historical user IDs (printable ASCII bar ':' in the localpart) are legal inside events.
_USER_ID = re.compile(r"^@[\x21-\x39\x3b-\x7e]+:(?P<server>.+)$")
_SERVER_NAME = re.compile(
    r"^(?:\[[0-9A-Fa-f:.]{2,45}\]|[0-9]{1,3}(?:\.[0-9]{1,3}){3}|[A-Za-z0-9\-.]{1,255})(?::[0-9]{1,5})?$")


class AuthError(Exception):
    """The event is not allowed by the auth rules; `reason` says which rule refused it."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# ---- small helpers ------------------------------------------------------------------------------

def is_valid_user_id(value: object) -> bool:
    if not isinstance(value, str) or len(value.encode("utf-8")) > 255:
        return False
    match = _USER_ID.match(value)
    return match is not None and bool(_SERVER_NAME.match(match.group("server")))


def server_of(user_id: str) -> str:
    """The domain part of a user ID ('' when malformed, which never matches a real server)."""
    return user_id.split(":", 1)[1] if ":" in user_id else ""


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


# v1-v9 "stringy" levels: base-10 digits, an optional sign, any surrounding whitespace.
_LEVEL_STRING = re.compile(r"^\s*[+-]?[0-9]+\s*$")


def _level(value: object) -> int | None:
    """A power level as stored in an accepted m.room.power_levels event: an integer, or (where its
    room version allowed them, which the shape check on acceptance enforced) an integer string or a
    float, truncated. None when it is none of these."""
    if _is_int(value):
        return value
    if isinstance(value, str) and _LEVEL_STRING.match(value):
        return int(value.strip())
    if isinstance(value, float) and math.isfinite(value):
        return int(value)
    return None


def _valid_level(value: object, room_version: RoomVersion) -> bool:
    """Whether a new power levels event may hold `value` as a level in this room version."""
    if _is_int(value):
        return True
    if room_version.integer_only_power_levels:
        return False
    if isinstance(value, float):
        return not room_version.strict_canonical_json and math.isfinite(value)
    return isinstance(value, str) and bool(_LEVEL_STRING.match(value))


def _pdu(event: Event | Mapping[str, Any]) -> Mapping[str, Any]:
    return event.pdu if isinstance(event, Event) else event


def creators(create: Event, room_version: RoomVersion) -> set[str]:
    """Who counts as the room's creator(s) for this room version."""
    if room_version.creator_in_create_content:
        creator = create.content.get("creator")
        return {creator} if isinstance(creator, str) else set()
    found = {create.sender}
    if room_version.creators_have_infinite_power:
        extra = create.content.get("additional_creators")
        if isinstance(extra, list):
            found.update(u for u in extra if isinstance(u, str))
    return found


def _membership(auth_state: Mapping[StateKey, Event], user_id: str) -> str | None:
    event = auth_state.get(("m.room.member", user_id))
    return event.membership if event is not None else None


def _join_rule(auth_state: Mapping[StateKey, Event]) -> str:
    event = auth_state.get(JOIN_RULES_KEY)
    # No join rules event: behave as invite-only, the most restrictive usable rule.
    rule = event.content.get("join_rule") if event is not None else "invite"
    return rule if isinstance(rule, str) else ""


def _pl_value(content: Mapping[str, Any], key: str) -> int:
    value = _level(content.get(key, _PL_DEFAULTS[key]))
    # Accepted power level events only hold levels; fall back if handed a bad one.
    return value if value is not None else _PL_DEFAULTS[key]


def _pl_content(auth_state: Mapping[StateKey, Event]) -> Mapping[str, Any]:
    event = auth_state.get(POWER_LEVELS_KEY)
    return event.content if event is not None else {}


def user_power_level(user_id: str, auth_state: Mapping[StateKey, Event],
                     room_version: RoomVersion) -> PowerLevel:
    create = auth_state.get(CREATE_KEY)
    if (room_version.creators_have_infinite_power and create is not None
            and user_id in creators(create, room_version)):
        return math.inf
    power_levels = auth_state.get(POWER_LEVELS_KEY)
    if power_levels is None:
        # Without a power levels event the creator has 100 and everyone else 0.
        return 100 if create is not None and user_id in creators(create, room_version) else 0
    users = power_levels.content.get("users")
    level = _level(users.get(user_id)) if isinstance(users, dict) else None
    if level is not None:
        return level
    return _pl_value(power_levels.content, "users_default")


def named_level(auth_state: Mapping[StateKey, Event], name: str) -> int:
    """The invite/kick/ban/redact (or *_default) level, with the spec's defaults."""
    return _pl_value(_pl_content(auth_state), name)


def required_power_level(event: Event, auth_state: Mapping[StateKey, Event]) -> int:
    return level_to_send(event.type, event.is_state, auth_state)


def level_to_send(event_type: str, is_state: bool, auth_state: Mapping[StateKey, Event]) -> int:
    """The power level needed to send an event of `event_type` (a state event if `is_state`)."""
    content = _pl_content(auth_state)
    events = content.get("events")
    level = _level(events.get(event_type)) if isinstance(events, dict) else None
    if level is not None:
        return level
    return _pl_value(content, "state_default" if is_state else "events_default")


# ---- auth events selection ----------------------------------------------------------------------

def auth_types_for_event(pdu_or_event: Event | Mapping[str, Any],
                         room_version: RoomVersion) -> set[StateKey]:
    """The state slots whose current events go into a new event's `auth_events`."""
    pdu = _pdu(pdu_or_event)
    if pdu.get("type") == "m.room.create":
        return set()
    keys: set[StateKey] = {POWER_LEVELS_KEY, ("m.room.member", pdu.get("sender", ""))}
    if room_version.create_event_in_auth_events:
        keys.add(CREATE_KEY)
    if pdu.get("type") != "m.room.member" or not isinstance(pdu.get("state_key"), str):
        return keys
    content = pdu.get("content")
    if not isinstance(content, dict):
        content = {}
    membership = content.get("membership")
    keys.add(("m.room.member", pdu["state_key"]))
    if membership in ("join", "invite", "knock"):
        keys.add(JOIN_RULES_KEY)
    if membership == "invite":
        token = _third_party_token(content)
        if token is not None:
            keys.add(("m.room.third_party_invite", token))
    authoriser = content.get("join_authorised_via_users_server")
    if membership == "join" and room_version.restricted_join_rule and isinstance(authoriser, str):
        keys.add(("m.room.member", authoriser))
    return keys


def _third_party_token(content: Mapping[str, Any]) -> str | None:
    tpi = content.get("third_party_invite")
    signed = tpi.get("signed") if isinstance(tpi, dict) else None
    token = signed.get("token") if isinstance(signed, dict) else None
    return token if isinstance(token, str) else None


def check_auth_events(event: Event, auth_events: Iterable[Event], room_version: RoomVersion) -> None:
    """The rules on an event's own `auth_events` list (v10/v11 rule 2, v12 rule 3)."""
    if event.type == "m.room.create":
        return
    allowed = auth_types_for_event(event, room_version)
    seen: set[StateKey] = set()
    for auth_event in auth_events:
        if not auth_event.is_state:
            raise AuthError(f"auth event {auth_event.event_id} is not a state event")
        key = auth_event.key
        if key in seen:
            raise AuthError(f"duplicate auth event for {key}")
        seen.add(key)
        if key not in allowed:
            raise AuthError(f"unexpected auth event for {key}")
        if auth_event.rejected is not None:
            raise AuthError(f"auth event {auth_event.event_id} was rejected")
        if auth_event.pdu.get("room_id") != event.pdu.get("room_id"):
            raise AuthError(f"auth event {auth_event.event_id} is from another room")
    if room_version.create_event_in_auth_events and CREATE_KEY not in seen:
        raise AuthError("no m.room.create event in auth_events")


# ---- the rules ----------------------------------------------------------------------------------

def check_auth(event: Event, auth_state: Mapping[StateKey, Event], room_version: RoomVersion) -> None:
    """Raise AuthError unless `event` is allowed against `auth_state`.

    `auth_state` maps (type, state_key) to events; only the auth-relevant slots are read. For v12 it
    must contain the room's create event even though that is not in the event's auth_events.
    Signatures are not checked here (see the notes on join_authorised_via_users_server).
    """
    if event.type == "m.room.create":
        _check_create(event, room_version)
        return
    create = auth_state.get(CREATE_KEY)
    if create is None:
        raise AuthError("no m.room.create event in auth state")
    if room_version.room_id_from_create_event:
        if event.pdu.get("room_id") != "!" + create.event_id[1:] or create.rejected is not None:
            raise AuthError("room_id is not the ID of an accepted m.room.create event")
    if create.content.get("m.federate") is False and server_of(event.sender) != server_of(create.sender):
        raise AuthError("room does not federate with the sender's server")
    if event.type == "m.room.aliases" and room_version.special_case_aliases_auth:
        if not isinstance(event.state_key, str) or event.state_key != server_of(event.sender):
            raise AuthError("m.room.aliases must have the sender's server as its state_key")
        return
    if event.type == "m.room.member":
        _check_membership(event, auth_state, create, room_version)
        return
    if _membership(auth_state, event.sender) != "join":
        raise AuthError("sender is not joined to the room")
    sender_level = user_power_level(event.sender, auth_state, room_version)
    if event.type == "m.room.third_party_invite":
        if sender_level < named_level(auth_state, "invite"):
            raise AuthError("sender may not invite")
        return
    if required_power_level(event, auth_state) > sender_level:
        raise AuthError(f"sender's power level is too low to send {event.type}")
    if isinstance(event.state_key, str) and event.state_key.startswith("@") and event.state_key != event.sender:
        raise AuthError("state_key names another user")
    if event.type == "m.room.power_levels":
        _check_power_levels(event, auth_state, create, room_version)
    if event.type == "m.room.redaction" and room_version.redaction_auth_rule:
        _check_redaction(event, sender_level, auth_state)


def _event_id_domain(event_id: object) -> str | None:
    """The domain of a v1/v2 event ID (`$opaque:domain`)."""
    return event_id.split(":", 1)[1] if isinstance(event_id, str) and ":" in event_id else None


def _check_redaction(event: Event, sender_level: PowerLevel, auth_state: Mapping[StateKey, Event]) -> None:
    """v1, v2: a redaction needs the redact level, or to come from the domain that made its target."""
    if sender_level >= named_level(auth_state, "redact"):
        return
    if same_event_id_domain(event.event_id, str(event.pdu.get("redacts", ""))):
        return
    raise AuthError("sender may not redact this event")


def _check_create(event: Event, room_version: RoomVersion) -> None:
    if event.prev_event_ids:
        raise AuthError("m.room.create has prev_events")
    if room_version.room_id_from_create_event:
        if "room_id" in event.pdu:
            raise AuthError("m.room.create must not have a room_id in this room version")
    elif server_of(str(event.pdu.get("room_id", ""))) != server_of(event.sender):
        raise AuthError("room_id domain does not match the sender's")
    version = event.content.get("room_version")
    if version is not None and version not in KNOWN_ROOM_VERSIONS:
        raise AuthError(f"unknown room version {version!r}")
    if room_version.creator_in_create_content and "creator" not in event.content:
        raise AuthError("m.room.create content has no creator")
    if room_version.creators_have_infinite_power and "additional_creators" in event.content:
        extra = event.content["additional_creators"]
        if not isinstance(extra, list) or not all(is_valid_user_id(u) for u in extra):
            raise AuthError("additional_creators must be a list of user IDs")


# -- membership --

def _check_membership(event: Event, auth_state: Mapping[StateKey, Event], create: Event,
                      room_version: RoomVersion) -> None:
    if not isinstance(event.state_key, str) or "membership" not in event.content:
        raise AuthError("m.room.member needs a state_key and content.membership")
    authoriser = event.content.get("join_authorised_via_users_server")
    if "join_authorised_via_users_server" in event.content and room_version.restricted_join_rule:
        # Presence only: the federation signature check must verify this server's signature too
        # (event_crypto.verify_event_signature with that server's key).
        signatures = event.pdu.get("signatures")
        if (not isinstance(authoriser, str) or not isinstance(signatures, dict)
                or server_of(authoriser) not in signatures):
            raise AuthError("not signed by the server of join_authorised_via_users_server")
    membership = event.content["membership"]
    checks = {"join": _check_join, "invite": _check_invite, "leave": _check_leave,
              "ban": _check_ban, "knock": _check_knock}
    check = checks.get(membership) if isinstance(membership, str) else None
    if check is None:
        raise AuthError(f"unknown membership {membership!r}")
    check(event, auth_state, create, room_version)


def _member_target(event: Event) -> str:
    """The user a membership event is about: a string, as _check_membership made sure."""
    return cast(str, event.state_key)


def _supported_join_rule(rule: str, room_version: RoomVersion) -> str:
    """Map join rules this room version does not know to '' so they match nothing."""
    supported = {"public", "invite"}
    if room_version.knock_join_rule:
        supported.add("knock")
    if room_version.restricted_join_rule:
        supported.add("restricted")
    if room_version.knock_restricted_join_rule:
        supported.add("knock_restricted")
    return rule if rule in supported else ""


def _check_join(event: Event, auth_state: Mapping[StateKey, Event], create: Event,
                room_version: RoomVersion) -> None:
    target = event.state_key
    if event.prev_event_ids == [create.event_id] and target in _first_join_creators(create, room_version):
        return  # the creator's own join right after the create event
    if event.sender != target:
        raise AuthError("cannot join on behalf of another user")
    current = _membership(auth_state, target)
    if current == "ban":
        raise AuthError("sender is banned")
    rule = _supported_join_rule(_join_rule(auth_state), room_version)
    if rule in ("invite", "knock"):
        if current in ("invite", "join"):
            return
        raise AuthError("room is invite-only and the sender is not invited")
    if rule in ("restricted", "knock_restricted"):
        if current in ("invite", "join"):
            return
        _check_join_authoriser(event, auth_state, room_version)
        return
    if rule == "public":
        return
    raise AuthError(f"join rule {_join_rule(auth_state)!r} does not allow joining")


def _first_join_creators(create: Event, room_version: RoomVersion) -> set[str]:
    # v10 names the creator in content; v11+ use the create sender (not additional_creators).
    if room_version.creator_in_create_content:
        return creators(create, room_version)
    return {create.sender}


def _check_join_authoriser(event: Event, auth_state: Mapping[StateKey, Event],
                           room_version: RoomVersion) -> None:
    authoriser = event.content.get("join_authorised_via_users_server")
    if not isinstance(authoriser, str):
        raise AuthError("restricted join without join_authorised_via_users_server")
    if _membership(auth_state, authoriser) != "join":
        raise AuthError("join authoriser is not joined to the room")
    if user_power_level(authoriser, auth_state, room_version) < named_level(auth_state, "invite"):
        raise AuthError("join authoriser may not invite")


def _check_invite(event: Event, auth_state: Mapping[StateKey, Event], create: Event,
                  room_version: RoomVersion) -> None:
    target = _member_target(event)
    if "third_party_invite" in event.content:
        _check_third_party_invite(event, auth_state)
        return
    if _membership(auth_state, event.sender) != "join":
        raise AuthError("inviter is not joined to the room")
    if _membership(auth_state, target) in ("join", "ban"):
        raise AuthError("invitee is already joined or is banned")
    if user_power_level(event.sender, auth_state, room_version) < named_level(auth_state, "invite"):
        raise AuthError("sender's power level is too low to invite")


def _check_third_party_invite(event: Event, auth_state: Mapping[StateKey, Event]) -> None:
    if _membership(auth_state, _member_target(event)) == "ban":
        raise AuthError("invitee is banned")
    tpi = event.content["third_party_invite"]
    signed = tpi.get("signed") if isinstance(tpi, dict) else None
    if not isinstance(signed, dict):
        raise AuthError("third_party_invite has no signed block")
    if "mxid" not in signed or "token" not in signed:
        raise AuthError("third_party_invite.signed needs mxid and token")
    if signed["mxid"] != event.state_key:
        raise AuthError("third_party_invite mxid does not match state_key")
    token = signed["token"]
    invite_event = auth_state.get(("m.room.third_party_invite", token)) if isinstance(token, str) else None
    if invite_event is None:
        raise AuthError("no m.room.third_party_invite for this token")
    if invite_event.sender != event.sender:
        raise AuthError("sender did not issue the third-party invite")
    if not _signed_by_any(signed, _third_party_public_keys(invite_event)):
        raise AuthError("third-party invite signature does not match any public key")


def _third_party_public_keys(invite_event: Event) -> list[str]:
    keys: list[str] = []
    if isinstance(invite_event.content.get("public_key"), str):
        keys.append(invite_event.content["public_key"])
    listed = invite_event.content.get("public_keys")
    if isinstance(listed, list):
        keys.extend(k["public_key"] for k in listed
                    if isinstance(k, dict) and isinstance(k.get("public_key"), str))
    return keys


def _signed_by_any(signed: Mapping[str, Any], public_keys: list[str]) -> bool:
    """True if any ed25519 signature in `signed.signatures` verifies under any of `public_keys`."""
    signatures = signed.get("signatures")
    if not isinstance(signatures, dict):
        return False
    message = encode_canonical_json({k: v for k, v in signed.items() if k not in ("signatures", "unsigned")})
    candidates = [sig for by_server in signatures.values() if isinstance(by_server, dict)
                  for kid, sig in by_server.items() if kid.startswith("ed25519:") and isinstance(sig, str)]
    for public_key in public_keys:
        try:
            verify_key = VerifyKey(decode_base64(public_key))
        except ValueError:  # malformed key material (bad base64 or length): just not a match
            continue
        for signature in candidates:
            try:
                verify_key.verify(message, decode_base64(signature))
                return True
            except (BadSignatureError, ValueError):
                continue
    return False


def _check_leave(event: Event, auth_state: Mapping[StateKey, Event], create: Event,
                 room_version: RoomVersion) -> None:
    target = _member_target(event)
    if event.sender == target:
        if _membership(auth_state, target) in ("invite", "join", "knock"):
            return
        raise AuthError("cannot leave a room you are not in, invited to or knocking on")
    if _membership(auth_state, event.sender) != "join":
        raise AuthError("sender is not joined to the room")
    sender_level = user_power_level(event.sender, auth_state, room_version)
    if _membership(auth_state, target) == "ban" and sender_level < named_level(auth_state, "ban"):
        raise AuthError("sender's power level is too low to unban")
    if (sender_level >= named_level(auth_state, "kick")
            and user_power_level(target, auth_state, room_version) < sender_level):
        return
    raise AuthError("sender's power level is too low to kick this user")


def _check_ban(event: Event, auth_state: Mapping[StateKey, Event], create: Event,
               room_version: RoomVersion) -> None:
    if _membership(auth_state, event.sender) != "join":
        raise AuthError("sender is not joined to the room")
    sender_level = user_power_level(event.sender, auth_state, room_version)
    if (sender_level >= named_level(auth_state, "ban")
            and user_power_level(_member_target(event), auth_state, room_version) < sender_level):
        return
    raise AuthError("sender's power level is too low to ban this user")


def _check_knock(event: Event, auth_state: Mapping[StateKey, Event], create: Event,
                 room_version: RoomVersion) -> None:
    if _supported_join_rule(_join_rule(auth_state), room_version) not in ("knock", "knock_restricted"):
        raise AuthError("room does not allow knocking")
    if event.sender != event.state_key:
        raise AuthError("cannot knock on behalf of another user")
    if _membership(auth_state, event.sender) in ("ban", "invite", "join"):
        raise AuthError("banned, invited or joined users cannot knock")


# -- power levels --

def _check_power_levels(event: Event, auth_state: Mapping[StateKey, Event], create: Event,
                        room_version: RoomVersion) -> None:
    new = event.content
    _check_power_levels_shape(new, room_version)
    if room_version.creators_have_infinite_power:
        users = new.get("users", {})
        if any(creator in users for creator in creators(create, room_version)):
            raise AuthError("room creators cannot be given a power level")
    previous = auth_state.get(POWER_LEVELS_KEY)
    if previous is None:
        return
    old = previous.content
    sender_level = user_power_level(event.sender, auth_state, room_version)
    for key in _PL_INT_KEYS:
        _check_level_change(key, old.get(key), new.get(key), sender_level)
    for key in _PL_MAP_KEYS if room_version.limit_notifications_power_levels else ("events",):
        old_map, new_map = _as_map(old.get(key)), _as_map(new.get(key))
        for name in old_map.keys() | new_map.keys():
            _check_level_change(f"{key}.{name}", old_map.get(name), new_map.get(name), sender_level)
    old_users, new_users = _as_map(old.get("users")), _as_map(new.get("users"))
    for user in old_users.keys() | new_users.keys():
        before, after = old_users.get(user), new_users.get(user)
        if before == after:
            continue
        # Nobody may change or remove a peer's or superior's level, but you may demote yourself.
        if before is not None and user != event.sender and before >= sender_level:
            raise AuthError(f"cannot change the power level of {user}, which is not below yours")
        if after is not None and after > sender_level:
            raise AuthError(f"cannot raise {user} above your own power level")


def _check_power_levels_shape(content: Mapping[str, Any], room_version: RoomVersion) -> None:
    if room_version.integer_only_power_levels:  # v10+; before, only `users` is checked
        for key in _PL_INT_KEYS:
            if key in content and not _is_int(content[key]):
                raise AuthError(f"power level {key} is not an integer")
        for key in _PL_MAP_KEYS:
            if key in content and not (isinstance(content[key], dict)
                                       and all(_is_int(v) for v in content[key].values())):
                raise AuthError(f"power levels {key} must map to integers")
    if "users" in content:
        users = content["users"]
        if not isinstance(users, dict) or not all(
                is_valid_user_id(u) and _valid_level(v, room_version) for u, v in users.items()):
            raise AuthError("power levels users must map user IDs to integers")


def _as_map(value: object) -> dict[str, int]:
    """A level map of an accepted event (or the new one), as integers; other values are ignored."""
    if not isinstance(value, dict):
        return {}
    parsed = {k: _level(v) for k, v in value.items()}
    return {k: v for k, v in parsed.items() if v is not None}


def _check_level_change(name: str, before: object, after: object, sender_level: PowerLevel) -> None:
    old, new = _level(before), _level(after)
    if old == new and (before is None) == (after is None):
        return
    if old is not None and old > sender_level:
        raise AuthError(f"cannot change {name}: its current value is above your power level")
    if new is not None and new > sender_level:
        raise AuthError(f"cannot set {name} above your power level")


# ---- applying redactions ------------------------------------------------------------------------

def may_redact_any(sender: str, auth_state: Mapping[StateKey, Event], room_version: RoomVersion) -> bool:
    """Whether `sender` has the redact level, which lets them redact other users' events."""
    return user_power_level(sender, auth_state, room_version) >= named_level(auth_state, "redact")


def local_redaction_allowed(redaction: Event, target: Event, auth_state: Mapping[StateKey, Event],
                            room_version: RoomVersion) -> bool:
    """Whether a local user may redact `target` (Client-Server API): their own event, or anyone's
    with the redact level; never an event of another room."""
    if target.room_id != redaction.room_id:
        return False
    return target.sender == redaction.sender or may_redact_any(redaction.sender, auth_state, room_version)


def redaction_allowed(redaction: Event, target: Event, auth_state: Mapping[StateKey, Event],
                      room_version: RoomVersion) -> bool:
    """Whether an (already authorised) received redaction should actually be applied to `target`.

    The auth rules never look at the redact level; instead a redaction takes effect only if its
    sender has the redact level or (v3+) is on the same server as the redacted event's sender,
    and never across rooms. `auth_state` is the state before the redaction.
    """
    if target.room_id != redaction.room_id:
        return False
    if room_version.same_server_redactions and server_of(redaction.sender) == server_of(target.sender):
        return True
    if room_version.redaction_auth_rule and same_event_id_domain(redaction.event_id, target.event_id):
        return True
    return may_redact_any(redaction.sender, auth_state, room_version)


def same_event_id_domain(a: str, b: str) -> bool:
    """v1, v2: whether two event IDs were made by the same server (what lets a redaction through)."""
    domain = _event_id_domain(a)
    return domain is not None and domain == _event_id_domain(b)
