"""Room versions: one frozen record per version, so code branches on a feature flag, never on a version string.

Versions 1 to 12 are supported (spec: the rooms/v1 .. rooms/v12 pages). What changed when:
- v1: event IDs `$opaque:domain` carried in the PDU; prev_events/auth_events as [event_id, {hashes}]
  pairs; state resolution v1; redactions judged by the auth rules (redact level, or same event-ID
  domain); m.room.aliases has its own auth rule; lenient JSON (floats, big integers, string levels).
- v2: state resolution v2.
- v3: event IDs are the reference hash (standard base64), not in the PDU; plain ID lists; the
  receiving server judges redactions (redact level or the target's sender's server).
- v4: URL-safe base64 event IDs.
- v5: signing keys must be valid (valid_until_ts) at the event's origin_server_ts.
- v6: strict canonical JSON; m.room.aliases is an ordinary state event (and loses its redaction
  rule); power level changes check `notifications` too.
- v7: knocking. v8: restricted joins (join_authorised_via_users_server; join_rules keeps `allow`
  when redacted). v9: redacted member events keep join_authorised_via_users_server.
- v10: knock_restricted; power levels must be integers.
- v11: creator is the create sender; new redaction rules; `redacts` in content.
- v12: room ID from the create event; creators have infinite power; state resolution v2.1.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import Enum


class RedactionRules(Enum):
    """Which redaction algorithm applies (spec fragments v1-, v6-, v8 page, v9-, v11-redactions)."""

    V1 = "v1"    # v1-v5: m.room.aliases keeps `aliases`
    V6 = "v6"    # v6, v7: no m.room.aliases rule
    V8 = "v8"    # v8: m.room.join_rules keeps `allow`
    V10 = "v10"  # v9, v10 (the v9 algorithm): m.room.member keeps join_authorised_via_users_server
    V11 = "v11"


class StateResAlgorithm(Enum):
    """V1 is state resolution v1 (room version 1 only); V2 is state resolution v2; V2_1 is v12's
    variant (empty start state, conflicted subgraph)."""

    V1 = "v1"
    V2 = "v2"
    V2_1 = "v2.1"


class EventIdFormat(Enum):
    """V1: `$opaque:domain`, a field of the PDU (v1, v2); V3: `$` + unpadded standard base64 of the
    reference hash (v3); V4: the same in URL-safe base64 (v4+)."""

    V1 = "v1"
    V3 = "v3"
    V4 = "v4"


@dataclass(frozen=True)
class RoomVersion:
    identifier: str
    # v10: m.room.create content must carry `creator`; v11+: the create event's sender is the creator.
    creator_in_create_content: bool
    redaction_rules: RedactionRules
    # v11+: m.room.redaction carries `redacts` in content rather than at the top level.
    redacts_in_content: bool
    # v3+: a received redaction is applied when its sender is on the server of the target's sender
    # even without the redact level (the receiving server checks it; the auth rules do not).
    same_server_redactions: bool
    knock_join_rule: bool
    restricted_join_rule: bool
    knock_restricted_join_rule: bool
    # v10+: power level values must be JSON integers (no strings, no floats).
    integer_only_power_levels: bool
    # v12: the room ID is "!" + the create event's reference hash; the create event has no room_id
    # and is never listed in auth_events (it is implied by room_id).
    room_id_from_create_event: bool
    # v12: the create sender plus content.additional_creators have infinite power and may not
    # appear in m.room.power_levels `users`.
    creators_have_infinite_power: bool
    state_res: StateResAlgorithm
    event_id_format: EventIdFormat = EventIdFormat.V4
    # v1, v2: the auth rules judge m.room.redaction (redact level, or the event IDs' domains match).
    redaction_auth_rule: bool = False
    # v1-v5: m.room.aliases is allowed when its state_key is the sender's domain, member or not.
    special_case_aliases_auth: bool = False
    # v5+: a signature counts only if its key was valid (valid_until_ts) at origin_server_ts.
    enforce_key_validity: bool = True
    # v6+: PDUs must be canonical JSON (no floats, integers within ±(2^53-1)); before, be lenient.
    strict_canonical_json: bool = True
    # v6+: changes to power levels' `notifications` are checked like `events`.
    limit_notifications_power_levels: bool = True

    @property
    def create_event_in_auth_events(self) -> bool:
        return not self.room_id_from_create_event

    @property
    def event_id_in_pdu(self) -> bool:
        """v1, v2: the event ID is a field of the PDU, chosen by the server that made the event."""
        return self.event_id_format is EventIdFormat.V1

    @property
    def event_refs_with_hashes(self) -> bool:
        """v1, v2: prev_events and auth_events list [event_id, {"sha256": reference hash}] pairs."""
        return self.event_id_format is EventIdFormat.V1


ROOM_V10 = RoomVersion(
    identifier="10",
    creator_in_create_content=True,
    redaction_rules=RedactionRules.V10,
    redacts_in_content=False,
    same_server_redactions=True,
    knock_join_rule=True,
    restricted_join_rule=True,
    knock_restricted_join_rule=True,
    integer_only_power_levels=True,
    room_id_from_create_event=False,
    creators_have_infinite_power=False,
    state_res=StateResAlgorithm.V2,
)

ROOM_V11 = replace(
    ROOM_V10,
    identifier="11",
    creator_in_create_content=False,
    redaction_rules=RedactionRules.V11,
    redacts_in_content=True,
)

ROOM_V12 = replace(
    ROOM_V11,
    identifier="12",
    room_id_from_create_event=True,
    creators_have_infinite_power=True,
    state_res=StateResAlgorithm.V2_1,
)

# The older versions, each described by what it lacks of the next one.
ROOM_V9 = replace(ROOM_V10, identifier="9", knock_restricted_join_rule=False, integer_only_power_levels=False)
ROOM_V8 = replace(ROOM_V9, identifier="8", redaction_rules=RedactionRules.V8)
ROOM_V7 = replace(ROOM_V8, identifier="7", restricted_join_rule=False, redaction_rules=RedactionRules.V6)
ROOM_V6 = replace(ROOM_V7, identifier="6", knock_join_rule=False)
ROOM_V5 = replace(ROOM_V6, identifier="5", redaction_rules=RedactionRules.V1, special_case_aliases_auth=True,
                  strict_canonical_json=False, limit_notifications_power_levels=False)
ROOM_V4 = replace(ROOM_V5, identifier="4", enforce_key_validity=False)
ROOM_V3 = replace(ROOM_V4, identifier="3", event_id_format=EventIdFormat.V3)
ROOM_V2 = replace(ROOM_V3, identifier="2", event_id_format=EventIdFormat.V1, same_server_redactions=False,
                  redaction_auth_rule=True)
ROOM_V1 = replace(ROOM_V2, identifier="1", state_res=StateResAlgorithm.V1)

KNOWN_ROOM_VERSIONS: dict[str, RoomVersion] = {v.identifier: v for v in (
    ROOM_V1, ROOM_V2, ROOM_V3, ROOM_V4, ROOM_V5, ROOM_V6, ROOM_V7, ROOM_V8, ROOM_V9, ROOM_V10, ROOM_V11,
    ROOM_V12)}


def get_room_version(identifier: str) -> RoomVersion | None:
    return KNOWN_ROOM_VERSIONS.get(identifier)
