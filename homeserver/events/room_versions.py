"""Room versions: one frozen record per version, so code branches on a feature flag, never on a version string.

Only versions 10, 11 and 12 are supported. Older versions differ in event ID format, string power
levels and auth rules that we deliberately do not implement.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class RedactionRules(Enum):
    """Which redaction algorithm applies (spec: v9-redactions for v10, v11-redactions for v11+)."""

    V10 = "v10"
    V11 = "v11"


class StateResAlgorithm(Enum):
    """V2 is state resolution v2; V2_1 is v12's variant (empty start state, conflicted subgraph)."""

    V2 = "v2"
    V2_1 = "v2.1"


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

    @property
    def create_event_in_auth_events(self) -> bool:
        return not self.room_id_from_create_event


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

ROOM_V11 = RoomVersion(
    identifier="11",
    creator_in_create_content=False,
    redaction_rules=RedactionRules.V11,
    redacts_in_content=True,
    same_server_redactions=True,
    knock_join_rule=True,
    restricted_join_rule=True,
    knock_restricted_join_rule=True,
    integer_only_power_levels=True,
    room_id_from_create_event=False,
    creators_have_infinite_power=False,
    state_res=StateResAlgorithm.V2,
)

ROOM_V12 = RoomVersion(
    identifier="12",
    creator_in_create_content=False,
    redaction_rules=RedactionRules.V11,
    redacts_in_content=True,
    same_server_redactions=True,
    knock_join_rule=True,
    restricted_join_rule=True,
    knock_restricted_join_rule=True,
    integer_only_power_levels=True,
    room_id_from_create_event=True,
    creators_have_infinite_power=True,
    state_res=StateResAlgorithm.V2_1,
)

KNOWN_ROOM_VERSIONS: dict[str, RoomVersion] = {v.identifier: v for v in (ROOM_V10, ROOM_V11, ROOM_V12)}


def get_room_version(identifier: str) -> RoomVersion | None:
    return KNOWN_ROOM_VERSIONS.get(identifier)
